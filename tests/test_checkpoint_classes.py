"""d2_finetune.checkpoint.classes: which class of a checkpoint a class of the model starts from:
class names carried by the checkpoint, train.class_map and train.class_init, the class count,
match_classes with Pascal VOC's and KITTI's synonyms, and checkpoints that name no classes."""

import pytest
import torch
from checkpoint_support import (
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

from d2_finetune.checkpoint import FinetuneCheckpointer, fresh_tensors, match_classes
from d2_finetune.data.kitti import COCO_SYNONYMS as KITTI_SYNONYMS
from d2_finetune.data.voc import COCO_SYNONYMS as VOC_SYNONYMS
from d2_finetune.errors import CheckpointError, ConfigError


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return coco_checkpoints(tmp_path_factory)


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
