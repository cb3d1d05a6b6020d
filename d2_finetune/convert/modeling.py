"""Model parts that reproduce another toolbox's computation in Detectron2.

``RoundedAnchorGenerator``: torchvision's ``AnchorGenerator`` rounds its cell anchors to whole
pixels (``base_anchors.round()``, e.g. ``[-22.63, -11.31, 22.63, 11.31]`` becomes
``[-23, -11, 23, 11]``); Detectron2's ``DefaultAnchorGenerator`` keeps them exact. A
torchvision-trained RPN predicts its deltas relative to the rounded anchors, so its proposals
are only reproduced with the same anchors.
"""
import torch

from detectron2.modeling.anchor_generator import DefaultAnchorGenerator

__all__ = ["RoundedAnchorGenerator"]


class RoundedAnchorGenerator(DefaultAnchorGenerator):
    """``DefaultAnchorGenerator`` with torchvision's cell anchors: for size s and aspect ratio
    r (height / width), half-width ``s / sqrt(r) / 2`` and half-height ``s * sqrt(r) / 2``
    computed in float32 and rounded to whole pixels. Same order (sizes, then ratios) and the
    same grid as the parent; use ``offset=0.0`` (torchvision's grid starts at pixel 0)."""

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
