"""Evaluators: the official Cityscapes instance AP (in memory, or through cityscapesscripts),
and that AP together with COCO-style box and mask AP; KITTI's 2D AP; any evaluator's results
under a prefix; detectron2's COCO-style AP without leaving a path in the dataset's metadata.

Each is imported when first used, so a config that evaluates VOC or KITTI never loads
cityscapesscripts.
"""

from ..lazy import lazy_exports

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


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
