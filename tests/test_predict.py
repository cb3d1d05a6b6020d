"""scripts/predict.py: pictures and JSON for a folder of images."""

import json
import os
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from d2_finetune.data import CITYSCAPES_THING_CLASSES

from conftest import DEMO_CONFIG, REPO, tiny_overrides

PREDICT = os.path.join(REPO, "scripts", "predict.py")


def test_predict_writes_pictures_and_json_for_a_folder(cityscapes_root, tiny_init, tmp_path):
    images = os.path.join(cityscapes_root, "cityscapes", "leftImg8bit", "val")
    out = tmp_path / "pred"
    overrides = tiny_overrides(
        cityscapes_root, str(tmp_path / "run"), **{"train.init_checkpoint": tiny_init}
    )
    # A random head predicts little above 0.5: show everything so the JSON has content.
    proc = subprocess.run(
        [
            sys.executable,
            PREDICT,
            "--config-file",
            DEMO_CONFIG,
            "--input",
            images,
            "--output",
            str(out),
            "--confidence",
            "0",
            *overrides,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    inputs = sorted(
        os.path.relpath(os.path.join(d, f), images) for d, _, fs in os.walk(images) for f in fs
    )
    assert len(inputs) == 3
    total = 0
    for rel in inputs:
        stem = os.path.join(out, os.path.splitext(rel)[0])
        with Image.open(stem + ".png") as im:
            assert im.size == Image.open(os.path.join(images, rel)).size
        with open(stem + ".json") as f:
            record = json.load(f)
        assert record["height"] == 128 and record["width"] == 256
        total += len(record["instances"])
        for inst in record["instances"]:
            assert inst["class"] in CITYSCAPES_THING_CLASSES
            assert 0 <= inst["score"] <= 1
            mask = mask_util.decode(inst["segmentation"])
            assert mask.shape == (128, 256) and mask.dtype == np.uint8
    assert total > 0


def test_predict_refuses_a_missing_input(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            PREDICT,
            "--config-file",
            DEMO_CONFIG,
            "--input",
            str(tmp_path / "nope"),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2
    assert f"--input {tmp_path / 'nope'}: no such file or folder" in proc.stderr


def test_predict_refuses_a_folder_without_images(tmp_path):
    (tmp_path / "empty").mkdir()
    proc = subprocess.run(
        [
            sys.executable,
            PREDICT,
            "--config-file",
            DEMO_CONFIG,
            "--input",
            str(tmp_path / "empty"),
            "--output",
            str(tmp_path / "o"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2
    assert f"--input {tmp_path / 'empty'}: no images (.png, .jpg" in proc.stderr
    assert not (tmp_path / "o").exists()


def test_predict_refuses_a_confidence_outside_0_1(cityscapes_root, tmp_path):
    images = os.path.join(cityscapes_root, "cityscapes", "leftImg8bit", "val")
    proc = subprocess.run(
        [
            sys.executable,
            PREDICT,
            "--config-file",
            DEMO_CONFIG,
            "--input",
            images,
            "--output",
            str(tmp_path / "o"),
            "--confidence",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 2
    assert "--confidence must be between 0 and 1, got 2.0." in proc.stderr
