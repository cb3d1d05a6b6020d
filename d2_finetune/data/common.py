"""Helpers for dataset registration and for lists of dataset dicts."""
from detectron2.data import DatasetCatalog, MetadataCatalog

__all__ = ["fixed_subset", "registered_as"]


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
