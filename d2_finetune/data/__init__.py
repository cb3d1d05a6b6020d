"""Dataset registration. Call these from ``main()`` (every ``launch`` worker); never on import."""
from detectron2.config import instantiate
from omegaconf import ListConfig

from .cityscapes import CITYSCAPES_THING_CLASSES, load_cityscapes_instances, register_cityscapes
from .coco import register_coco_dataset
from .common import fixed_subset

__all__ = [
    "CITYSCAPES_THING_CLASSES",
    "fixed_subset",
    "load_cityscapes_instances",
    "register_cityscapes",
    "register_coco_dataset",
    "register_datasets",
]


def register_datasets(cfg):
    """Run the registrations a config asks for in ``dataloader.register`` (one or a list)."""
    spec = cfg.dataloader.get("register")
    if spec is None:
        return []
    specs = list(spec) if isinstance(spec, (list, ListConfig)) else [spec]
    names = []
    for one in specs:
        names.extend(instantiate(one) or [])
    return names
