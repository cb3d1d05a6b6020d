"""Building a config's model, and starting one without an ImageNet-pretrained backbone."""

import logging

import torch

from detectron2.config import instantiate
from detectron2.layers import FrozenBatchNorm2d

__all__ = ["build_model", "calibrate_frozen_bn"]

logger = logging.getLogger(__name__)


def build_model(cfg):
    """The model of a resolved config (see :mod:`d2_finetune.engine.resolve`), on
    ``train.device``, its convolutions in NHWC with ``train.channels_last``; random weights."""
    model = instantiate(cfg.model)
    model.to(torch.device(cfg.train.device))
    if cfg.train.get("channels_last", False):
        model.to(memory_format=torch.channels_last)
    logger.info(f"Model:\n{model}")
    return model


@torch.no_grad()
def calibrate_frozen_bn(model, batched_inputs):
    """Set every FrozenBatchNorm2d's statistics from the activations of ``batched_inputs``.

    A freshly initialised FrozenBN (mean 0, var 1) does not normalise, so a randomly initialised
    ResNet with FrozenBN diverges at once. This runs the backbone once and, layer by layer in
    forward order, sets each FrozenBN's running mean and variance to those of its input (weight
    1, bias 0), as an ImageNet-pretrained backbone's statistics would.

    Returns:
        int: the number of calibrated layers.
    """
    count = 0

    def set_stats(module, args):
        nonlocal count
        x = args[0].float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))
        module.weight.fill_(1.0)
        module.bias.fill_(0.0)
        count += 1

    handles = [
        m.register_forward_pre_hook(set_stats)
        for m in model.modules()
        if isinstance(m, FrozenBatchNorm2d)
    ]
    was_training = model.training
    try:
        model.eval()
        images = model.preprocess_image(batched_inputs)
        model.backbone(images.tensor)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return count
