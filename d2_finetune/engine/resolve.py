"""One config-resolution step, for every entry point.

A config file states what the user wants; some of it is settled only where the run happens:
which device, which datasets exist and how many classes and images they have, how many loader
workers the cores allow, how many iterations an epoch is. :func:`resolve_config` settles all of
it in one place, in this order, editing the config in place, so that every later step (and the
``config.yaml`` a run saves) reads what actually runs:

1. ``train.device``: "auto" becomes cuda or cpu;
2. datasets: the registrations of ``dataloader.register`` run and their files are checked;
3. the model's class count: None becomes the training data's; another count is an error;
4. loaders: ``num_workers="auto"`` becomes a count per process, ``pin_memory`` stays only with a
   GPU;
5. for training, the schedule: epochs and periods given in epochs become iterations (counted
   from the training set's size), and the resolved schedule is logged.

:func:`prepare_config` is the whole sequence from a file: load, check, resolve.
"""

import logging

import torch
from omegaconf import OmegaConf
from tabulate import tabulate

from detectron2.data import MetadataCatalog

from ..checkpoint.classes import check_class_count
from ..config import load_config
from ..data import register_datasets
from ..data.loaders import build_train_dataset
from ..errors import ConfigError
from ..solver import needs_dataset_size, resolve_schedule
from .checks import check_config
from .processes import cores_per_process

__all__ = [
    "default_num_workers",
    "prepare_config",
    "resolve_config",
    "resolve_device",
    "resolve_num_classes",
    "training_metadata",
]

logger = logging.getLogger(__name__)


def prepare_config(config_file, overrides=(), *, world_size=1, training=True, settings=None):
    """The config of ``config_file`` with ``overrides`` (``"dotted.key=value"`` strings, as on the
    command line) and ``settings`` (``{dotted key: value}``, set as given), checked and
    resolved."""
    cfg = load_config(config_file, overrides)
    for key, value in (settings or {}).items():
        OmegaConf.update(cfg, key, value, merge=False)
    check_config(cfg, world_size=world_size)
    return resolve_config(cfg, world_size=world_size, training=training)


def resolve_config(cfg, *, world_size=1, training=True):
    """Settle what depends on the machine and the data (see the module docstring); ``cfg`` is
    edited in place and returned. ``training=False`` (evaluation, prediction) leaves the
    schedule as stated."""
    resolve_device(cfg)
    register_datasets(cfg)
    resolve_num_classes(cfg)
    _resolve_loaders(cfg)
    if training:
        size = len(build_train_dataset(cfg)) if needs_dataset_size(cfg) else None
        rows = resolve_schedule(cfg, size, world_size)
        logger.info("Schedule:\n" + tabulate(rows, tablefmt="simple"))
    return cfg


def resolve_device(cfg):
    """``train.device="auto"``: cuda where there is a GPU, else cpu (a device named in the
    config is checked by :func:`.checks.check_config`)."""
    if cfg.train.get("device", "auto") == "auto":
        cfg.train.device = "cuda" if torch.cuda.is_available() else "cpu"
    return cfg


def training_metadata(cfg):
    """The registered metadata of the first training dataset, or None without one."""
    names = cfg.dataloader.train.dataset.get("names")
    if names is None:
        return None
    names = [names] if isinstance(names, str) else list(names)
    return MetadataCatalog.get(names[0])


def resolve_num_classes(cfg):
    """The model's class count and the training data's are one: ``model.roi_heads.num_classes
    = None`` takes the data's, so a dataset whose classes come from its files (a COCO json) never
    has them typed by hand; a stated count that differs is a ConfigError. The training datasets
    must be registered and agree on their classes.

    Returns:
        int or None: the class count the model is built with.
    """
    roi_heads = cfg.model.get("roi_heads")
    if roi_heads is None or "num_classes" not in roi_heads:
        return None
    wanted = roi_heads.num_classes
    names = cfg.dataloader.train.dataset.get("names")
    if names is None:
        if wanted is None:
            raise ConfigError(
                "model.roi_heads.num_classes=None asks for the training dataset's class count, "
                "but dataloader.train.dataset names no registered dataset; set "
                "model.roi_heads.num_classes."
            )
        return wanted
    names = [names] if isinstance(names, str) else list(names)
    counts = {}
    for name in names:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is None:
            if wanted is not None:
                return wanted
            raise ConfigError(
                f"model.roi_heads.num_classes=None asks for the class count of the training "
                f"dataset '{name}', which has no thing_classes: register it first (the "
                "config's dataloader.register) or set model.roi_heads.num_classes."
            )
        counts[name] = len(classes)
    if len(set(counts.values())) > 1:
        raise ConfigError(
            "The training datasets have different numbers of classes "
            + ", ".join(f"{n}: {c}" for n, c in counts.items())
            + "; train on datasets that share "
            "their classes."
        )
    classes = MetadataCatalog.get(names[0]).thing_classes
    if wanted is None:
        roi_heads.num_classes = len(classes)
        logger.info(f"model.roi_heads.num_classes = {len(classes)}, from the classes of {names[0]}")
    else:
        check_class_count(classes, wanted, "model.roi_heads.num_classes", dataset=names[0])
    return roi_heads.num_classes


def default_num_workers():
    """Loader processes per training process, from the CPU cores each local process has.

    More is not better: on a 16-core H200 machine, 6 workers fed AMP training at 28.5 images/s
    where 15 gave 25.0 (they compete with the training process for the CPU; bench/README.md,
    ``bench/train_throughput.py --runs ours+workers6,ours+workers15``). Hence half the cores
    less two, at least min(4, cores - 1), at most 8.
    """
    per_process = cores_per_process()
    if per_process == 1:
        return 1
    return min(max(per_process // 2 - 2, min(4, per_process - 1)), 8)


def _resolve_loaders(cfg):
    on_gpu = torch.device(cfg.train.device).type == "cuda"
    for part in ("train", "test"):
        loader = cfg.dataloader[part]
        if loader.get("num_workers") == "auto":
            loader.num_workers = default_num_workers()
        if loader.get("pin_memory") and not on_gpu:
            loader.pin_memory = False  # page-locking is for copies to a GPU
