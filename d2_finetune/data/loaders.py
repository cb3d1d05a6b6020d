"""The data loaders of a resolved config (see :mod:`d2_finetune.engine.resolve`): training (with
a resumable sampler), test, and the validation loss's, all from ``dataloader.*``."""

import copy

import torch

from detectron2.config import LazyCall as L
from detectron2.config import instantiate
from detectron2.data import DatasetFromList
from detectron2.utils import comm

from ..errors import DatasetError
from .common import fixed_subset
from .samplers import ResumableTrainingSampler

__all__ = [
    "ImagesToDevice",
    "build_test_loader",
    "build_train_dataset",
    "build_train_loader",
    "build_val_loss_loader",
]


def build_train_dataset(cfg):
    """The training dataset dicts (``dataloader.train.dataset``), refusing an empty one with a
    message that says why and what to do (detectron2 asserts instead)."""
    spec = cfg.dataloader.train.dataset
    names = spec.get("names")
    try:
        return instantiate(spec)
    except AssertionError as e:
        if "is empty" in str(e):
            raise DatasetError(f"The training dataset {names} has no images: {e}") from None
        if "No valid data found" not in str(e):
            raise
    raise DatasetError(
        f"The training dataset {names} has no images left after filtering: training drops images "
        "without a non-crowd instance (dataloader.train.dataset.filter_empty=True). Check its "
        "annotations, or set dataloader.train.dataset.filter_empty=False."
    )


def build_train_loader(cfg):
    """The training loader, and its sampler: a :class:`ResumableTrainingSampler` (seeded by
    ``train.seed``, else drawn at random) unless the config names one.

    Returns:
        (loader, sampler)
    """
    loader_cfg = copy.deepcopy(cfg.dataloader.train)
    dataset = build_train_dataset(cfg)
    seed = cfg.train.get("seed", -1)
    if loader_cfg.get("sampler") is None:
        loader_cfg.sampler = ResumableTrainingSampler(
            len(dataset), seed=seed if seed >= 0 else None
        )
    base_seed = seed if seed >= 0 else getattr(loader_cfg.sampler, "seed", None)
    if base_seed is not None and "seed" not in loader_cfg:
        # Worker seeds from the loader's own generator, one per process, not from the global
        # RNG stream: the loader draws from it when training starts, which would shift the
        # stream a resumed run restores.
        loader_cfg.seed = base_seed + comm.get_rank()
    loader_cfg.dataset = DatasetFromList(dataset, copy=False)
    loader = instantiate(loader_cfg)
    if torch.device(cfg.train.device).type == "cuda":
        loader = ImagesToDevice(loader, torch.device(cfg.train.device))
    return loader, loader_cfg.sampler


def build_test_loader(cfg):
    return instantiate(cfg.dataloader.test)


def build_val_loss_loader(cfg):
    """The loader of the validation loss, derived from the config's loaders: the test loader
    over ``train.val_loss_images`` images spread over the test set, mapped as for training
    (annotations kept) at test scale, without random augmentation, one image per batch."""
    loader_cfg = copy.deepcopy(cfg.dataloader.test)
    loader_cfg.dataset = L(fixed_subset)(
        dataset=loader_cfg.dataset, size=cfg.train.get("val_loss_images", 100)
    )
    mapper = copy.deepcopy(cfg.dataloader.train.mapper)
    mapper.is_train = True
    mapper.augmentations = copy.deepcopy(cfg.dataloader.test.mapper.augmentations)
    loader_cfg.mapper = mapper
    loader_cfg.batch_size = 1  # ValidationLoss seeds each image's sampling
    return instantiate(loader_cfg)


class ImagesToDevice:
    """Iterates over a loader's batches with each ``"image"`` already on ``device``.

    The copies are issued without blocking the host: from page-locked batches
    (``pin_memory=True``) they run while the host goes on, where detectron2's model would copy
    each image from pageable memory and wait for it. The model then finds the images where
    they belong; the rest of each sample (instances) moves in the model, as in detectron2.
    """

    def __init__(self, loader, device):
        self.loader = loader
        self.device = device

    def __iter__(self):
        for batch in self.loader:
            yield [self.move(sample) for sample in batch]

    def move(self, sample):
        if "image" not in sample:
            return sample
        sample = dict(sample)
        sample["image"] = sample["image"].to(self.device, non_blocking=True)
        return sample
