"""Checks that run before a job writes anything or starts training, so bad input fails fast."""

import contextlib
import logging
import os
import shutil
import uuid

import torch
from omegaconf import OmegaConf
from omegaconf.errors import InterpolationResolutionError

from detectron2.config import instantiate
from detectron2.utils import comm

from ..errors import CheckpointError, ConfigError, UserError
from ..solver import epochs_in
from .amp import amp_dtype

__all__ = [
    "check_config",
    "check_init_checkpoint",
    "check_output_dir",
    "check_shared_output_dir",
    "check_world_size",
    "startup_guard",
]

logger = logging.getLogger(__name__)


def _positive_int(value, key, allow_zero=False):
    ok = (
        isinstance(value, int)
        and not isinstance(value, bool)
        and (value >= 0 if allow_zero else value > 0)
    )
    if not ok:
        raise ConfigError(
            f"{key} must be {'a non-negative' if allow_zero else 'a positive'} integer, "
            f"got {value!r}."
        )


def _period(cfg, key, allow_zero=False):
    """A period: a count of iterations, or a number of epochs ("2 epochs")."""
    value = OmegaConf.select(cfg, key)
    stated = epochs_in(value)
    if stated is None:
        _positive_int(value, key, allow_zero=allow_zero)
    elif stated <= 0:
        raise ConfigError(f"{key} must be a positive number of epochs, got {value!r}.")


def check_config(cfg, world_size=1):
    """Refuse nonsense values with a message naming the key, before anything runs."""
    train = cfg.train
    if train.get("epochs") is None:
        if train.get("max_iter") is None:
            raise ConfigError(
                "The config states no schedule: set train.epochs (with train.step_epochs) or "
                "train.max_iter (with lr_multiplier.steps)."
            )
        _positive_int(train.max_iter, "train.max_iter")
        instantiate(cfg.lr_multiplier)  # validates steps and warmup against max_iter
    else:
        if not (isinstance(train.epochs, (int, float)) and train.epochs > 0):
            raise ConfigError(f"train.epochs must be a positive number, got {train.epochs!r}.")
        if train.get("max_iter") is not None:
            _positive_int(train.max_iter, "train.max_iter")
        if list(cfg.lr_multiplier.get("steps") or []):
            raise ConfigError(
                f"lr_multiplier.steps={list(cfg.lr_multiplier.steps)} with train.epochs="
                f"{train.epochs}: with a schedule in epochs give the steps in epochs, as "
                "train.step_epochs (or set train.epochs=null to count iterations)."
            )
    lr = cfg.optimizer.get("lr")
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ConfigError(f"optimizer.lr must be a positive number, got {lr!r}.")
    reference = cfg.optimizer.get("reference_batch")
    if reference is not None:
        _positive_int(reference, "optimizer.reference_batch")
    batch = cfg.dataloader.train.get("total_batch_size")
    _positive_int(batch, "dataloader.train.total_batch_size")
    if batch % world_size:
        raise ConfigError(
            f"dataloader.train.total_batch_size={batch} is not divisible by the {world_size} "
            "processes (GPUs) of this run: use a multiple of the GPU count."
        )
    _period(cfg, "train.eval_period", allow_zero=True)
    _positive_int(train.log_period, "train.log_period")
    _period(cfg, "train.checkpointer.period")
    _positive_int(train.get("patience", 0), "train.patience", allow_zero=True)
    _period(cfg, "train.val_loss_period", allow_zero=True)
    amp_dtype(cfg)
    best = train.get("best_metric")
    if best and best.get("mode", "max") not in ("max", "min"):
        raise ConfigError(f"train.best_metric.mode must be 'max' or 'min', got {best.mode!r}.")
    if best:
        try:
            best.get("name")
        except InterpolationResolutionError as e:
            raise ConfigError(
                f"train.best_metric.name={best._get_node('name')._value()} cannot be resolved "
                f"({str(e).splitlines()[0]}): the config's dataset base names no "
                "dataloader.best_metric. Set train.best_metric.name to one of the evaluators' "
                "metrics, e.g. bbox/AP."
            ) from None
    sharing = train.get("tensor_sharing")
    strategies = sorted(torch.multiprocessing.get_all_sharing_strategies())
    if sharing is not None and sharing not in strategies:
        raise ConfigError(
            f"train.tensor_sharing must be one of {', '.join(strategies)} (or None for torch's "
            f"default), got {sharing!r}."
        )
    num_classes = cfg.model.get("roi_heads", {}).get("num_classes")
    if num_classes is not None:
        _positive_int(num_classes, "model.roi_heads.num_classes")
    if not train.get("output_dir"):
        raise ConfigError("train.output_dir is empty: set it to a folder for logs and checkpoints.")
    device = train.get("device", "auto")
    if device != "auto" and torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={device} but no CUDA device is available; use train.device=cpu "
            "or train.device=auto."
        )


def check_world_size(num_gpus, num_machines):
    if num_gpus < 1 or num_machines < 1:
        raise ConfigError(
            f"--num-gpus and --num-machines must be at least 1, got {num_gpus} and {num_machines}."
        )
    if torch.cuda.is_available() and num_gpus > torch.cuda.device_count():
        raise ConfigError(
            f"--num-gpus {num_gpus} but this machine has {torch.cuda.device_count()} GPU(s)."
        )


def check_init_checkpoint(cfg, resume):
    """A local ``train.init_checkpoint`` must exist (URLs are fetched when loaded)."""
    path = cfg.train.get("init_checkpoint") or ""
    if not path or "://" in path:
        return
    if resume and os.path.isfile(os.path.join(cfg.train.output_dir, "last_checkpoint")):
        return
    if not os.path.isfile(path):
        raise CheckpointError(
            f"train.init_checkpoint={path}: no such file. Point it at a checkpoint "
            "(.pkl or .pth; for --eval-only also an exported model.ts or model.onnx), or set "
            "train.init_checkpoint='' to start from random weights."
        )


def check_output_dir(path, needed_bytes=0, create=True):
    """``path`` can be created and written, and has ``needed_bytes`` free. With
    ``create=False`` nothing is created: a folder that does not exist yet must be creatable in
    the nearest folder above it that does."""
    if not create and not os.path.isdir(path):
        existing = path
        while not os.path.exists(existing):
            existing = os.path.dirname(existing)
        if os.path.isdir(existing) and os.access(existing, os.W_OK | os.X_OK):
            return
        reason = "Permission denied" if os.path.isdir(existing) else "Not a directory"
        raise _not_writable(path, f"{reason}: {existing}")
    try:
        os.makedirs(path, exist_ok=True)
        probe = os.path.join(path, f".write_test_{uuid.uuid4().hex}")
        with open(probe, "wb") as f:
            f.write(b"ok")
        os.remove(probe)
    except OSError as e:
        raise _not_writable(path, e.strerror) from e
    free = shutil.disk_usage(path).free
    if free < needed_bytes:
        raise ConfigError(
            f"train.output_dir={path} has {free / 2**20:.0f} MiB free but checkpoints need about "
            f"{needed_bytes / 2**20:.0f} MiB: free some space or choose another folder."
        )


def _not_writable(path, reason):
    return ConfigError(
        f"train.output_dir={path} is not writable ({reason}): choose a folder you can write to."
    )


def checkpoint_bytes(model):
    """Room for two checkpoints (the new one is written before the old one is removed), each
    holding the weights and an SGD momentum buffer."""
    params = sum(p.numel() * p.element_size() for p in model.state_dict().values())
    return 2 * 2 * params


@contextlib.contextmanager
def startup_guard(output_dir):
    """If starting a job fails with a :class:`UserError`, remove what it created in
    ``output_dir`` (a failed start leaves no half-written outputs behind)."""
    existed = os.path.isdir(output_dir)
    before = set(os.listdir(output_dir)) if existed else set()
    try:
        yield
    except UserError:
        if not comm.is_main_process():
            raise
        if not existed:
            shutil.rmtree(output_dir, ignore_errors=True)
        elif os.path.isdir(output_dir):
            for name in set(os.listdir(output_dir)) - before:
                target = os.path.join(output_dir, name)
                if os.path.isdir(target) and not os.path.islink(target):
                    shutil.rmtree(target, ignore_errors=True)
                else:
                    os.remove(target)
        raise


# Folders that are local to each machine on any cluster, and file systems held in memory
# (/dev/shm, /run).
LOCAL_DIRS = ("/tmp", "/var/tmp")
LOCAL_FS_TYPES = ("tmpfs", "ramfs", "devtmpfs")


def check_shared_output_dir(path):
    """Refuse an output folder that the job's machines cannot share: one under a folder that
    is local to each machine of a cluster (``/tmp``, ``/var/tmp``) or on a file system held in
    this machine's memory (tmpfs: ``/dev/shm``, ``/run``). The job reads its submission from
    there and every node writes its logs there."""
    real = os.path.realpath(path)
    local = next((d for d in LOCAL_DIRS if real == d or real.startswith(d + os.sep)), None)
    fs_type = None if local else _fs_type(real)
    if local or fs_type in LOCAL_FS_TYPES:
        where = (
            f"under {local}, which is a different folder on every machine"
            if local
            else f"on a {fs_type} file system, in this machine's memory"
        )
        raise ConfigError(
            f"train.output_dir={path} is {where}: the job's nodes cannot read its submission "
            "or write their logs and checkpoints there. Choose a folder on a file system the "
            "nodes share (your home or project folder), or pass --output-is-shared if SLURM "
            "runs the job on this very machine."
        )


def _fs_type(path):
    """The type of the file system holding ``path`` (from /proc/self/mounts), or None."""
    try:
        with open("/proc/self/mounts") as f:
            mounts = [line.split()[1:3] for line in f if len(line.split()) > 2]
    except OSError:
        return None
    best = None
    for mount, fs_type in mounts:
        mount = mount.replace("\\040", " ")
        if path == mount or path.startswith(mount.rstrip(os.sep) + os.sep) or mount == os.sep:
            if best is None or len(mount) >= len(best[0]):
                best = (mount, fs_type)
    return best[1] if best else None
