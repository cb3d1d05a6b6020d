"""Evaluators: the official Cityscapes instance AP (in memory, or through cityscapesscripts),
and that AP together with COCO-style box and mask AP; KITTI's 2D AP; any evaluator's results
under a prefix."""
from .cityscapes import (
    CityscapesInstanceEvaluator,
    OfficialCityscapesInstanceEvaluator,
    cityscapes_core_name,
)
from .combined import CityscapesCOCOEvaluator
from .kitti import KittiEvaluator, kitti_average_precision
from .prefixed import PrefixedEvaluator

__all__ = [
    "CityscapesCOCOEvaluator",
    "CityscapesInstanceEvaluator",
    "KittiEvaluator",
    "OfficialCityscapesInstanceEvaluator",
    "PrefixedEvaluator",
    "cityscapes_core_name",
    "kitti_average_precision",
]
