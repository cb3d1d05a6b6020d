"""Parameters not to train (``train.freeze``)."""

import fnmatch
import logging

from ..errors import ConfigError

__all__ = ["freeze_parameters"]

logger = logging.getLogger(__name__)


def freeze_parameters(model, patterns):
    """Stop gradients for parameters whose names match any glob pattern in ``patterns``
    (``train.freeze``), on top of the backbone's ``freeze_at``; log the trainable count."""
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ConfigError(
                f"train.freeze pattern {pattern!r} matches no parameter of the model "
                f"(names look like {names[0]!r}, {names[-1]!r})."
            )
    for name, param in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            param.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = total - trainable
    logger.info(
        f"Trainable parameters: {trainable:,} of {total:,} ({frozen:,} frozen by the backbone's "
        f"freeze_at and train.freeze={list(patterns)})"
    )
    return trainable
