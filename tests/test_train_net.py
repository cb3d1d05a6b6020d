"""scripts/train_net.py as users run it: a subprocess with a config file and overrides."""

import os
import subprocess
import sys

import pytest
import yaml

from conftest import (
    DEMO_CONFIG,
    REPO,
    assert_one_error_line,
    from_first_checkpoint,
    logged_sampler_seed,
    run_script,
    tiny_overrides,
)

TRAIN_NET = os.path.join(REPO, "scripts", "train_net.py")


def run(args, check=True, timeout=300):
    return run_script("train_net", args, timeout=timeout, check=check)


@pytest.fixture(scope="module")
def trained(cityscapes_root, tiny_init, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "run")
    overrides = tiny_overrides(
        cityscapes_root,
        out,
        **{
            "train.init_checkpoint": tiny_init,
            "train.max_iter": 2,
            "lr_multiplier.steps": [1],
        },
    )
    proc = run(["--config-file", DEMO_CONFIG, *overrides])
    return out, overrides, proc


def test_training_run_saves_config_weights_and_logs(trained):
    out, _, proc = trained
    log = proc.stdout + proc.stderr
    assert "Starting training from iteration 0" in log
    assert "eta:" in log  # detectron2's progress line with ETA
    files = set(os.listdir(out))
    assert {"config.yaml", "model_final.pth", "metrics.json", "log.txt"} <= files
    with open(os.path.join(out, "config.yaml")) as f:
        saved = yaml.unsafe_load(f)
    assert saved["train"]["max_iter"] == 2
    assert saved["model"]["roi_heads"]["num_classes"] == 8
    assert saved["train"]["device"] == "cpu"


def test_resume_continues_from_the_last_checkpoint(trained):
    out, overrides, _ = trained
    proc = run(["--config-file", DEMO_CONFIG, "--resume", *overrides, "train.max_iter=3"])
    log = proc.stdout + proc.stderr
    assert "Starting training from iteration 2" in log
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"


def test_eval_only_reports_cityscapes_ap(trained, tmp_path):
    out, overrides, _ = trained
    proc = run(
        [
            "--config-file",
            DEMO_CONFIG,
            "--eval-only",
            *overrides,
            f"train.init_checkpoint={out}/model_final.pth",
            f"train.output_dir={tmp_path}",
        ]
    )
    log = proc.stdout + proc.stderr
    for task in ("cityscapes", "coco/bbox", "coco/segm"):
        assert f"copypaste: Task: {task}" in log
    assert "| average" in log


def test_a_missing_config_file_is_one_clear_line():
    proc = run(["--config-file", "configs/cityscape_ft.py"], check=False)
    assert proc.returncode == 2
    assert "ERROR: Config file not found: configs/cityscape_ft.py" in proc.stderr
    assert "Did you mean configs/cityscapes_ft.py" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_shows_the_traceback():
    proc = run(["--config-file", "configs/cityscape_ft.py", "--debug"], check=False)
    assert proc.returncode != 0
    assert "Traceback" in proc.stderr and "ConfigError" in proc.stderr


def test_divergence_stops_with_the_iteration_losses_and_last_good_checkpoint(trained, tmp_path):
    import shutil

    import torch

    out = str(tmp_path / "nan")
    trained_out, trained_overrides, _ = trained
    shutil.copytree(trained_out, out)
    overrides = trained_overrides + [f"train.output_dir={out}"]
    good = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)
    proc = run(
        [
            "--config-file",
            DEMO_CONFIG,
            "--resume",
            *overrides,
            "train.max_iter=12",
            "lr_multiplier.steps=[11]",
            "optimizer.lr=1e12",
        ],
        check=False,
    )
    last = assert_one_error_line(proc, r"^ERROR: Training diverged at iteration \d+ ")
    assert "NaN/Inf" in last and "loss" in last
    assert "Lower optimizer.lr" in last and "--resume" in last
    with open(os.path.join(out, "last_checkpoint")) as f:
        named = f.read().strip()
    assert named in last
    kept = torch.load(os.path.join(out, named), weights_only=True)
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())
    if named == "model_final.pth":
        assert all(torch.equal(kept["model"][k], v) for k, v in good["model"].items())


def start(args, log_file):
    return subprocess.Popen(
        [sys.executable, TRAIN_NET, *args], stdout=log_file, stderr=subprocess.STDOUT
    )


def kill_when(proc, condition, timeout=300):
    """SIGKILL ``proc`` as soon as ``condition()`` holds; False if it ended first."""
    import signal
    import time

    deadline = time.time() + timeout
    while proc.poll() is None and time.time() < deadline:
        if condition():
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.001)
    return False


def test_killed_runs_resume_to_the_same_weights(cityscapes_root, tiny_init, tmp_path):
    """The default random seed (train.seed=-1), SIGKILL inside a checkpoint write and between
    checkpoints; each --resume goes on from the last complete checkpoint, and the run ends with
    the weights of an uninterrupted run from the same start: the data order (the sampler's
    seed) and the random streams come back from the checkpoint."""
    import glob

    import torch

    def overrides(out):
        return tiny_overrides(
            cityscapes_root,
            out,
            **{
                "train.init_checkpoint": tiny_init,
                "train.seed": -1,
                "train.max_iter": 6,
                "lr_multiplier.steps": [4],
                "train.checkpointer.period": 1,
                "train.checkpointer.max_to_keep": 20,
                "train.eval_after_train": False,
            },
        )

    out = str(tmp_path / "killed")
    args = ["--config-file", DEMO_CONFIG, "--resume", *overrides(out)]

    def iteration_done(n):
        return lambda: os.path.isfile(os.path.join(out, f"model_{n:07d}.pth"))

    def writing_after(n):
        return lambda: iteration_done(n)() and glob.glob(os.path.join(out, "*.pth.*.tmp"))

    caught_mid_write = False
    with open(tmp_path / "log.txt", "w") as log:
        for condition in (writing_after(1), iteration_done(3)):
            proc = start(args, log)
            assert kill_when(proc, condition), "the run ended before it could be killed"
            with open(os.path.join(out, "last_checkpoint")) as f:
                named = f.read().strip()
            torch.load(os.path.join(out, named), weights_only=True)  # complete and readable
            caught_mid_write |= bool(glob.glob(os.path.join(out, "*.pth.*.tmp")))
    assert caught_mid_write
    seed = logged_sampler_seed(tmp_path / "log.txt")
    resume_from = torch.load(os.path.join(out, named), weights_only=True)["iteration"] + 1
    assert resume_from >= 3
    proc = run(args)
    assert f"Starting training from iteration {resume_from}" in proc.stdout + proc.stderr
    assert f"Continuing the data order of sampler seed {seed} " in proc.stdout
    assert not glob.glob(os.path.join(out, "*.tmp"))

    # The uninterrupted run: from the first checkpoint of the same run, in a folder of its own.
    reference = from_first_checkpoint(out, tmp_path / "reference")
    straight = run(["--config-file", DEMO_CONFIG, "--resume", *overrides(reference)])
    assert f"Continuing the data order of sampler seed {seed} " in straight.stdout
    assert "Starting training from iteration 1" in straight.stdout + straight.stderr

    final, expected = (
        torch.load(os.path.join(folder, "model_final.pth"), weights_only=True)
        for folder in (out, reference)
    )
    assert final["iteration"] == expected["iteration"] == 5
    for key, value in expected["model"].items():
        assert torch.equal(final["model"][key], value), key


def snapshot(folder):
    return {os.path.join(d, f) for d, _, fs in os.walk(folder) for f in fs}


def test_eval_only_and_predict_write_only_inside_their_output_dirs(trained, tmp_path):
    """Run from an empty working directory with a private TMPDIR: afterwards both hold only
    what they held before (the output folders live elsewhere)."""
    out, overrides, _ = trained
    cwd, tmp = tmp_path / "cwd", tmp_path / "tmp"
    cwd.mkdir()
    tmp.mkdir()
    env = dict(os.environ, TMPDIR=str(tmp))
    evaluation, pictures = tmp_path / "eval_out", tmp_path / "pred_out"
    weights = f"train.init_checkpoint={out}/model_final.pth"
    before = snapshot(cwd) | snapshot(tmp) | snapshot(out)
    subprocess.run(
        [
            sys.executable,
            TRAIN_NET,
            "--config-file",
            DEMO_CONFIG,
            "--eval-only",
            *overrides,
            weights,
            f"train.output_dir={evaluation}",
        ],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    images = os.path.join(overrides[0].split("=", 1)[1], "cityscapes", "leftImg8bit", "val")
    subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "predict.py"),
            "--config-file",
            DEMO_CONFIG,
            "--input",
            images,
            "--output",
            str(pictures),
            *overrides,
            weights,
        ],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert snapshot(cwd) | snapshot(tmp) | snapshot(out) == before
    assert (evaluation / "inference" / "cityscapes_instance_results.json").is_file()
    assert (evaluation / "inference_weights.json").is_file()
    assert (pictures / "inference_weights.json").is_file()
    assert len(list(pictures.rglob("*.json"))) == 4


# ---- bad input met after training started: one ERROR line, no traceback, on both streams ----


def test_a_corrupt_image_met_in_training_is_one_error_line(cityscapes_root, tiny_init, tmp_path):
    """docs/errors.md row 33: the image is read by the loader once training runs."""
    import shutil

    root = tmp_path / "corrupt"
    shutil.copytree(cityscapes_root, root)
    for image in sorted((root / "cityscapes" / "leftImg8bit" / "train").rglob("*.png"))[:2]:
        image.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    overrides = tiny_overrides(
        str(root), str(tmp_path / "run"), **{"train.init_checkpoint": tiny_init}
    )
    proc = run(["--config-file", DEMO_CONFIG, *overrides], check=False)
    assert "Starting training from iteration 0" in proc.stdout
    assert_one_error_line(
        proc, r"^ERROR: Cannot use image .*_leftImg8bit\.png: OpenCV cannot decode it"
    )
    with open(tmp_path / "run" / "log.txt") as f:
        assert "ERROR: Cannot use image " in f.read()  # the log keeps the error too


def test_a_mask_that_does_not_fit_its_image_is_one_error_line(tmp_path):
    """docs/errors.md row 42: an RLE mask whose runs do not cover its stated size, in a COCO-json
    dataset (the demo's stand-in config), is met by the loader during training."""
    import json

    import pycocotools.mask as mask_util

    from d2_finetune.demo.synthetic import make_coco

    splits = {}
    for split in ("train", "val"):
        json_file, images = make_coco(str(tmp_path / split), num_images=2, size=(128, 64), seed=1)
        splits[split] = (json_file, images)
    json_file = splits["train"][0]
    with open(json_file) as f:
        data = json.load(f)
    for ann in data["annotations"]:
        rle = mask_util.frPyObjects(ann["segmentation"], 64, 128)
        rle = mask_util.merge(rle) if isinstance(rle, list) else rle
        ann["segmentation"] = {"size": [64, 129], "counts": rle["counts"].decode()}
    with open(json_file, "w") as f:
        json.dump(data, f)
    standin = os.path.join(REPO, "configs", "demo", "coco_standin.py")
    overrides = [
        f"dataloader.register.0.json_file={json_file}",
        f"dataloader.register.0.image_root={splits['train'][1]}",
        f"dataloader.register.1.json_file={splits['val'][0]}",
        f"dataloader.register.1.image_root={splits['val'][1]}",
        f"train.output_dir={tmp_path / 'run'}",
        "train.init_checkpoint=''",
        "train.device=cpu",
        "train.max_iter=2",
        "lr_multiplier.steps=[1]",
        "lr_multiplier.warmup_iters=1",
        "dataloader.train.num_workers=0",
    ]
    proc = run(["--config-file", standin, *overrides], check=False)
    assert "Starting training from iteration 0" in proc.stdout
    assert_one_error_line(
        proc,
        r"^ERROR: Cannot use the masks of .*000000000000\.jpg: its RLE runs "
        r"cover \d+ pixels, not the 64x129 of its size",
    )


def test_an_unreadable_best_record_on_resume_is_one_error_line(trained, tmp_path):
    """docs/errors.md row 51, through the command line."""
    import shutil

    out, overrides, _ = trained
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    (copy / "model_best.json").write_text('{"metric": "cityscapes/AP", "val')
    proc = run(
        [
            "--config-file",
            DEMO_CONFIG,
            "--resume",
            *overrides,
            f"train.output_dir={copy}",
            "train.max_iter=4",
            "lr_multiplier.steps=[3]",
        ],
        check=False,
    )
    assert_one_error_line(
        proc,
        rf"^ERROR: Cannot read the best-checkpoint record {copy}/model_best\.json "
        r"\(JSONDecodeError: .*\)\. Restore it, or delete it",
    )


def test_a_training_set_without_usable_images_is_one_error_line(tiny_init, tmp_path):
    """docs/errors.md row 38: every training image has only crowd regions or no instance, so
    training keeps none; the message says why and what to change (detectron2 would assert)."""
    from d2_finetune.demo.synthetic import make_cityscapes

    root = str(tmp_path / "data")
    make_cityscapes(
        root,
        {"train": 2, "val": 1},
        size=(256, 128),
        seed=0,
        objects_per_image=(0, 0),
        group_prob=0.5,
    )
    overrides = tiny_overrides(root, str(tmp_path / "run"), **{"train.init_checkpoint": tiny_init})
    proc = run(["--config-file", DEMO_CONFIG, *overrides], check=False)
    assert_one_error_line(
        proc,
        r"^ERROR: The training dataset cityscapes_ft_instance_train has no images "
        r"left after filtering: .*Check its annotations, or set "
        r"dataloader\.train\.dataset\.filter_empty=False\.$",
    )
