"""Evaluators: the official Cityscapes instance AP (in memory, or through cityscapesscripts),
and that AP together with COCO-style box and mask AP."""
from .cityscapes import (
    CityscapesInstanceEvaluator,
    OfficialCityscapesInstanceEvaluator,
    cityscapes_core_name,
)
from .combined import CityscapesCOCOEvaluator

__all__ = [
    "CityscapesCOCOEvaluator",
    "CityscapesInstanceEvaluator",
    "OfficialCityscapesInstanceEvaluator",
    "cityscapes_core_name",
]
