"""Bad input to scripts/train_net.py: exit status 2, one short message naming the file, key or
value at fault and the fix, no traceback, and nothing left behind in the output dir.
Every case here is listed in docs/errors.md."""

import os
import shutil

import pytest

from conftest import DEMO_CONFIG, load_script, tiny_overrides

train_net = load_script("train_net")


@pytest.fixture(autouse=True)
def fresh_loggers():
    """Each in-process run sets up logging as a new process would; drop the handlers of the
    previous test, which point at streams pytest has closed."""
    import logging

    from detectron2.utils.logger import setup_logger

    yield
    setup_logger.cache_clear()
    for name in ("detectron2", "fvcore", "d2_finetune"):
        logging.getLogger(name).handlers.clear()


def run_main(argv, capfd):
    args = train_net.argument_parser().parse_args(argv)
    with pytest.raises(SystemExit) as exit_info:
        train_net.main(args)
    err = capfd.readouterr().err
    return exit_info.value.code, err


@pytest.fixture
def base_args(cityscapes_root, tiny_init, tmp_path):
    out = str(tmp_path / "out")
    return out, tiny_overrides(cityscapes_root, out, **{"train.init_checkpoint": tiny_init})


def assert_reported(code, err, pattern, out):
    import re

    assert code == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("ERROR: "), err
    assert re.search(pattern, last), err
    assert "Traceback" not in err
    assert not os.path.exists(out) or os.listdir(out) == [], os.listdir(out)


CONFIG_CASES = {
    "missing config file": (
        ["--config-file", "configs/nope_ft.py"],
        r"Config file not found: configs/nope_ft\.py",
    ),
    "misspelled config file": (
        ["--config-file", "configs/cityscape_ft.py"],
        r"Did you mean configs/cityscapes_ft\.py",
    ),
    "unknown override key": (
        ["model.roi_heads.no_such_key=1"],
        r"StandardROIHeads .*takes no argument 'no_such_key'",
    ),
    "misspelled override key": (
        ["train.max_iterr=5"],
        r"no key 'train\.max_iterr'.*Did you mean: max_iter",
    ),
    "override of the wrong type": (["train.max_iter=abc"], r"train\.max_iter must be an integer"),
    "override without a value": (["train.max_iter"], r"write it as dotted\.key=value"),
    "negative max_iter": (
        ["train.max_iter=-5"],
        r"train\.max_iter must be a positive integer, got -5",
    ),
    "steps beyond max_iter": (
        ["lr_multiplier.steps=[10]"],
        r"steps \[10\] reach beyond train\.max_iter=4",
    ),
    "zero learning rate": (["optimizer.lr=0"], r"optimizer\.lr must be a positive number, got 0"),
    "negative learning rate": (["optimizer.lr=-0.01"], r"optimizer\.lr must be a positive number"),
    "batch not divisible by GPUs": (
        ["--num-gpus", "3"],
        r"total_batch_size=2 is not divisible by the 3 processes",
    ),
    "zero GPUs": (["--num-gpus", "0"], r"--num-gpus and --num-machines must be at least 1"),
    "zero classes": (
        ["model.roi_heads.num_classes=0"],
        r"model\.roi_heads\.num_classes must be a positive integer",
    ),
    "negative eval period": (
        ["train.eval_period=-1"],
        r"train\.eval_period must be a non-negative integer",
    ),
    "zero checkpoint period": (
        ["train.checkpointer.period=0"],
        r"train\.checkpointer\.period must be a positive integer",
    ),
    "unknown AMP dtype": (
        ["train.amp.dtype=int8"],
        r"train\.amp\.dtype must be float16 or bfloat16",
    ),
    "unknown tensor sharing": (
        ["train.tensor_sharing=shm"],
        r"train\.tensor_sharing must be one of file_descriptor, file_system .*got 'shm'",
    ),
    "bad best-metric mode": (
        ["train.best_metric.mode=best"],
        r"train\.best_metric\.mode must be 'max' or 'min'",
    ),
    "missing init checkpoint": (
        ["train.init_checkpoint=/nonexistent/model.pkl"],
        r"train\.init_checkpoint=/nonexistent/model\.pkl: no such file",
    ),
}


@pytest.mark.parametrize("case", sorted(CONFIG_CASES))
def test_bad_config_input(case, base_args, capfd):
    out, overrides = base_args
    extra, pattern = CONFIG_CASES[case]
    argv = ["--config-file", DEMO_CONFIG, *overrides]
    if extra[0] == "--config-file":
        argv = [*extra, *overrides]
    elif extra[0].startswith("--"):
        argv = [*extra, *argv]
    else:
        argv = [*argv, *extra]
    assert_reported(*run_main(argv, capfd), pattern, out)


def test_cuda_device_without_gpu(base_args, capfd):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    out, overrides = base_args
    code, err = run_main(["--config-file", DEMO_CONFIG, *overrides, "train.device=cuda"], capfd)
    assert_reported(code, err, r"train\.device=cuda but no CUDA device is available", out)


def test_config_syntax_error(tmp_path, base_args, capfd):
    out, overrides = base_args
    bad = tmp_path / "bad.py"
    bad.write_text("train = dict(\n  max_iter=1\n  oops\n)\n")
    code, err = run_main(["--config-file", str(bad)], capfd)
    assert_reported(code, err, r"bad\.py has a syntax error at line 2", out)


def test_missing_base_file(tmp_path, base_args, capfd):
    out, _ = base_args
    leaf = tmp_path / "leaf.py"
    leaf.write_text('_base_ = ["_base_/models/mask_rcnn_r51_fpn.py"]\n')
    code, err = run_main(["--config-file", str(leaf)], capfd)
    assert_reported(code, err, r"not found: .*mask_rcnn_r51_fpn\.py \(named in .*leaf\.py\)", out)


def test_unwritable_output_dir(tmp_path, base_args, capfd):
    _, overrides = base_args
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    out = str(blocker / "out")
    code, err = run_main(
        ["--config-file", DEMO_CONFIG, *overrides, f"train.output_dir={out}"], capfd
    )
    assert_reported(code, err, r"train\.output_dir=.*a_file/out is not writable", out)


def test_full_output_dir(base_args, capfd, monkeypatch):
    out, overrides = base_args
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=10 * 2**20))
    code, err = run_main(["--config-file", DEMO_CONFIG, *overrides], capfd)
    assert_reported(code, err, r"has 10 MiB free but checkpoints need about \d+ MiB", out)


def test_output_dir_that_existed_keeps_its_files(base_args, capfd):
    out, overrides = base_args
    os.makedirs(out)
    with open(os.path.join(out, "notes.txt"), "w") as f:
        f.write("mine")
    code, err = run_main(
        ["--config-file", DEMO_CONFIG, *overrides, "dataloader.register.root=/nonexistent"], capfd
    )
    assert code == 2 and "Traceback" not in err
    assert os.listdir(out) == ["notes.txt"]


def test_missing_dataset_root(base_args, capfd):
    out, overrides = base_args
    code, err = run_main(
        ["--config-file", DEMO_CONFIG, *overrides, "dataloader.register.root=/nonexistent"], capfd
    )
    assert_reported(
        code,
        err,
        r"/nonexistent/cityscapes/leftImg8bit/train does not exist\. Download "
        r"leftImg8bit_trainvaltest\.zip and gtFine_trainvaltest\.zip",
        out,
    )


def test_missing_split(base_args, tmp_path, capfd):
    out, overrides = base_args
    root = tmp_path / "partial"
    src = overrides[0].split("=", 1)[1]
    for sub in ("leftImg8bit", "gtFine"):
        shutil.copytree(
            os.path.join(src, "cityscapes", sub, "train"), root / "cityscapes" / sub / "train"
        )
    code, err = run_main(
        ["--config-file", DEMO_CONFIG, *overrides, f"dataloader.register.root={root}"], capfd
    )
    assert_reported(code, err, r"cityscapes/leftImg8bit/val does not exist", out)


def test_unregistered_dataset_name(base_args, capfd):
    out, overrides = base_args
    code, err = run_main(
        [
            "--config-file",
            DEMO_CONFIG,
            *overrides,
            "dataloader.test.dataset.names=cityscapes_ft_instance_vall",
        ],
        capfd,
    )
    assert_reported(
        code,
        err,
        r"dataset 'cityscapes_ft_instance_vall' is not registered.*Did you mean: "
        r"cityscapes_ft_instance_val",
        out,
    )


def test_corrupt_annotation_json(base_args, tmp_path, capfd):
    out, overrides = base_args
    root = tmp_path / "corrupt"
    shutil.copytree(overrides[0].split("=", 1)[1], root)
    victim = sorted((root / "cityscapes" / "gtFine" / "train").rglob("*_polygons.json"))[0]
    victim.write_text('{"imgHeight": 128, "objects": [')
    code, err = run_main(
        ["--config-file", DEMO_CONFIG, *overrides, f"dataloader.register.root={root}"], capfd
    )
    assert_reported(code, err, "Cannot read annotation file " + str(victim), out)


def test_corrupt_image_names_the_file(base_args, tmp_path, capfd):
    _, overrides = base_args
    root = tmp_path / "corrupt"
    shutil.copytree(overrides[0].split("=", 1)[1], root)
    for image in (root / "cityscapes" / "leftImg8bit" / "train").rglob("*.png"):
        image.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    out = str(tmp_path / "run")
    code, err = run_main(
        [
            "--config-file",
            DEMO_CONFIG,
            *overrides,
            f"dataloader.register.root={root}",
            f"train.output_dir={out}",
        ],
        capfd,
    )
    assert code == 2
    assert "ERROR: Cannot use image " in err and "_leftImg8bit.png" in err
    assert "Traceback" not in err


def test_freeze_pattern_matching_nothing(base_args, capfd):
    out, overrides = base_args
    code, err = run_main(
        ["--config-file", DEMO_CONFIG, *overrides, "train.freeze=[backbone.nothing*]"], capfd
    )
    assert_reported(
        code, err, r"train\.freeze pattern 'backbone\.nothing\*' matches no parameter", out
    )


def test_eval_only_with_a_head_that_does_not_fit(base_args, tmp_path, capfd):
    import torch

    from d2_finetune.config import load_config
    from d2_finetune.engine import FinetuneTrainer

    out, overrides = base_args
    cfg = load_config(
        DEMO_CONFIG, overrides + ["model.roi_heads.num_classes=80", "train.device=cpu"]
    )
    coco = tmp_path / "coco.pth"
    torch.save({"model": FinetuneTrainer.build_model(cfg).state_dict()}, coco)
    code, err = run_main(
        ["--config-file", DEMO_CONFIG, "--eval-only", *overrides, f"train.init_checkpoint={coco}"],
        capfd,
    )
    assert_reported(code, err, r"coco\.pth does not fit this model's classes", out)


def _bad_checkpoint(kind, path, cfg_overrides):
    """A file of ``kind`` at ``path``: truncated, random bytes, another architecture, unsafe."""
    import os as _os
    import pickle

    import torch

    from d2_finetune.config import load_config
    from d2_finetune.engine import FinetuneTrainer

    if kind in ("truncated", "other architecture"):
        extra = ["model.backbone.bottom_up.stages.depth=34"] if kind == "other architecture" else []
        cfg = load_config(DEMO_CONFIG, cfg_overrides + ["train.device=cpu"] + extra)
        torch.save({"model": FinetuneTrainer.build_model(cfg).state_dict()}, path)
        if kind == "truncated":
            data = open(path, "rb").read()
            open(path, "wb").write(data[: len(data) // 2])
    elif kind == "random bytes":
        open(path, "wb").write(_os.urandom(1 << 16))
    elif kind == "unsafe":

        class Payload:
            def __reduce__(self):
                return (_os.system, (f"touch {path}.executed",))

        with open(path, "wb") as f:
            pickle.dump({"model": {}, "__author__": Payload()}, f)


@pytest.mark.parametrize(
    "kind, ext, pattern",
    [
        ("truncated", "pth", r"truncated\.pth is not a readable checkpoint"),
        ("random bytes", "pth", r"random_bytes\.pth is not a readable checkpoint"),
        (
            "other architecture",
            "pth",
            r"other_architecture\.pth does not fit the model outside its "
            r"class-dependent layers.*train\.strict_transfer=False",
        ),
        ("unsafe", "pkl", r"unsafe\.pkl: refused to load: .*'posix\.system'.*Nothing was executed"),
    ],
)
def test_bad_init_checkpoint(kind, ext, pattern, base_args, tmp_path, capfd):
    out, overrides = base_args
    path = str(tmp_path / f"{kind.replace(' ', '_')}.{ext}")
    _bad_checkpoint(kind, path, overrides)
    code, err = run_main(
        ["--config-file", DEMO_CONFIG, *overrides, f"train.init_checkpoint={path}"], capfd
    )
    assert_reported(code, err, pattern, out)
    assert not os.path.exists(path + ".executed")


def test_offline_checkpoint_url_says_where_to_download(base_args, capfd, monkeypatch):
    import urllib.request

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    monkeypatch.setenv("FVCORE_CACHE", str(os.path.dirname(base_args[0])))
    out, overrides = base_args
    url = "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
    code, err = run_main(
        ["--config-file", DEMO_CONFIG, *overrides, f"train.init_checkpoint={url}"], capfd
    )
    assert_reported(
        code,
        err,
        r"Cannot download https://dl\.fbaipublicfiles\.com/detectron2/"
        r"COCO-InstanceSegmentation/.*model_final_f10217\.pkl.*set "
        r"train\.init_checkpoint=/path/to/model_final_f10217\.pkl",
        out,
    )


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_resume_with_a_corrupt_last_checkpoint(damage, base_args, capfd):
    out, overrides = base_args
    argv = [
        "--config-file",
        DEMO_CONFIG,
        *overrides,
        "train.max_iter=2",
        "lr_multiplier.steps=[1]",
        "train.checkpointer.period=1",
        "train.eval_after_train=False",
    ]
    args = train_net.argument_parser().parse_args(argv)
    train_net.main(args)
    with open(os.path.join(out, "last_checkpoint")) as f:
        named = os.path.join(out, f.read().strip())
    if damage == "missing":
        os.remove(named)
    else:
        data = open(named, "rb").read()
        open(named, "wb").write(data[: len(data) // 3])
    capfd.readouterr()
    code, err = run_main(["--resume", *argv, "train.max_iter=4"], capfd)
    assert code == 2 and "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert (
        f"Cannot resume: {out}/last_checkpoint names model_final.pth, which cannot be loaded"
        in last
    )
    assert "Other checkpoints here: model_0000000.pth" in last
    assert "write its name into last_checkpoint" in last and "without --resume" in last


def test_more_gpus_than_the_machine_has(base_args, capfd, monkeypatch):
    import torch

    out, overrides = base_args
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    code, err = run_main(
        [
            "--num-gpus",
            "4",
            "--config-file",
            DEMO_CONFIG,
            *overrides,
            "train.device=cpu",
            "dataloader.train.total_batch_size=4",
        ],
        capfd,
    )
    assert_reported(code, err, r"--num-gpus 4 but this machine has 1 GPU\(s\)", out)
