"""d2_finetune.checkpoint.checkpointer: loading through FinetuneCheckpointer end to end: each
format's transplant, Caffe2 names, transfer.json, missing tensors strict and not, saved input
normalisation, our own checkpoints and resume, the checkpointer built from the config, and the
eval-only guard in Python and on the command line."""

import hashlib
import json
import logging
import os
import pickle
import shutil
import subprocess
import sys

import pytest
import torch
from checkpoint_support import (
    BOX,
    CITY,
    CLASS_KEYS,
    CLS,
    COCO,
    EXPECTED,
    MASK,
    assert_class_independent_loaded,
    assert_transplanted,
    build,
    coco_checkpoints,
    save_pkl,
    snapshot,
)
from torch import nn

from d2_finetune.checkpoint import FinetuneCheckpointer, fresh_tensors
from d2_finetune.engine import load_for_inference
from d2_finetune.engine.weights import build_checkpointer
from d2_finetune.errors import CheckpointError

from conftest import DEMO_CONFIG, REPO, tiny_overrides


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return coco_checkpoints(tmp_path_factory)


@pytest.mark.parametrize(
    "fmt,label",
    [("pkl", "detectron2 model-zoo pkl"), ("pth", "detectron2 pth"), ("state_dict", "state dict")],
)
def test_each_format_transplants_the_seven_shared_classes(coco, tmp_path, fmt, label):
    model = build()
    before = snapshot(model)
    report = FinetuneCheckpointer(model, str(tmp_path), target_classes=CITY).load(coco[fmt])

    assert report["format"] == label
    assert report["class_map"] == {**{c: EXPECTED.get(c) for c in CITY}}
    assert_class_independent_loaded(model, coco["state"])
    assert_transplanted(model, before, coco["state"], EXPECTED)
    assert fresh_tensors(report) == CLASS_KEYS
    assert report["reinitialized"] == [] and report["ignored"] == []


def test_transfer_json_records_the_load(coco, tmp_path):
    model = build()
    report = FinetuneCheckpointer(model, str(tmp_path), target_classes=CITY).load(coco["pkl"])
    with open(tmp_path / "transfer.json") as f:
        record = json.load(f)
    assert record == json.loads(json.dumps(report))

    with open(coco["pkl"], "rb") as f:
        assert record["sha256"] == hashlib.sha256(f.read()).hexdigest()
    assert record["source"] == coco["pkl"]
    assert record["format"] == "detectron2 model-zoo pkl"
    assert record["source_classes_from"] == "COCO (80-class head)"
    assert record["source_classes"] == COCO and record["target_classes"] == CITY
    assert record["class_map"]["rider"] is None and record["class_map"]["car"] == "car"

    entries = {e["key"]: e for e in record["transplanted"]}
    assert sorted(entries) == sorted(CLASS_KEYS)
    pairs = [(CITY.index(t), COCO.index(s)) for t, s in EXPECTED.items()]
    cls = entries[CLS + "weight"]
    assert cls["source_shape"] == [81, 256] and cls["shape"] == [9, 256]
    assert cls["rows"] == sorted([[t, s] for t, s in pairs] + [[8, 80]])
    assert cls["fresh_rows"] == [1]
    box = entries[BOX + "bias"]
    assert box["rows"] == sorted([4 * t + j, 4 * s + j] for t, s in pairs for j in range(4))
    assert box["fresh_rows"] == [4, 5, 6, 7]
    mask = entries[MASK + "weight"]
    assert mask["shape"] == [8, 64, 1, 1] and mask["fresh_rows"] == [1]
    loaded = {e["key"]: e["shape"] for e in record["loaded"]}
    assert len(loaded) == len(coco["state"]) - len(CLASS_KEYS)
    assert loaded["backbone.bottom_up.stem.conv1.weight"] == [64, 3, 7, 7]
    assert record["reinitialized"] == [] and record["ignored"] == []


def _caffe2_name(key):
    """Detectron2 ResNet names -> the Caffe2 names of detectron2's ImageNet ``R-*.pkl`` files."""
    parts = key.split(".")[2:]
    if parts[0] == "stem":
        layer, rest = "res_conv1" if parts[2] == "norm" else "conv1", parts[2:]
    else:
        branch = {
            "conv1": "branch2a",
            "conv2": "branch2b",
            "conv3": "branch2c",
            "shortcut": "branch1",
        }[parts[2]]
        layer, rest = f"{parts[0]}_{parts[1]}_{branch}", parts[3:]
    if rest[0] == "norm":
        suffix = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}[rest[1]]
        return f"{layer}_bn_{suffix}" if layer != "res_conv1" else f"res_conv1_bn_{suffix}"
    return f"{layer}_{'w' if rest[0] == 'weight' else 'b'}"


def test_caffe2_imagenet_backbone_by_detectron2_name_matching(coco, tmp_path):
    backbone = {k: v for k, v in coco["state"].items() if k.startswith("backbone.bottom_up.")}
    path = tmp_path / "R-18.pkl"
    with open(path, "wb") as f:
        pickle.dump({_caffe2_name(k): v.numpy() for k, v in backbone.items()}, f)

    model = build()
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint \(\d+\): backbone.fpn"):
        FinetuneCheckpointer(model, target_classes=CITY).load(str(path))
    report = FinetuneCheckpointer(model, target_classes=CITY, strict=False).load(str(path))
    assert report["format"] == "caffe2 pkl"
    assert sorted(e["key"] for e in report["loaded"]) == sorted(backbone)
    for key, value in backbone.items():
        assert torch.equal(model.state_dict()[key], value)


def test_missing_backbone_key_strict_and_not(coco, tmp_path):
    state = dict(coco["state"])
    missing = "backbone.bottom_up.res3.0.conv1.weight"
    del state[missing]
    path = save_pkl(tmp_path / "no_res3.pkl", state)

    model = build()
    before = snapshot(model)
    with pytest.raises(CheckpointError) as error:
        FinetuneCheckpointer(model, target_classes=CITY).load(path)
    text = str(error.value)
    assert "no_res3.pkl" in text and f"missing from the checkpoint (1): {missing}" in text
    assert "train.strict_transfer=False" in text
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    report = FinetuneCheckpointer(model, target_classes=CITY, strict=False).load(path)
    assert report["reinitialized"] == [
        {
            "key": missing,
            "source_shape": None,
            "shape": [128, 64, 3, 3],
            "reason": "not in the checkpoint",
        }
    ]
    assert torch.equal(model.state_dict()[missing], before[missing])
    assert_class_independent_loaded(model, coco["state"], skip=(missing,))
    assert_transplanted(model, before, coco["state"], EXPECTED)


MSRA_MEAN, MSRA_STD = [103.53, 116.28, 123.675], [1.0, 1.0, 1.0]  # the demo config's


@pytest.mark.parametrize("shape", [(3, 1, 1), (3,)])
def test_saved_input_normalisation_equal_to_the_config_loads(coco, tmp_path, shape):
    """Checkpoints of detectron2 versions that kept pixel_mean/pixel_std with the weights (and
    converters' output) load; the values are the config's, so they are recorded as ignored.
    The obsolete anchor buffers stay ignored too."""
    state = dict(coco["state"])
    state["pixel_mean"] = torch.tensor(MSRA_MEAN).reshape(shape)
    state["pixel_std"] = torch.tensor(MSRA_STD).reshape(shape)
    state["proposal_generator.anchor_generator.cell_anchors.0"] = torch.zeros(3, 4)
    path = save_pkl(tmp_path / "with_pixel_stats.pkl", state)
    model = build()
    before = snapshot(model)
    report = FinetuneCheckpointer(model, str(tmp_path), target_classes=CITY).load(path)
    reasons = {e["key"]: e["reason"] for e in report["ignored"]}
    assert reasons == {
        "pixel_mean": "the same as the config's model.pixel_mean",
        "pixel_std": "the same as the config's model.pixel_std",
        "proposal_generator.anchor_generator.cell_anchors.0": (
            "obsolete anchor buffer (recomputed from the config)"
        ),
    }
    assert_class_independent_loaded(model, coco["state"])
    assert_transplanted(model, before, coco["state"], EXPECTED)
    assert model.pixel_mean.flatten().tolist() == pytest.approx(MSRA_MEAN)


def test_saved_input_normalisation_that_differs_from_the_config(coco, tmp_path, caplog):
    """Weights trained on RGB inputs scaled by torchvision's std, loaded under the MSRA config:
    an error naming both normalisations and the overrides that match the weights, before the
    model is touched; with strict_transfer=False a warning, and the config's values stay."""
    state = dict(coco["state"])
    state["pixel_mean"] = torch.tensor([123.675, 116.28, 103.53]).reshape(3, 1, 1)
    state["pixel_std"] = torch.tensor([58.395, 57.12, 57.375]).reshape(3, 1, 1)
    path = save_pkl(tmp_path / "rgb.pkl", state)
    model = build()
    before = snapshot(model)
    with pytest.raises(CheckpointError) as error:
        FinetuneCheckpointer(model, target_classes=CITY).load(path)
    assert str(error.value) == (
        f"{path} was trained on inputs normalised with model.pixel_mean=[123.675,116.28,103.53] "
        "model.pixel_std=[58.395,57.12,57.375], but the config has model.pixel_mean=[103.53,"
        "116.28,123.675] model.pixel_std=[1,1,1]: the model would see inputs normalised otherwise "
        "than in its training. Set model.pixel_mean=[123.675,116.28,103.53] and "
        "model.pixel_std=[58.395,57.12,57.375] (with the model.input_format the weights were "
        "trained with), or set train.strict_transfer=False to keep the config's values."
    )
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())

    with caplog.at_level(logging.WARNING, logger="d2_finetune"):
        report = FinetuneCheckpointer(model, target_classes=CITY, strict=False).load(path)
    assert "was trained on inputs normalised with model.pixel_mean=[123.675," in caplog.text
    assert {e["key"]: e["reason"] for e in report["ignored"]} == {
        "pixel_mean": "differs from the config's model.pixel_mean=[103.53, 116.28, 123.675]",
        "pixel_std": "differs from the config's model.pixel_std=[1.0, 1.0, 1.0]",
    }
    assert_class_independent_loaded(model, coco["state"])
    assert model.pixel_std.flatten().tolist() == MSRA_STD

    # With the overrides the message names, the same file loads without a word.
    model = build(
        "model.pixel_mean=[123.675,116.28,103.53]", "model.pixel_std=[58.395,57.12,57.375]"
    )
    report = FinetuneCheckpointer(model, target_classes=CITY).load(path)
    assert [e["reason"] for e in report["ignored"]] == [
        "the same as the config's model.pixel_mean",
        "the same as the config's model.pixel_std",
    ]


def test_own_checkpoint_and_resume_load_everything(coco, tmp_path):
    out = str(tmp_path / "run")
    model = build()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    checkpointer = FinetuneCheckpointer(model, out, target_classes=CITY, optimizer=optimizer)
    checkpointer.resume_or_load(coco["pkl"], resume=True)
    first_record = (tmp_path / "run" / "transfer.json").read_text()
    sum(p.sum() for p in model.parameters() if p.requires_grad).backward()
    optimizer.step()
    checkpointer.save("model_0000001", iteration=1)
    saved = torch.load(os.path.join(out, "model_0000001.pth"), weights_only=True)
    assert saved["thing_classes"] == CITY

    resumed = build()
    optimizer2 = torch.optim.SGD(resumed.parameters(), lr=0.1, momentum=0.9)
    checkpointer = FinetuneCheckpointer(resumed, out, target_classes=CITY, optimizer=optimizer2)
    report = checkpointer.resume_or_load(coco["pkl"], resume=True)
    assert report["resumed"] is True and report["source"].endswith("model_0000001.pth")
    assert len(report["loaded"]) == len(saved["model"])
    assert report["transplanted"] == report["reinitialized"] == report["ignored"] == []
    assert fresh_tensors(report) == []
    for key, value in saved["model"].items():
        assert torch.equal(resumed.state_dict()[key], value)
    assert optimizer2.state_dict()["state"].keys() == optimizer.state_dict()["state"].keys()
    assert (tmp_path / "run" / "transfer.json").read_text() == first_record
    with open(tmp_path / "run" / "transfer_resume.json") as f:
        assert json.load(f)["resumed"] is True

    no_names = build()
    report = FinetuneCheckpointer(no_names).load(os.path.join(out, "model_0000001.pth"))
    assert fresh_tensors(report) == [] and len(report["loaded"]) == len(saved["model"])


def test_resume_from_a_checkpoint_of_other_classes_is_refused(coco, tmp_path):
    shutil.copy(coco["pth"], tmp_path / "model_0000009.pth")
    (tmp_path / "last_checkpoint").write_text("model_0000009.pth")
    with pytest.raises(CheckpointError, match=r"Cannot resume from .*model_0000009.pth: it does"):
        FinetuneCheckpointer(build(), str(tmp_path), target_classes=CITY).resume_or_load(
            "", resume=True
        )


def test_the_checkpointer_is_built_from_the_config(tiny_cfg):
    cfg = tiny_cfg()
    checkpointer = build_checkpointer(cfg, nn.Linear(2, 2))
    assert checkpointer.target_classes == CITY
    assert checkpointer.class_map == "auto" and checkpointer.strict is True
    assert checkpointer.class_synonyms == {}  # Cityscapes' names are COCO's
    cfg = tiny_cfg(**{"train.strict_transfer": False})
    cfg.train.class_map = {"rider": "person"}
    checkpointer = build_checkpointer(cfg, nn.Linear(2, 2))
    assert checkpointer.class_map == {"rider": "person"} and checkpointer.strict is False
    cfg = tiny_cfg(**{"train.class_map": None})
    assert build_checkpointer(cfg, nn.Linear(2, 2)).class_map is None
    cfg = tiny_cfg()
    cfg.train.class_init = {"rider": "person"}
    checkpointer = build_checkpointer(cfg, nn.Linear(2, 2))
    assert checkpointer.class_init == {"rider": "person"} and checkpointer.image_format == "BGR"


def test_eval_only_guard(coco, tiny_cfg, tmp_path, monkeypatch):
    cfg = tiny_cfg(**{"train.init_checkpoint": coco["pkl"]})
    with pytest.raises(CheckpointError) as error:
        load_for_inference(cfg)
    text = str(error.value)
    assert f"{coco['pkl']} does not fit this model" in text
    assert "classes without a source: rider" in text and "random head" in text

    model = build()
    own = FinetuneCheckpointer(model, str(tmp_path), target_classes=CITY)
    own.save("model_final")
    cfg = tiny_cfg(**{"train.init_checkpoint": str(tmp_path / "model_final.pth")})
    loaded = load_for_inference(cfg)
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)


def test_eval_only_command_line_stops_with_a_clear_error(coco, cityscapes_root, tmp_path):
    overrides = tiny_overrides(
        cityscapes_root, str(tmp_path), **{"train.init_checkpoint": coco["pkl"]}
    )
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "train_net.py"),
            "--config-file",
            DEMO_CONFIG,
            "--eval-only",
            *overrides,
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "ERROR: " in result.stderr and "random head" in result.stderr
    assert "classes without a source: rider" in result.stderr
