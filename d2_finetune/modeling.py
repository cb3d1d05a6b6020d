"""Building a config's model, starting one without an ImageNet-pretrained backbone, and model
parts that reproduce another toolbox's computation (``RoundedAnchorGenerator``: torchvision's
anchors, for weights converted from torchvision)."""

import logging

import torch

from detectron2.config import instantiate
from detectron2.layers import FrozenBatchNorm2d
from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

__all__ = ["RoundedAnchorGenerator", "build_model", "calibrate_frozen_bn"]

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


class RoundedAnchorGenerator(DefaultAnchorGenerator):
    """``DefaultAnchorGenerator`` with torchvision's cell anchors: for size s and aspect ratio
    r (height / width), half-width ``s / sqrt(r) / 2`` and half-height ``s * sqrt(r) / 2``
    computed in float32 and rounded to whole pixels. Same order (sizes, then ratios) and the
    same grid as the parent; use ``offset=0.0`` (torchvision's grid starts at pixel 0).

    torchvision's ``AnchorGenerator`` rounds its cell anchors to whole pixels
    (``base_anchors.round()``, e.g. ``[-22.63, -11.31, 22.63, 11.31]`` becomes
    ``[-23, -11, 23, 11]``); Detectron2's ``DefaultAnchorGenerator`` keeps them exact. A
    torchvision-trained RPN predicts its deltas relative to the rounded anchors, so its
    proposals are only reproduced with the same anchors.
    """

    def generate_cell_anchors(self, sizes=(32, 64, 128, 256, 512), aspect_ratios=(0.5, 1, 2)):
        anchors = []
        for size in sizes:
            ratios = torch.as_tensor(aspect_ratios, dtype=torch.float32)
            h_ratios = torch.sqrt(ratios)
            w_ratios = 1 / h_ratios
            ws = w_ratios * float(size)
            hs = h_ratios * float(size)
            anchors.append(torch.stack([-ws, -hs, ws, hs], dim=1) / 2)
        return torch.cat(anchors).round()
