"""scripts/predict.py: pictures and JSON for a folder of images."""

import json
import os
import subprocess
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image

from d2_finetune.data import CITYSCAPES_THING_CLASSES

from conftest import DEMO_CONFIG, REPO, load_script, tiny_overrides

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


@pytest.mark.parametrize(
    "case, message",
    [
        ("missing", "--input {input}: no such file or folder"),
        ("empty", "--input {input}: no images (.png, .jpg"),
        ("confidence", "--confidence must be between 0 and 1, got 2.0."),
    ],
    ids=["missing input", "folder without images", "confidence outside 0-1"],
)
def test_predict_refuses_bad_input_with_one_error_line(
    case, message, cityscapes_root, tmp_path, monkeypatch, capsys
):
    inputs = {
        "missing": tmp_path / "nope",
        "empty": tmp_path / "empty",
        "confidence": os.path.join(cityscapes_root, "cityscapes", "leftImg8bit", "val"),
    }
    (tmp_path / "empty").mkdir()
    argv = ["--config-file", DEMO_CONFIG, "--input", str(inputs[case]), "--output"]
    argv += [str(tmp_path / "o"), "--confidence", "2" if case == "confidence" else "0.5"]
    monkeypatch.setattr(sys, "argv", ["predict.py", *argv])
    with pytest.raises(SystemExit) as exit_info:
        load_script("predict").main()
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("ERROR: ") and err.count("\n") == 1, err
    assert message.format(input=inputs[case]) in err
    assert not (tmp_path / "o").exists()
