"""Dataset registration. Call these from ``main()`` (every ``launch`` worker); never on import."""

import difflib
import os

from omegaconf import ListConfig

from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog

from ..errors import DatasetError
from .cityscapes import CITYSCAPES_THING_CLASSES, load_cityscapes_instances, register_cityscapes
from .coco import register_coco_dataset
from .common import fixed_subset
from .kitti import KITTI_CLASSES, load_kitti, register_kitti
from .voc import VOC_CLASSES, load_voc, register_voc

__all__ = [
    "CITYSCAPES_THING_CLASSES",
    "KITTI_CLASSES",
    "VOC_CLASSES",
    "fixed_subset",
    "load_cityscapes_instances",
    "load_kitti",
    "load_voc",
    "register_cityscapes",
    "register_coco_dataset",
    "register_datasets",
    "check_datasets",
    "register_kitti",
    "register_voc",
]


def register_datasets(cfg):
    """Run the registrations a config asks for in ``dataloader.register`` (one or a list), then
    check that every dataset the config trains or tests on is registered."""
    spec = cfg.dataloader.get("register")
    specs = [] if spec is None else list(spec) if isinstance(spec, (list, ListConfig)) else [spec]
    names = []
    for one in specs:
        names.extend(instantiate(one) or [])
    check_datasets(cfg)
    return names


# Metadata keys under which registrations record where their files are.
_PATH_KEYS = ("image_dir", "gt_dir", "image_root", "json_file", "dirname")


def check_datasets(cfg):
    """Every dataset the config trains or tests on is registered and its files are there."""
    for part in ("train", "test"):
        names = cfg.dataloader[part].dataset.get("names")
        for name in [names] if isinstance(names, str) else list(names or []):
            if name not in DatasetCatalog.list():
                close = difflib.get_close_matches(name, DatasetCatalog.list(), n=3)
                raise DatasetError(
                    f"dataloader.{part}.dataset.names: dataset '{name}' is not registered "
                    "(dataloader.register declares what is)."
                    + (" Did you mean: " + ", ".join(close) + "?" if close else "")
                )
            meta = MetadataCatalog.get(name)
            for key in _PATH_KEYS:
                path = meta.get(key)
                if path and not os.path.exists(path):
                    raise DatasetError(
                        f"Dataset '{name}': {path} does not exist. " + meta.get("download_hint", "")
                    )
