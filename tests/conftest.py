"""Shared fixtures: small synthetic datasets in real on-disk formats, and tiny configs."""

import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO_CONFIG = os.path.join(REPO, "configs", "demo", "cityscapes_demo.py")


def load_script(name):
    """``scripts/<name>.py`` as a module, to call its functions in the test's process."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_script(name, args, timeout=300, check=True, **kwargs):
    """Run ``scripts/<name>.py`` as users do, in a process group of its own: past ``timeout``
    the whole group (worker processes included) is killed and the test fails, so no test
    waits on a process stuck in a collective.

    Returns:
        subprocess.CompletedProcess with text stdout and stderr.
    """
    import sys

    command = [sys.executable, os.path.join(REPO, "scripts", f"{name}.py"), *args]
    return run_command(command, timeout, check, name=f"{name}.py", **kwargs)


def start_command(command, merge_output=False, **kwargs):
    """``command`` started in a process group of its own (so that all it starts can be killed
    together), its output read as text; stderr into stdout with ``merge_output``."""
    import subprocess

    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_output else subprocess.PIPE,
        text=True,
        start_new_session=True,
        **kwargs,
    )


def run_command(command, timeout=300, check=True, name=None, **kwargs):
    """:func:`run_script` for any command (``torchrun ...``): bounded, its group killed."""
    import signal
    import subprocess

    name = name or command[0]
    proc = start_command(command, **kwargs)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(
            f"{name} did not end within {timeout} s\n{out[-3000:]}\n{err[-3000:]}"
        ) from None
    done = subprocess.CompletedProcess(command, proc.returncode, out, err)
    if check and done.returncode != 0:
        raise AssertionError(f"exit {done.returncode}\n{out[-3000:]}\n{err[-3000:]}")
    return done


def launch_args(num_gpus=2, num_machines=1, dist_url="auto"):
    """The launch options of scripts/train_net.py, as its argument parser gives them."""
    import argparse

    return argparse.Namespace(
        num_gpus=num_gpus, num_machines=num_machines, machine_rank=0, dist_url=dist_url
    )


def logged_iteration(out, iteration):
    """Whether the run writing to ``out`` has logged ``iteration`` (or a later one) in its
    metrics.json; a line still being written is not read."""
    import json

    path = os.path.join(out, "metrics.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip().endswith("}")]
    return any(row.get("iteration", -1) >= iteration for row in rows)


def logged_sampler_seed(log_file):
    """The data order's seed that a run wrote to ``log_file`` ("Data order: sampler seed N")."""
    with open(log_file) as f:
        return f.read().split("Data order: sampler seed ", 1)[1].split()[0]


def from_first_checkpoint(out, folder):
    """A new run folder ``folder`` holding only the first checkpoint (iteration 0) of the run in
    ``out``, named in its last_checkpoint: ``--resume`` there is that run, uninterrupted."""
    import shutil

    os.makedirs(folder)
    shutil.copy(os.path.join(out, "model_0000000.pth"), folder)
    with open(os.path.join(folder, "last_checkpoint"), "w") as f:
        f.write("model_0000000.pth")
    return str(folder)


def error_lines(proc):
    """The ``ERROR:`` lines a finished run printed, on stdout and stderr together."""
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("ERROR:")]


def assert_one_error_line(proc, pattern):
    """The run stopped on bad input the way users should see it: exit status 2, one
    ``ERROR:`` line matching ``pattern`` in stdout and stderr together, no traceback in either."""
    import re

    assert proc.returncode == 2, (proc.returncode, proc.stdout[-3000:], proc.stderr[-3000:])
    lines = error_lines(proc)
    assert len(lines) == 1, lines
    assert re.search(pattern, lines[0]), lines[0]
    assert "Traceback" not in proc.stdout and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    return lines[0]


@pytest.fixture(scope="session")
def cityscapes_root(tmp_path_factory):
    """A synthetic Cityscapes (gtFine layout) with 6 train and 3 val images of 256x128."""
    from d2_finetune.demo.synthetic import make_cityscapes

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
    """A function returning the tiny demo config, resolved (datasets registered, starting from
    ``tiny_init``), with extra overrides given as keyword arguments with dotted names."""
    from d2_finetune.engine import prepare_config

    def make(config=DEMO_CONFIG, output_dir=None, **extra):
        out = output_dir or str(tmp_path / "out")
        extra.setdefault("train.init_checkpoint", tiny_init)
        return prepare_config(config, tiny_overrides(cityscapes_root, out, **extra))

    return make


# Two iterations at a small batch and LR, few detections per image: a dataset's training and
# evaluation run end to end in seconds.
FEW_ITERATIONS = {
    "train.max_iter": 2,
    "lr_multiplier.steps": [1],
    "dataloader.train.total_batch_size": 2,
    "optimizer.lr": 0.005,
    "train.plots": False,
    "model.roi_heads.box_predictor.test_topk_per_image": 10,
}


def tiny_detector(cfg):
    """Give ``cfg``'s model the CPU-sized architecture of configs/demo/cityscapes_demo.py
    (ResNet-18, 64-channel FPN, slim heads), keeping its own heads and class count."""
    from d2_finetune.config import load_config

    demo = load_config(DEMO_CONFIG).model
    cfg.model.backbone = demo.backbone
    cfg.model.proposal_generator = demo.proposal_generator
    heads, tiny = cfg.model.roi_heads, demo.roi_heads
    heads.box_head = tiny.box_head
    heads.box_predictor.input_shape = tiny.box_predictor.input_shape
    heads.batch_size_per_image = tiny.batch_size_per_image
    if heads.get("mask_head") is not None:
        heads.mask_head.input_shape = tiny.mask_head.input_shape
        heads.mask_head.conv_dims = tiny.mask_head.conv_dims
    return cfg


def perfect_outputs(record, with_masks=False):
    """Model outputs that predict exactly the non-crowd annotations of a dataset dict, with
    distinct scores, as detectron2 models return them (boxes in XYXY_ABS)."""
    import numpy as np
    import pycocotools.mask as mask_util
    import torch

    from detectron2.structures import Boxes, BoxMode, Instances, polygons_to_bitmask

    anns = [a for a in record["annotations"] if not a.get("iscrowd", 0)]
    instances = Instances((record["height"], record["width"]))
    boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    instances.scores = torch.linspace(1.0, 0.5, len(anns)) if anns else torch.zeros(0)
    instances.pred_classes = torch.tensor([a["category_id"] for a in anns], dtype=torch.int64)
    if with_masks:
        masks = []
        for a in anns:
            segm = a["segmentation"]
            if isinstance(segm, dict):
                rle = (
                    segm
                    if isinstance(segm["counts"], (str, bytes))
                    else mask_util.frPyObjects(segm, *segm["size"])
                )
                masks.append(mask_util.decode(rle).astype(bool))
            else:
                masks.append(polygons_to_bitmask(segm, record["height"], record["width"]))
        shape = (0, record["height"], record["width"])
        instances.pred_masks = (
            torch.from_numpy(np.stack(masks)) if masks else torch.zeros(shape, dtype=torch.bool)
        )
    return [{"instances": instances}]


def assert_transfers_from_coco(cfg, folder):
    """Load a COCO checkpoint of ``cfg``'s architecture (80 classes, seeded random values, in
    Detectron2's model-zoo ``.pkl`` format) the way training starts, with the config's own
    transfer settings, and check that every target class got the class-dependent rows of the
    COCO class it was mapped to. Returns that map (target class -> COCO class or None)."""
    import copy
    import json
    import pickle

    import torch

    from detectron2.config import instantiate
    from detectron2.data import MetadataCatalog

    from d2_finetune.checkpoint import coco_thing_classes
    from d2_finetune.engine import FinetuneTrainer

    source_cfg = copy.deepcopy(cfg)
    source_cfg.model.roi_heads.num_classes = 80
    generator = torch.Generator().manual_seed(0)
    source = {
        k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
        for k, v in instantiate(source_cfg.model).state_dict().items()
    }
    path = os.path.join(str(folder), "coco_model.pkl")
    with open(path, "wb") as f:
        pickle.dump({"model": {k: v.numpy() for k, v in source.items()}, "__author__": "test"}, f)

    cfg.train.init_checkpoint = path
    trainer = FinetuneTrainer(cfg)
    trainer.resume_or_load(resume=False)
    with open(os.path.join(cfg.train.output_dir, "transfer.json")) as f:
        class_map = json.load(f)["class_map"]
    state = trainer.model.state_dict()
    targets = MetadataCatalog.get(
        cfg.dataloader.train.dataset.names[0]
        if not isinstance(cfg.dataloader.train.dataset.names, str)
        else cfg.dataloader.train.dataset.names
    ).thing_classes
    assert list(class_map) == list(targets)
    coco = coco_thing_classes()
    cls, box = "roi_heads.box_predictor.cls_score.", "roi_heads.box_predictor.bbox_pred."
    mask = "roi_heads.mask_head.predictor."
    for i, name in enumerate(targets):
        if class_map[name] is None:
            continue
        j = coco.index(class_map[name])
        for suffix in ("weight", "bias"):
            assert torch.equal(state[cls + suffix][i], source[cls + suffix][j]), name
            assert torch.equal(
                state[box + suffix][4 * i : 4 * i + 4], source[box + suffix][4 * j : 4 * j + 4]
            ), name
            if mask + suffix in state:
                assert torch.equal(state[mask + suffix][i], source[mask + suffix][j]), name
    for suffix in ("weight", "bias"):  # the background row
        assert torch.equal(state[cls + suffix][-1], source[cls + suffix][-1])
    backbone = "backbone.bottom_up.stem.conv1.weight"
    assert torch.equal(state[backbone], source[backbone])
    return class_map


# One training run compared across the ways of starting processes (test_engine_launch.py,
# test_engine_submit.py): 2 processes, 6 iterations, then an evaluation.
TWO_PROCESS_ENV = dict(os.environ, OMP_NUM_THREADS="1")  # as torchrun gives each process


def two_process_overrides(root, init, output_dir):
    return tiny_overrides(
        root,
        str(output_dir),
        **{
            "train.init_checkpoint": init,
            "train.max_iter": 6,
            "lr_multiplier.steps": [5],
            "train.checkpointer.period": 100,
            "dataloader.test.batch_size": 1,
            # 6 iterations leave every score under detectron2's 0.05: keep some to compare.
            "model.roi_heads.box_predictor.test_score_thresh": 0.01,
        },
    )


@pytest.fixture(scope="session")
def two_process_reference(cityscapes_root, tiny_init, tmp_path_factory):
    """The output folder of ``--num-gpus 2`` (processes spawned by train_net.py)."""
    out = str(tmp_path_factory.mktemp("two_process_reference") / "num_gpus_2")
    run_script(
        "train_net",
        [
            "--config-file",
            DEMO_CONFIG,
            "--num-gpus",
            "2",
            *two_process_overrides(cityscapes_root, tiny_init, out),
        ],
        timeout=150,
        env=TWO_PROCESS_ENV,
    )
    assert len(final_predictions(out)) > 0  # there are predictions to compare
    return out


def final_weights(folder):
    import torch

    return torch.load(
        os.path.join(folder, "model_final.pth"), map_location="cpu", weights_only=True
    )


def final_predictions(folder):
    import json

    with open(os.path.join(folder, "inference", "coco_instances_results.json")) as f:
        return json.load(f)


def assert_same_training(folder, reference):
    """The run in ``folder`` ended with the weights of ``reference``, after the same number of
    iterations, and its evaluation made the same predictions."""
    import torch

    ours, theirs = final_weights(folder), final_weights(reference)
    assert ours["iteration"] == theirs["iteration"] == 5
    for key, value in theirs["model"].items():
        assert torch.equal(ours["model"][key], value), key
    assert final_predictions(folder) == final_predictions(reference)
