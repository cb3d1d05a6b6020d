"""Evaluators: the official Cityscapes instance AP (in memory, or through cityscapesscripts),
and that AP together with COCO-style box and mask AP; KITTI's 2D AP; any evaluator's results
under a prefix; detectron2's COCO-style AP without leaving a path in the dataset's metadata.

Each is imported when first used, so a config that evaluates VOC or KITTI never loads
cityscapesscripts.
"""

import importlib

_EXPORTS = {
    "CityscapesCOCOEvaluator": ".combined",
    "CityscapesInstanceEvaluator": ".cityscapes",
    "KittiEvaluator": ".kitti",
    "OfficialCityscapesInstanceEvaluator": ".cityscapes",
    "PrefixedEvaluator": ".prefixed",
    "ScopedCOCOEvaluator": ".coco",
    "cityscapes_core_name": ".cityscapes",
    "kitti_average_precision": ".kitti",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name], __name__), name)


def __dir__():
    return __all__
