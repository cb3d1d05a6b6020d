"""Helpers on lists of dataset dicts, usable from configs."""

__all__ = ["fixed_subset"]


def fixed_subset(dataset, size):
    """``size`` items spread evenly over ``dataset``, the same ones on every call."""
    dataset = list(dataset)
    if size is None or size >= len(dataset):
        return dataset
    if size <= 0:
        return []
    step = len(dataset) / size
    return [dataset[int(i * step)] for i in range(size)]
