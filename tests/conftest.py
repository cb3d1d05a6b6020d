"""Shared fixtures: small synthetic datasets in real on-disk formats, and tiny configs."""
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "demo", "cityscapes_demo.py")


@pytest.fixture(scope="session")
def cityscapes_root(tmp_path_factory):
    """A synthetic Cityscapes (gtFine layout) with 6 train and 3 val images of 256x128."""
    from d2_finetune.data.synthetic import make_cityscapes

    root = str(tmp_path_factory.mktemp("cs_data"))
    make_cityscapes(root, {"train": 6, "val": 3}, size=(256, 128), seed=0)
    return root


def tiny_overrides(root, output_dir, **extra):
    """Overrides that shrink configs/demo/cityscapes_demo.py to seconds per test on a CPU."""
    values = {
        "dataloader.register.root": root,
        "train.output_dir": output_dir,
        "train.init_checkpoint": "",
        "train.max_iter": 4,
        "train.eval_period": 0,
        "train.checkpointer.period": 2,
        "train.log_period": 1,
        "train.seed": 0,
        "train.device": "cpu",
        "lr_multiplier.steps": [3],
        "lr_multiplier.warmup_iters": 1,
        "dataloader.train.num_workers": 0,
        "dataloader.test.num_workers": 0,
        "dataloader.train.mapper.augmentations.0.short_edge_length": [128],
        "dataloader.train.mapper.augmentations.0.max_size": 256,
        "dataloader.test.mapper.augmentations.0.short_edge_length": 128,
        "dataloader.test.mapper.augmentations.0.max_size": 256,
    }
    values.update(extra)
    return [f"{k}={_fmt(v)}" for k, v in values.items()]


def _fmt(value):
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_fmt(v) for v in value) + "]"
    if isinstance(value, str):
        return "''" if value == "" else value
    return str(value)


@pytest.fixture(scope="session")
def tiny_init(cityscapes_root, tmp_path_factory):
    """A random init of the tiny 8-class model whose FrozenBN statistics are calibrated on a
    training batch (an uncalibrated random FrozenBN network diverges at once)."""
    import torch

    from d2_finetune.demo import make_calibrated_init

    path = str(tmp_path_factory.mktemp("tiny_init") / "init.pth")
    out = str(tmp_path_factory.mktemp("tiny_init_out"))
    torch.manual_seed(0)
    make_calibrated_init(DEMO_CONFIG, tiny_overrides(cityscapes_root, out), path)
    return path


@pytest.fixture
def tiny_cfg(cityscapes_root, tiny_init, tmp_path):
    """A function returning the tiny demo config (datasets registered, starting from
    ``tiny_init``), with extra overrides given as keyword arguments with dotted names."""
    from d2_finetune.config import load_config
    from d2_finetune.data import register_datasets
    from d2_finetune.engine import resolve_device

    def make(config=DEMO_CONFIG, output_dir=None, **extra):
        out = output_dir or str(tmp_path / "out")
        extra.setdefault("train.init_checkpoint", tiny_init)
        cfg = resolve_device(load_config(config, tiny_overrides(cityscapes_root, out, **extra)))
        register_datasets(cfg)
        return cfg

    return make
