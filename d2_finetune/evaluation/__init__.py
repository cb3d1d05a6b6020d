"""Evaluators: the official Cityscapes instance AP (in memory, or through cityscapesscripts),
and that AP together with COCO-style box and mask AP; KITTI's 2D AP; any evaluator's results
under a prefix; detectron2's COCO-style AP without leaving a path in the dataset's metadata."""
from .cityscapes import (
    CityscapesInstanceEvaluator,
    OfficialCityscapesInstanceEvaluator,
    cityscapes_core_name,
)
from .coco import ScopedCOCOEvaluator
from .combined import CityscapesCOCOEvaluator
from .kitti import KittiEvaluator, kitti_average_precision
from .prefixed import PrefixedEvaluator

__all__ = [
    "CityscapesCOCOEvaluator",
    "CityscapesInstanceEvaluator",
    "KittiEvaluator",
    "OfficialCityscapesInstanceEvaluator",
    "PrefixedEvaluator",
    "ScopedCOCOEvaluator",
    "cityscapes_core_name",
    "kitti_average_precision",
]
