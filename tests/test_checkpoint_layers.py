"""d2_finetune.checkpoint.layers: which layers of a model depend on its number of classes, and
how their rows are laid out: class-agnostic heads, cascade stages, RetinaNet's rows per anchor,
the shape rule, and ResNet-101 weights refused as not fitting outside those layers."""

import os

import pytest
import torch
from checkpoint_support import (
    CITY,
    CLASS_KEYS,
    CLS,
    COCO,
    EXPECTED,
    assert_class_independent_loaded,
    assert_transplanted,
    build,
    coco_checkpoints,
    save_pkl,
    snapshot,
)
from torch import nn

from detectron2.layers import ShapeSpec
from detectron2.modeling.box_regression import Box2BoxTransform
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

from d2_finetune.checkpoint import FinetuneCheckpointer, class_layers
from d2_finetune.errors import CheckpointError

from conftest import REPO

AGNOSTIC = [
    "model.roi_heads.box_predictor.cls_agnostic_bbox_reg=True",
    "model.roi_heads.mask_head.num_classes=1",
]


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return coco_checkpoints(tmp_path_factory)


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
