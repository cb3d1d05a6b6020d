"""Mixed precision: when it is on, and in which dtype (``train.amp``)."""

import logging
from contextlib import nullcontext

import torch

from ..errors import ConfigError

__all__ = ["AMP_DTYPES", "amp_dtype", "amp_enabled", "autocast_context"]

logger = logging.getLogger(__name__)

# The names train.amp.dtype accepts.
AMP_DTYPES = {
    "float16": torch.float16,
    "fp16": torch.float16,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
}


def amp_dtype(cfg):
    """The torch dtype of ``train.amp.dtype``; any other name is a ConfigError."""
    name = cfg.train.amp.get("dtype", "float16")
    if name not in AMP_DTYPES:
        raise ConfigError(f"train.amp.dtype must be float16 or bfloat16, got {name!r}.")
    return AMP_DTYPES[name]


def amp_enabled(cfg):
    """``train.amp.enabled``, except float16 on a CPU (slow there, and without loss scaling
    it underflows): that runs in float32 with a note; bfloat16 runs on any device."""
    if not cfg.train.amp.enabled:
        return False
    if torch.device(cfg.train.device).type == "cpu" and amp_dtype(cfg) == torch.float16:
        logger.info(
            "train.amp: float16 needs a GPU; running in float32 on the CPU "
            "(train.amp.dtype=bfloat16 gives mixed precision on CPUs)."
        )
        return False
    return True


def autocast_context(cfg):
    """``torch.autocast`` for the config's device when AMP is on (see :func:`amp_enabled`)."""
    if not amp_enabled(cfg):
        return nullcontext()
    return torch.autocast(torch.device(cfg.train.device).type, dtype=amp_dtype(cfg))
