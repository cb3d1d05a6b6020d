"""Evaluators: the official Cityscapes instance AP, in memory or through cityscapesscripts."""
from .cityscapes import (
    CityscapesInstanceEvaluator,
    OfficialCityscapesInstanceEvaluator,
    cityscapes_core_name,
)

__all__ = [
    "CityscapesInstanceEvaluator",
    "OfficialCityscapesInstanceEvaluator",
    "cityscapes_core_name",
]
