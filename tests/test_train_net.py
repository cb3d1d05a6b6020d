"""scripts/train_net.py as users run it: a subprocess with a config file and overrides."""
import os
import subprocess
import sys

import pytest
import yaml

from conftest import DEMO_CONFIG, REPO, tiny_overrides

TRAIN_NET = os.path.join(REPO, "scripts", "train_net.py")


def run(args, check=True):
    proc = subprocess.run([sys.executable, TRAIN_NET, *args], capture_output=True, text=True,
                          timeout=600)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


@pytest.fixture(scope="module")
def trained(cityscapes_root, tiny_init, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cli") / "run")
    overrides = tiny_overrides(cityscapes_root, out, **{
        "train.init_checkpoint": tiny_init, "train.max_iter": 2, "lr_multiplier.steps": [1],
    })
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
    proc = run(["--config-file", DEMO_CONFIG, "--eval-only", *overrides,
                f"train.init_checkpoint={out}/model_final.pth", f"train.output_dir={tmp_path}"])
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
