"""FinetuneCheckpointer: formats, strictness, the class transplant, the record, safety.

The source checkpoints are real detectron2 Mask R-CNN models (the demo's small architecture)
with COCO's 80 classes, filled with seeded random values, so every transplanted row is
distinguishable from every other and from the target's fresh initialisation.
"""

import hashlib
import json
import logging
import os
import pickle
import shutil
import socket
import subprocess
import sys
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from torch import nn

from detectron2.config import instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

from d2_finetune.checkpoint import (
    FinetuneCheckpointer,
    class_layers,
    coco_thing_classes,
    fresh_tensors,
    match_classes,
)
from d2_finetune.config import load_config
from d2_finetune.data import CITYSCAPES_THING_CLASSES
from d2_finetune.data.kitti import COCO_SYNONYMS as KITTI_SYNONYMS
from d2_finetune.data.voc import COCO_SYNONYMS as VOC_SYNONYMS
from d2_finetune.engine import load_for_inference
from d2_finetune.engine.weights import build_checkpointer
from d2_finetune.errors import CheckpointError, ConfigError

from conftest import DEMO_CONFIG, REPO, tiny_overrides

CITY = list(CITYSCAPES_THING_CLASSES)
COCO = coco_thing_classes()
# Cityscapes class -> COCO class it must start from (rider: none).
EXPECTED = {
    "person": "person",
    "car": "car",
    "truck": "truck",
    "bus": "bus",
    "train": "train",
    "motorcycle": "motorcycle",
    "bicycle": "bicycle",
}
CLS = "roi_heads.box_predictor.cls_score."
BOX = "roi_heads.box_predictor.bbox_pred."
MASK = "roi_heads.mask_head.predictor."
CLASS_KEYS = [p + s for p in (CLS, BOX, MASK) for s in ("weight", "bias")]
AGNOSTIC = [
    "model.roi_heads.box_predictor.cls_agnostic_bbox_reg=True",
    "model.roi_heads.mask_head.num_classes=1",
]


def build(*overrides, seed=None, config=DEMO_CONFIG):
    """The demo architecture (8 Cityscapes classes unless overridden); ``seed`` fills every
    tensor with seeded random values."""
    torch.manual_seed(0)
    model = instantiate(load_config(config, list(overrides)).model)
    if seed is not None:
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for value in model.state_dict().values():
                value.copy_(torch.randn(value.shape, generator=generator))
    return model


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def save_pkl(path, state, **extra):
    with open(path, "wb") as f:
        pickle.dump(
            {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "test", **extra}, f
        )
    return str(path)


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    """An 80-class source in the three formats: model-zoo pkl, our pth, bare state dict."""
    root = tmp_path_factory.mktemp("coco_ckpt")
    state = snapshot(build("model.roi_heads.num_classes=80", seed=1))
    torch.save({"model": state, "thing_classes": COCO, "iteration": 9}, root / "model.pth")
    torch.save(state, root / "state.pth")
    return {
        "state": state,
        "root": root,
        "pkl": save_pkl(root / "model_final.pkl", state),
        "pth": str(root / "model.pth"),
        "state_dict": str(root / "state.pth"),
    }


def assert_transplanted(model, before, source, mapping, agnostic_source=False):
    """Rows of matched classes equal the source's, the others keep ``before``."""
    after = model.state_dict()
    k = len(CITY)
    for t, name in enumerate(CITY):
        s = COCO.index(mapping[name]) if mapping.get(name) else None
        for key, unit in ((CLS, 1), (BOX, 4), (MASK, 1)):
            for suffix in ("weight", "bias"):
                full = key + suffix
                rows = slice(t * unit, (t + 1) * unit)
                if s is None:
                    assert torch.equal(after[full][rows], before[full][rows]), (full, name)
                    for other in range(source[full].shape[0] // unit):
                        src_rows = source[full][other * unit : (other + 1) * unit]
                        assert not torch.equal(after[full][rows], src_rows), (full, name)
                else:
                    src = (
                        slice(0, unit)
                        if agnostic_source and key != CLS
                        else (slice(s * unit, (s + 1) * unit))
                    )
                    assert torch.equal(after[full][rows], source[full][src]), (full, name)
    for suffix in ("weight", "bias"):
        assert torch.equal(after[CLS + suffix][k], source[CLS + suffix][80]), "background row"


def assert_class_independent_loaded(model, source, skip=()):
    after = model.state_dict()
    for key, value in after.items():
        if key not in CLASS_KEYS and key not in skip:
            assert torch.equal(value, source[key]), key


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


def test_class_names_carried_by_the_checkpoint_decide_the_rows(coco, tmp_path):
    reversed_names = COCO[::-1]
    path = save_pkl(tmp_path / "reordered.pkl", coco["state"], thing_classes=reversed_names)
    model = build()
    report = FinetuneCheckpointer(model, target_classes=CITY).load(path)
    assert report["source_classes_from"] == "checkpoint"
    after = model.state_dict()
    person = 79 - COCO.index("person")
    assert torch.equal(after[CLS + "weight"][0], coco["state"][CLS + "weight"][person])
    assert torch.equal(after[MASK + "weight"][0], coco["state"][MASK + "weight"][person])


def test_inconsistent_class_names_are_an_error(coco, tmp_path):
    path = save_pkl(tmp_path / "bad_names.pkl", coco["state"], thing_classes=["person", "car"])
    with pytest.raises(CheckpointError, match=r"bad_names.pkl.*lists 2 classes.*have 80"):
        FinetuneCheckpointer(build(), target_classes=CITY).load(path)


def test_class_map_none_reinitialises_the_head(coco):
    model = build()
    before = snapshot(model)
    report = FinetuneCheckpointer(model, target_classes=CITY, class_map=None).load(coco["pkl"])
    assert report["transplanted"] == [] and report["class_map"] == {}
    assert sorted(e["key"] for e in report["reinitialized"]) == sorted(CLASS_KEYS)
    for key in CLASS_KEYS:
        assert torch.equal(model.state_dict()[key], before[key])
    assert_class_independent_loaded(model, coco["state"])


def test_explicit_class_map_overrides_the_automatic_match(coco):
    model = build()
    before = snapshot(model)
    class_map = {"Rider": "person", "truck": None}
    report = FinetuneCheckpointer(model, target_classes=CITY, class_map=class_map).load(coco["pth"])
    expected = dict(EXPECTED, rider="person", truck=None)
    assert report["class_map"] == {c: expected.get(c) for c in CITY}
    assert_transplanted(model, before, coco["state"], expected)


@pytest.mark.parametrize(
    "class_map,message",
    [
        ({"cyclist": "person"}, r"\['cyclist'\] are not classes of the model"),
        ({"rider": "unicorn"}, r"\['unicorn'\] are not classes of the checkpoint"),
    ],
)
def test_explicit_class_map_with_unknown_names(coco, class_map, message):
    model = build()
    before = snapshot(model)
    with pytest.raises(ConfigError, match=message):
        FinetuneCheckpointer(model, target_classes=CITY, class_map=class_map).load(coco["pkl"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


@pytest.mark.parametrize("class_map", ["automatic", ["rider"], {"rider": 3}])
def test_invalid_class_map_setting(class_map):
    with pytest.raises(ConfigError, match="train.class_map must be 'auto', None or a dict"):
        FinetuneCheckpointer(nn.Linear(2, 2), class_map=class_map)


def test_class_init_starts_a_new_class_from_a_related_one(coco):
    model = build()
    before = snapshot(model)
    report = FinetuneCheckpointer(model, target_classes=CITY, class_init={"rider": "person"}).load(
        coco["pkl"]
    )
    assert report["class_map"] == {**EXPECTED, "rider": "person"}
    assert_transplanted(model, before, coco["state"], {**EXPECTED, "rider": "person"})
    assert fresh_tensors(report) == []  # no row of the head is left at random


@pytest.mark.parametrize(
    "class_init,message",
    [
        (
            {"car": "truck"},
            r"train\.class_init=\{'car': 'truck'\}: car already starts from the "
            r"checkpoint's car; class_init is for classes the checkpoint has no "
            r"counterpart of \(train\.class_map changes a match\)\.",
        ),
        (
            {"rider": "unicorn"},
            r"train\.class_init=\{'rider': 'unicorn'\}: \['unicorn'\] are not "
            r"classes of the checkpoint",
        ),
        ({"cyclist": "person"}, r"\['cyclist'\] are not classes of the model"),
    ],
)
def test_class_init_that_cannot_be(coco, class_init, message):
    with pytest.raises(ConfigError, match=message):
        FinetuneCheckpointer(build(), target_classes=CITY, class_init=class_init).load(coco["pkl"])


@pytest.mark.parametrize("class_init", ["person", ["rider"], {"rider": None}])
def test_invalid_class_init_setting(class_init):
    with pytest.raises(
        ConfigError,
        match=r"train\.class_init must be a dict \{new class: "
        r"checkpoint class\}, e\.g\. \{rider: person\}",
    ):
        FinetuneCheckpointer(build(), class_init=class_init)


def test_model_class_count_must_match_the_data(coco):
    with pytest.raises(ConfigError, match=r"8 classes .* predicts 80: set model.roi_heads.num_cl"):
        FinetuneCheckpointer(build("model.roi_heads.num_classes=80"), target_classes=CITY).load(
            coco["pkl"]
        )


def test_class_agnostic_model_from_class_specific_checkpoint(coco):
    model = build(*AGNOSTIC)
    before = snapshot(model)
    report = FinetuneCheckpointer(model, target_classes=CITY).load(coco["pkl"])
    reinit = {e["key"]: e["reason"] for e in report["reinitialized"]}
    assert sorted(reinit) == sorted(k for k in CLASS_KEYS if not k.startswith(CLS))
    assert all("class-agnostic" in r for r in reinit.values())
    for key in reinit:
        assert torch.equal(model.state_dict()[key], before[key])
    assert [e["key"] for e in report["transplanted"]] == [CLS + "weight", CLS + "bias"]
    assert_class_independent_loaded(model, coco["state"])


def test_class_agnostic_checkpoint_into_agnostic_and_specific_models(tmp_path):
    source = snapshot(build("model.roi_heads.num_classes=80", *AGNOSTIC, seed=2))
    path = save_pkl(tmp_path / "agnostic.pkl", source)

    agnostic = build(*AGNOSTIC)
    report = FinetuneCheckpointer(agnostic, target_classes=CITY).load(path)
    assert report["reinitialized"] == []
    assert [e["key"] for e in report["transplanted"]] == [CLS + "weight", CLS + "bias"]
    for key in CLASS_KEYS[2:]:
        assert torch.equal(agnostic.state_dict()[key], source[key])

    specific = build()
    before = snapshot(specific)
    report = FinetuneCheckpointer(specific, target_classes=CITY).load(path)
    assert sorted(e["key"] for e in report["transplanted"]) == sorted(CLASS_KEYS)
    assert_transplanted(specific, before, source, EXPECTED, agnostic_source=True)


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


def test_resnet101_checkpoint_is_refused(tmp_path):
    state = build(
        "model.backbone.bottom_up.stages.depth=101", "model.roi_heads.num_classes=80"
    ).state_dict()
    torch.save({"model": state}, tmp_path / "r101.pth")
    model = build()
    before = snapshot(model)
    ours = model.state_dict()
    unexpected = [k for k in state if k not in ours]
    differ = [
        k for k in state if k in ours and k not in CLASS_KEYS and state[k].shape != ours[k].shape
    ]
    with pytest.raises(CheckpointError) as error:
        FinetuneCheckpointer(model, target_classes=CITY).load(str(tmp_path / "r101.pth"))
    text = str(error.value)
    assert text.startswith(
        f"{tmp_path / 'r101.pth'} does not fit the model outside its class-dependent layers"
    )
    assert f"shape differs ({len(differ)}): {differ[0]} (checkpoint" in text
    assert f"and {len(differ) - 6} more (all in the log)" in text
    assert (
        "backbone.bottom_up.res2.0.conv1.weight (checkpoint (64, 64, 1, 1), model "
        "(64, 64, 3, 3))" in text
    )
    assert f"not in the model ({len(unexpected)}): {unexpected[0]}, " in text
    assert "missing from the checkpoint" not in text
    assert "another architecture" in text and "train.strict_transfer=False" in text
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_the_recipe_r50_fpn_transplants_from_a_coco_r50_fpn_and_refuses_r101(tmp_path):
    """configs/cityscapes_ft.py's own model, at full size."""
    recipe = os.path.join(REPO, "configs", "cityscapes_ft.py")
    source = snapshot(build("model.roi_heads.num_classes=80", seed=2, config=recipe))
    model = build(config=recipe)
    assert model.roi_heads.box_predictor.cls_score.out_features == 9
    before = snapshot(model)
    report = FinetuneCheckpointer(model, target_classes=CITY).load(
        save_pkl(tmp_path / "model_final_f10217.pkl", source)
    )
    assert report["class_map"] == {c: EXPECTED.get(c) for c in CITY}
    assert_class_independent_loaded(model, source)
    assert_transplanted(model, before, source, EXPECTED)
    del source
    r101 = build(
        "model.backbone.bottom_up.stages.depth=101", "model.roi_heads.num_classes=80", config=recipe
    ).state_dict()
    save_pkl(tmp_path / "r101.pkl", r101)
    loaded = snapshot(model)
    with pytest.raises(
        CheckpointError,
        match=r"does not fit the model outside its "
        r"class-dependent layers: .*not in the model \(\d+\): "
        r"backbone\.bottom_up\.res4\.6\.",
    ):
        FinetuneCheckpointer(model, target_classes=CITY).load(str(tmp_path / "r101.pkl"))
    assert all(torch.equal(v, loaded[k]) for k, v in model.state_dict().items())


def _evil(kind, marker, weight):
    """A checkpoint whose unpickling would create ``marker``."""
    if kind == "system":
        call = (os.system, (f"touch {marker}",))
    else:
        call = (eval, (f"open({str(marker)!r}, 'w').close()",))

    class Payload:
        def __reduce__(self):
            return call

    return {"model": {"w": weight}, "__author__": Payload()}


@pytest.mark.parametrize(
    "kind,ext,refused",
    [
        ("system", "pkl", "posix.system"),
        ("eval", "pkl", "builtins.eval"),
        ("system", "pth", "posix.system"),
        ("eval", "pth", "eval"),  # as torch names it
    ],
)
def test_malicious_pickle_runs_nothing(tmp_path, kind, ext, refused):
    marker = tmp_path / "executed"
    path = tmp_path / f"evil.{ext}"
    if ext == "pkl":
        with open(path, "wb") as f:
            pickle.dump(_evil(kind, marker, np.zeros(2, np.float32)), f)
    else:
        torch.save(_evil(kind, marker, torch.zeros(2)), path)
    with pytest.raises(CheckpointError) as error:
        FinetuneCheckpointer(nn.Linear(2, 2)).load(str(path))
    assert not marker.exists()
    text = str(error.value)
    assert text.startswith(f"{path}: refused to load") and f"'{refused}'" in text
    assert "Nothing was executed" in text


def _small_pth(path):
    torch.save({"model": {"weight": torch.ones(2, 2), "bias": torch.ones(2)}}, path)
    return path


@pytest.mark.parametrize(
    "name,make,message",
    [
        (
            "truncated.pth",
            lambda p: p.write_bytes(_small_pth(p).read_bytes()[:300]),
            "is not a readable checkpoint",
        ),
        (
            "truncated.pkl",
            lambda p: p.write_bytes(pickle.dumps({"model": {"w": np.ones(99)}})[:200]),
            "is not a readable checkpoint",
        ),
        (
            "random.pth",
            lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
            "is not a readable checkpoint",
        ),
        (
            "random.pkl",
            lambda p: p.write_bytes(b"\x80\x04" + np.random.default_rng(1).bytes(4096)),
            "is not a readable checkpoint",
        ),
        ("empty.pth", lambda p: p.write_bytes(b""), "is empty"),
        ("notes.txt", lambda p: p.write_text("not weights\n"), "is not a readable checkpoint"),
        ("list.pkl", lambda p: p.write_bytes(pickle.dumps([1, 2])), "holds a list, not a dict"),
        (
            "strings.pkl",
            lambda p: p.write_bytes(pickle.dumps({"name": "x"})),
            "not a model checkpoint: it has the entry 'name', a str",
        ),
        (
            "strings.pth",
            lambda p: torch.save({"model": {"a": "b"}}, p),
            "not a model checkpoint: it has the entry 'a', a str",
        ),
        (
            "objects.pkl",
            lambda p: p.write_bytes(pickle.dumps({"model": {"w": np.array(["x"], object)}})),
            "not a model checkpoint: it has the entry 'w', a ndarray",
        ),
    ],
)
def test_unreadable_or_foreign_files(tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    with pytest.raises(CheckpointError) as error:
        FinetuneCheckpointer(nn.Linear(2, 2)).load(str(path))
    assert str(path) in str(error.value) and message in str(error.value)


def test_missing_local_file():
    with pytest.raises(CheckpointError, match=r"Checkpoint not found: /no/such/model.pth\. Set"):
        FinetuneCheckpointer(nn.Linear(2, 2)).load("/no/such/model.pth")


ZOO = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"


@pytest.mark.parametrize(
    "url", [f"detectron2://{ZOO}", f"https://dl.fbaipublicfiles.com/detectron2/{ZOO}"]
)
def test_url_offline_says_where_to_download(monkeypatch, tmp_path, url):
    requested = []

    def offline(request, *args, **kwargs):
        requested.append(getattr(request, "full_url", request))
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(CheckpointError) as error:
        FinetuneCheckpointer(nn.Linear(2, 2)).load(url)
    real = f"https://dl.fbaipublicfiles.com/detectron2/{ZOO}"
    assert requested == [real]
    text = str(error.value)
    assert text.startswith(f"Cannot download {real} (")
    assert "Name or service not known" in text
    assert "train.init_checkpoint=/path/to/model_final_f10217.pkl" in text


def test_numpy2_pickles_load(coco, tmp_path):
    state = {k: coco["state"][k] for k in list(coco["state"])[:3]}
    data = pickle.dumps(
        {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "np2"}, protocol=2
    )
    assert b"cnumpy.core.multiarray\n_reconstruct" in data
    path = tmp_path / "numpy2.pkl"
    path.write_bytes(data.replace(b"cnumpy.core.multiarray\n", b"cnumpy._core.multiarray\n"))
    model = build()
    report = FinetuneCheckpointer(model, target_classes=CITY, strict=False).load(str(path))
    assert [e["key"] for e in report["loaded"]] == list(state)
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value)


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


def test_match_classes_pascal_voc_and_kitti():
    voc = [
        "aeroplane",
        "bicycle",
        "bird",
        "boat",
        "bottle",
        "bus",
        "car",
        "cat",
        "chair",
        "cow",
        "diningtable",
        "dog",
        "horse",
        "motorbike",
        "person",
        "pottedplant",
        "sheep",
        "sofa",
        "train",
        "tvmonitor",
    ]
    voc_in_coco = [
        "airplane",
        "bicycle",
        "bird",
        "boat",
        "bottle",
        "bus",
        "car",
        "cat",
        "chair",
        "cow",
        "dining table",
        "dog",
        "horse",
        "motorcycle",
        "person",
        "potted plant",
        "sheep",
        "couch",
        "train",
        "tv",
    ]
    assert [COCO[i] for i in match_classes(voc, COCO, synonyms=VOC_SYNONYMS)] == voc_in_coco

    kitti = [
        "Car",
        "Van",
        "Truck",
        "Pedestrian",
        "Person_sitting",
        "Cyclist",
        "Tram",
        "Misc",
        "DontCare",
    ]
    matched = [
        COCO[i] if i is not None else None
        for i in match_classes(kitti, COCO, synonyms=KITTI_SYNONYMS)
    ]
    assert matched == ["car", "car", "truck", "person", "person", "bicycle", "train", None, None]

    assert match_classes(["MotorBike", "potted_plant", "Rider"], COCO, synonyms=VOC_SYNONYMS) == [
        COCO.index("motorcycle"),
        COCO.index("potted plant"),
        None,
    ]
    # A checkpoint with VOC's names gives them to a model with COCO's spelling.
    assert match_classes(["motorcycle", "couch"], voc, synonyms=VOC_SYNONYMS) == [
        voc.index("motorbike"),
        voc.index("sofa"),
    ]
    # Without synonyms (the checkpointer knows no dataset), names must agree.
    assert match_classes(["aeroplane", "person"], COCO) == [None, COCO.index("person")]


class _Cascade(nn.Module):
    """Cascade-style ROI heads: one FastRCNNOutputLayers per stage, plus an extra layer with
    K+1 outputs that only the shape rule can recognise."""

    def __init__(self, k):
        super().__init__()
        self.roi_heads = nn.Module()
        self.roi_heads.num_classes = k
        self.roi_heads.box_predictor = nn.ModuleList(
            FastRCNNOutputLayers(
                ShapeSpec(channels=6),
                box2box_transform=Box2BoxTransform((10, 10, 5, 5)),
                num_classes=k,
                cls_agnostic_bbox_reg=True,
            )
            for _ in range(2)
        )
        self.roi_heads.extra = nn.Linear(6, k + 1)
        self.backbone = nn.Linear(3, 6)


def test_cascade_stages_and_the_shape_rule(tmp_path):
    torch.manual_seed(0)
    source = _Cascade(80)
    path = tmp_path / "cascade.pth"
    torch.save({"model": source.state_dict(), "thing_classes": COCO}, path)
    model = _Cascade(8)
    assert sorted(class_layers(model)) == [
        f"roi_heads.box_predictor.{i}.{n}" for i in (0, 1) for n in ("bbox_pred", "cls_score")
    ]
    report = FinetuneCheckpointer(model, target_classes=CITY).load(str(path))
    assert [e["key"] for e in report["reinitialized"]] == [
        "roi_heads.extra.weight",
        "roi_heads.extra.bias",
    ]
    assert report["reinitialized"][0]["reason"] == "class-dependent by shape; row layout unknown"
    for i in (0, 1):
        key = f"roi_heads.box_predictor.{i}.cls_score.weight"
        assert torch.equal(model.state_dict()[key][2], source.state_dict()[key][COCO.index("car")])
        key = f"roi_heads.box_predictor.{i}.bbox_pred.weight"
        assert torch.equal(model.state_dict()[key], source.state_dict()[key])


class _Retina(nn.Module):
    def __init__(self, k, anchors=3):
        super().__init__()
        self.num_classes = k
        self.head = RetinaNetHead(
            input_shape=[ShapeSpec(channels=4)], num_classes=k, num_anchors=anchors, conv_dims=[4]
        )


def test_retinanet_rows_are_transplanted_per_anchor(tmp_path):
    torch.manual_seed(0)
    source = _Retina(80)
    with torch.no_grad():
        for value in source.state_dict().values():
            value.copy_(torch.randn(value.shape))
    path = tmp_path / "retina.pth"
    torch.save(source.state_dict(), path)
    model = _Retina(8)
    before = snapshot(model)
    FinetuneCheckpointer(model, target_classes=CITY).load(str(path))
    key = "head.cls_score.bias"
    after, src = model.state_dict()[key], source.state_dict()[key]
    for anchor in range(3):
        for t, name in enumerate(CITY):
            if name == "rider":
                assert after[anchor * 8 + t] == before[key][anchor * 8 + t]
            else:
                assert after[anchor * 8 + t] == src[anchor * 80 + COCO.index(name)]


def test_checkpoint_without_class_names(tmp_path):
    source = snapshot(build("model.roi_heads.num_classes=20", seed=3))
    path = save_pkl(tmp_path / "voc_like.pkl", source)
    model = build()
    before = snapshot(model)
    report = FinetuneCheckpointer(model, target_classes=CITY).load(path)
    assert report["source_classes"] is None
    assert report["class_map"] == {c: None for c in CITY}
    assert "the checkpoint names no classes" in report["class_map_note"]
    cls = next(e for e in report["transplanted"] if e["key"] == CLS + "weight")
    assert cls["rows"] == [[8, 20]] and cls["fresh_rows"] == list(range(8))
    assert torch.equal(model.state_dict()[CLS + "weight"][:8], before[CLS + "weight"][:8])
    assert sorted(e["key"] for e in report["reinitialized"]) == sorted(CLASS_KEYS[2:])

    with pytest.raises(ConfigError, match=r"names classes, but the checkpoint's classes are unk"):
        FinetuneCheckpointer(build(), target_classes=CITY, class_map={"rider": "person"}).load(path)


def test_the_log_shows_the_transfer_as_tables(coco, caplog):
    log = logging.getLogger("d2_finetune.checkpoint")
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="d2_finetune.checkpoint"):
            FinetuneCheckpointer(build(), target_classes=CITY).load(coco["pkl"])
    finally:
        log.removeHandler(caplog.handler)
    text = caplog.text
    assert f"Loaded {coco['pkl']} (detectron2 model-zoo pkl, sha256 " in text
    assert (
        "| roi_heads.box_predictor.cls_score.weight | (81, 256)      | (9, 256)      | "
        "transplanted 8 rows, 1 fresh  |" in text
    )
    assert f"| {len(coco['state']) - 6} other tensors" in text
    assert "| rider      | (fresh)" in text and "| motorcycle | motorcycle" in text
