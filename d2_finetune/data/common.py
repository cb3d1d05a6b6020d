"""Helpers shared by the datasets: where datasets live, registration, subsets, 16-bit PNGs."""

import os

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["dataset_root", "fixed_subset", "registered_as", "write_uint16_png"]


def dataset_root(root=None):
    """``root``, else ``$DETECTRON2_DATASETS``, else ``./datasets``."""
    return root or os.environ.get("DETECTRON2_DATASETS") or "datasets"


def registered_as(name, **identity):
    """True if ``name`` is registered with metadata equal to ``identity``, so registering it
    again would change nothing. A registration of ``name`` that differs is removed, so that
    the caller registers it anew."""
    if name not in DatasetCatalog.list():
        return False
    metadata = MetadataCatalog.get(name)
    if all(metadata.get(key) == value for key, value in identity.items()):
        return True
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)
    return False


def fixed_subset(dataset, size):
    """``size`` items spread evenly over ``dataset``, the same ones on every call."""
    dataset = list(dataset)
    if size is None or size >= len(dataset):
        return dataset
    if size <= 0:
        return []
    step = len(dataset) / size
    return [dataset[int(i * step)] for i in range(size)]


def write_uint16_png(path, array):
    """Save an integer array as a 16-bit PNG (Pillow cannot write mode "I" PNGs)."""
    array = np.asarray(array)
    if array.min() < 0 or array.max() > 65535:
        raise ValueError(f"values out of the uint16 range for {path}")
    Image.fromarray(array.astype(np.uint16)).save(path)
