"""MMDetection checkpoints as a starting point: the conversion key by key on checkpoints with
MMDetection's exact layout (no mmdet needed), its meta (version, classes, ResNet style), the
configs they need, and, where MMDetection installs (see docs/checkpoints.md), the converted
Detectron2 model against MMDetection's own Mask R-CNN, module by module and end to end.
"""

import os
import re

import pytest
import torch

from detectron2.config import instantiate

from d2_finetune.checkpoint import FinetuneCheckpointer
from d2_finetune.checkpoint.convert import check_model, convert, detect_source
from d2_finetune.checkpoint.convert.common import (
    MSRA,
    PYTORCH_RGB,
    Requirements,
    coco_ids_and_names,
)
from d2_finetune.checkpoint.convert.files import convert_file
from d2_finetune.checkpoint.convert.mmdet import MMDET_V1
from d2_finetune.config import load_config
from d2_finetune.data import CITYSCAPES_THING_CLASSES
from d2_finetune.errors import CheckpointError

from conftest import REPO

MM_CONFIG = os.path.join(REPO, "configs", "cityscapes_ft_from_mmdet.py")
TV_CONFIG = os.path.join(REPO, "configs", "cityscapes_ft_from_torchvision.py")
RECIPE = os.path.join(REPO, "configs", "cityscapes_ft.py")
COCO = [n for _, n in coco_ids_and_names()]
PYTORCH_CFG = (
    "model = dict(type='MaskRCNN', data_preprocessor=dict(type='DetDataPreprocessor', "
    "mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375], bgr_to_rgb=True), "
    "backbone=dict(type='ResNet', depth=50, style='pytorch'))"
)
CAFFE_CFG = (
    "model = dict(type='MaskRCNN', data_preprocessor=dict(type='DetDataPreprocessor', "
    "mean=[103.53, 116.28, 123.675], std=[1.0, 1.0, 1.0], bgr_to_rgb=False), "
    "backbone=dict(type='ResNet', depth=50, style='caffe'))"
)
# MMDetection 2.x wrote its config as img_norm_cfg
CAFFE_CFG_2X = (
    "img_norm_cfg = dict(mean=[103.53, 116.28, 123.675], std=[1.0, 1.0, 1.0], "
    "to_rgb=False)\nmodel = dict(backbone=dict(type='ResNet', depth=50, "
    "style='caffe'))"
)


def mmdet_layout(num_classes=80, blocks=(3, 4, 6, 3), masks=True):
    """Key -> shape of MMDetection's Mask R-CNN R50-FPN state dict, from its model definition
    (mmdet/models: backbones/resnet.py Bottleneck, necks/fpn.py with ConvModule, dense_heads/
    rpn_head.py, roi_heads/bbox_heads/convfc_bbox_head.py Shared2FCBBoxHead,
    roi_heads/mask_heads/fcn_mask_head.py); checked against mmdet 3.3.0's own model in
    test_layout_is_mmdetections_own when mmdet is installed."""
    layout = {}

    def bn(name, c):
        for s in ("weight", "bias", "running_mean", "running_var"):
            layout[f"{name}.{s}"] = (c,)
        layout[f"{name}.num_batches_tracked"] = ()

    def conv(name, out, inp, k, bias=False):
        layout[f"{name}.weight"] = (out, inp, k, k)
        if bias:
            layout[f"{name}.bias"] = (out,)

    conv("backbone.conv1", 64, 3, 7)
    bn("backbone.bn1", 64)
    inplanes = 64
    for stage, (planes, count) in enumerate(zip((64, 128, 256, 512), blocks), start=1):
        for b in range(count):
            p = f"backbone.layer{stage}.{b}"
            conv(f"{p}.conv1", planes, inplanes if b == 0 else planes * 4, 1)
            bn(f"{p}.bn1", planes)
            conv(f"{p}.conv2", planes, planes, 3)
            bn(f"{p}.bn2", planes)
            conv(f"{p}.conv3", planes * 4, planes, 1)
            bn(f"{p}.bn3", planes * 4)
            if b == 0:
                conv(f"{p}.downsample.0", planes * 4, inplanes, 1)
                bn(f"{p}.downsample.1", planes * 4)
        inplanes = planes * 4
    for i, c in enumerate((256, 512, 1024, 2048)):
        conv(f"neck.lateral_convs.{i}.conv", 256, c, 1, bias=True)
    for i in range(4):
        conv(f"neck.fpn_convs.{i}.conv", 256, 256, 3, bias=True)
    conv("rpn_head.rpn_conv", 256, 256, 3, bias=True)
    conv("rpn_head.rpn_cls", 3, 256, 1, bias=True)
    conv("rpn_head.rpn_reg", 12, 256, 1, bias=True)
    for name, out, inp in (
        ("fc_cls", num_classes + 1, 1024),
        ("fc_reg", 4 * num_classes, 1024),
        ("shared_fcs.0", 1024, 256 * 7 * 7),
        ("shared_fcs.1", 1024, 1024),
    ):
        layout[f"roi_head.bbox_head.{name}.weight"] = (out, inp)
        layout[f"roi_head.bbox_head.{name}.bias"] = (out,)
    if masks:
        for i in range(4):
            conv(f"roi_head.mask_head.convs.{i}.conv", 256, 256, 3, bias=True)
        conv("roi_head.mask_head.upsample", 256, 256, 2, bias=True)
        conv("roi_head.mask_head.conv_logits", num_classes, 256, 1, bias=True)
    return layout


def random_state(layout, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return {
        k: torch.randn(shape, generator=generator) if shape else torch.tensor(0)
        for k, shape in layout.items()
    }


def expected_name(mm_key):
    """Detectron2's name for an MMDetection key, written independently of the converter."""
    key = re.sub(r"^backbone\.conv1\.", "backbone.bottom_up.stem.conv1.", mm_key)
    key = re.sub(r"^backbone\.bn1\.", "backbone.bottom_up.stem.conv1.norm.", key)
    key = re.sub(
        r"^backbone\.layer(\d)\.", lambda m: f"backbone.bottom_up.res{int(m.group(1)) + 1}.", key
    )
    key = re.sub(r"\.bn(\d)\.", r".conv\1.norm.", key)
    key = key.replace(".downsample.0.", ".shortcut.").replace(".downsample.1.", ".shortcut.norm.")
    key = re.sub(
        r"^neck\.lateral_convs\.(\d)\.conv\.",
        lambda m: f"backbone.fpn_lateral{int(m.group(1)) + 2}.",
        key,
    )
    key = re.sub(
        r"^neck\.fpn_convs\.(\d)\.conv\.",
        lambda m: f"backbone.fpn_output{int(m.group(1)) + 2}.",
        key,
    )
    key = key.replace("rpn_head.rpn_conv.", "proposal_generator.rpn_head.conv.")
    key = key.replace("rpn_head.rpn_cls.", "proposal_generator.rpn_head.objectness_logits.")
    key = key.replace("rpn_head.rpn_reg.", "proposal_generator.rpn_head.anchor_deltas.")
    key = key.replace("roi_head.bbox_head.shared_fcs.0.", "roi_heads.box_head.fc1.")
    key = key.replace("roi_head.bbox_head.shared_fcs.1.", "roi_heads.box_head.fc2.")
    key = key.replace("roi_head.bbox_head.fc_cls.", "roi_heads.box_predictor.cls_score.")
    key = key.replace("roi_head.bbox_head.fc_reg.", "roi_heads.box_predictor.bbox_pred.")
    key = re.sub(
        r"^roi_head\.mask_head\.convs\.(\d)\.conv\.",
        lambda m: f"roi_heads.mask_head.mask_fcn{int(m.group(1)) + 1}.",
        key,
    )
    key = key.replace("roi_head.mask_head.upsample.", "roi_heads.mask_head.deconv.")
    return key.replace("roi_head.mask_head.conv_logits.", "roi_heads.mask_head.predictor.")


def d2_model(config=MM_CONFIG, num_classes=80, *overrides):
    cfg = load_config(config, [f"model.roi_heads.num_classes={num_classes}", *overrides])
    return instantiate(cfg.model).eval()


@pytest.fixture(scope="module")
def mm_state():
    return random_state(mmdet_layout())


@pytest.fixture(scope="module")
def model_shapes():
    return {k: tuple(v.shape) for k, v in d2_model().state_dict().items()}


def test_every_key_lands_on_its_detectron2_name(mm_state, model_shapes):
    checkpoint = {
        "meta": {"mmdet_version": "2.25.0", "CLASSES": tuple(COCO), "config": PYTORCH_CFG},
        "state_dict": mm_state,
    }
    assert detect_source(checkpoint) == "mmdet"
    converted, info = convert(checkpoint, "mask_rcnn.pth")
    assert info["source"] == "mmdet"
    assert info["format"] == (
        "MMDetection Mask R-CNN R50-FPN, mmdet 2.25.0 (>=2.0 layout), pytorch-style"
    )
    assert set(converted) == set(model_shapes)
    used = [k for k in mm_state if not k.endswith("num_batches_tracked")]
    assert len(used) == len(converted)
    for mm_key in used:
        d2_key = expected_name(mm_key)
        assert torch.equal(converted[d2_key], mm_state[mm_key]), mm_key
        assert tuple(converted[d2_key].shape) == model_shapes[d2_key], mm_key
    # >= 2.0 rows are Detectron2's already: 80 classes in COCO order, background last
    assert info["thing_classes"] == COCO
    assert info["dropped_rows"] == {}
    assert info["requires"] == PYTORCH_RGB.to_dict() | {"name": "MMDetection pytorch-style R50"}
    assert info["config"] == "configs/cityscapes_ft_from_mmdet.py"
    assert info["config_deltas"] == [
        "model.input_format=RGB",
        "dataloader.train.mapper.image_format=RGB",
        "model.pixel_mean=[123.675,116.28,103.53]",
        "model.pixel_std=[58.395,57.12,57.375]",
        "model.backbone.bottom_up.stages.stride_in_1x1=False",
    ]
    assert info["notes"] == []


def test_faster_rcnn_converts_without_mask_head():
    converted, info = convert({"state_dict": random_state(mmdet_layout(masks=False))})
    assert info["format"].startswith("MMDetection Faster R-CNN R50-FPN")
    assert not any(k.startswith("roi_heads.mask_head") for k in converted)


def test_mmdet3_meta_bare_state_dicts_and_dataparallel_prefixes(mm_state):
    v3 = {
        "meta": {
            "mmengine_version": "0.10.7",
            "dataset_meta": {"classes": tuple(COCO)},
            "cfg": PYTORCH_CFG,
        },
        "state_dict": mm_state,
    }
    _, info = convert(v3)
    assert "mmdet 3.x (>=2.0 layout), pytorch-style" in info["format"]
    assert info["thing_classes"] == COCO and info["notes"] == []
    bare = {f"module.{k}": v for k, v in mm_state.items()}
    assert detect_source(bare) == "mmdet"
    converted, info = convert(bare)
    assert "backbone.bottom_up.res5.2.conv3.weight" in converted
    assert info["notes"] == [
        "no training config in the checkpoint's meta: pytorch-style ResNet "
        "assumed (a caffe-style checkpoint needs configs/cityscapes_ft.py)"
    ]


@pytest.mark.parametrize("text", [CAFFE_CFG, CAFFE_CFG_2X])
def test_caffe_style_checkpoints_need_the_plain_recipe(mm_state, text):
    """MMDetection's caffe-style R50 is MSRA's (its init is detectron2's R-50.pkl): stride in
    the 1x1 conv, BGR, std 1, which is exactly the recipe config."""
    _, info = convert({"meta": {"mmdet_version": "2.2.0", "config": text}, "state_dict": mm_state})
    assert info["format"].endswith("caffe-style")
    req = Requirements.from_dict(info["requires"])
    assert req == Requirements(**dict(MSRA.to_dict(), name="MMDetection caffe-style R50 (MSRA)"))
    assert info["config"] == "configs/cityscapes_ft.py" and info["config_deltas"] == []
    check_model(d2_model(RECIPE), req, "caffe.pth", image_format="BGR")
    with pytest.raises(CheckpointError) as e:
        check_model(d2_model(MM_CONFIG), req, "caffe.pth", image_format="RGB")
    assert (
        "caffe.pth holds MMDetection caffe-style R50 (MSRA) weights, which need "
        "input_format BGR (the model has RGB)"
    ) in str(e.value)
    assert "Use configs/cityscapes_ft.py" in str(e.value)


def test_pytorch_style_weights_under_other_configs_stop_naming_the_mmdet_config():
    for config, found in (
        (RECIPE, "stride_in_1x1 False (the model has True)"),
        (TV_CONFIG, "roi_aligned True (the model has False)"),
    ):
        req = Requirements(**dict(PYTORCH_RGB.to_dict(), name="MMDetection pytorch-style R50"))
        with pytest.raises(CheckpointError) as e:
            check_model(d2_model(config), req, "mm.pth")
        assert found in str(e.value)
        assert "Use configs/cityscapes_ft_from_mmdet.py" in str(e.value)
    check_model(d2_model(MM_CONFIG), PYTORCH_RGB, "mm.pth", image_format="RGB")


def test_config_deltas_rebuild_the_mmdet_config(mm_state):
    _, info = convert({"state_dict": mm_state, "meta": {"config": PYTORCH_CFG}})
    via_overrides = load_config(RECIPE, info["config_deltas"])
    shipped = load_config(MM_CONFIG)
    assert via_overrides.dataloader.test.mapper.image_format == "RGB"
    for cfg in (via_overrides, shipped):
        cfg.model.roi_heads.num_classes = 80
    assert repr(instantiate(via_overrides.model)) == repr(instantiate(shipped.model))


def test_mmdet_1x_rows_have_background_first(mm_state):
    """1.x heads sit at the top level and carry background first in fc_cls, fc_reg (4 rows)
    and conv_logits; MMDetection's own upgrade tool moves and drops them the same way."""
    layout = mmdet_layout(num_classes=81)  # 1.x: 81 rows everywhere, background first
    layout["roi_head.bbox_head.fc_cls.weight"] = (81, 1024)
    layout["roi_head.bbox_head.fc_cls.bias"] = (81,)
    v1 = {k.replace("roi_head.", ""): v for k, v in random_state(layout, seed=1).items()}
    assert v1["bbox_head.fc_reg.weight"].shape == (324, 1024)
    converted, info = convert({"meta": {"mmdet_version": "1.0rc0"}, "state_dict": v1})
    cls, box = v1["bbox_head.fc_cls.weight"], v1["bbox_head.fc_reg.weight"]
    mask = v1["mask_head.conv_logits.weight"]
    assert torch.equal(converted["roi_heads.box_predictor.cls_score.weight"][:80], cls[1:])
    assert torch.equal(converted["roi_heads.box_predictor.cls_score.weight"][80], cls[0])
    assert torch.equal(converted["roi_heads.box_predictor.bbox_pred.weight"], box[4:])
    assert torch.equal(converted["roi_heads.mask_head.predictor.weight"], mask[1:])
    assert torch.equal(
        converted["roi_heads.box_head.fc1.weight"], v1["bbox_head.shared_fcs.0.weight"]
    )
    assert info["format"] == "MMDetection Mask R-CNN R50-FPN, mmdet 1.0rc0 (1.x layout)"
    assert info["dropped_rows"] == {
        "roi_heads.box_predictor.bbox_pred": ["background"],
        "roi_heads.mask_head.predictor": ["background"],
    }
    assert Requirements.from_dict(info["requires"]) == MMDET_V1
    assert "model.roi_heads.box_pooler.sampling_ratio=2" in info["config_deltas"]
    assert "+1-pixel box convention" in info["notes"][0]


def test_converted_file_starts_cityscapes_classes_from_their_coco_rows(mm_state, tmp_path):
    src, dst = str(tmp_path / "mask_rcnn.pth"), str(tmp_path / "mask_rcnn_d2.pkl")
    torch.save(
        {
            "meta": {"mmdet_version": "2.25.0", "CLASSES": tuple(COCO), "config": PYTORCH_CFG},
            "state_dict": mm_state,
        },
        src,
    )
    info = convert_file(src, dst)
    assert info["file"] == "mask_rcnn.pth" and info["thing_classes"] == COCO
    model = d2_model(MM_CONFIG, 8)
    fresh = model.state_dict()["roi_heads.box_predictor.cls_score.weight"].clone()
    report = FinetuneCheckpointer(model, target_classes=CITYSCAPES_THING_CLASSES).load(dst)
    assert report["source_classes"] == COCO
    loaded = model.state_dict()
    for i, name in enumerate(CITYSCAPES_THING_CLASSES):
        row = loaded["roi_heads.box_predictor.cls_score.weight"][i]
        if name == "rider":
            assert report["class_map"]["rider"] is None and torch.equal(row, fresh[i])
            continue
        j = COCO.index(name)
        assert torch.equal(row, mm_state["roi_head.bbox_head.fc_cls.weight"][j]), name
        assert torch.equal(
            loaded["roi_heads.box_predictor.bbox_pred.weight"][4 * i : 4 * i + 4],
            mm_state["roi_head.bbox_head.fc_reg.weight"][4 * j : 4 * j + 4],
        )
        assert torch.equal(
            loaded["roi_heads.mask_head.predictor.weight"][i],
            mm_state["roi_head.mask_head.conv_logits.weight"][j],
        )


def _with(state, drop=(), **add):
    out = {k: v for k, v in state.items() if not k.startswith(tuple(drop))}
    out.update({k.replace("__", "."): v for k, v in add.items()})
    return out


def _cascade(state):
    out = {k: v for k, v in state.items() if not k.startswith("roi_head.bbox_head.")}
    for stage in range(3):
        for k, v in state.items():
            if k.startswith("roi_head.bbox_head."):
                out[k.replace("bbox_head.", f"bbox_head.{stage}.")] = v
    return out


@pytest.mark.parametrize(
    "make, message",
    [
        (
            _cascade,
            "holds an MMDetection Cascade R-CNN / HTC (3 box-head stages); supported: Mask "
            "R-CNN / Faster R-CNN with a ResNet-50 FPN backbone",
        ),
        (
            lambda s: random_state(mmdet_layout(blocks=(3, 4, 23, 3))),
            "holds an MMDetection Mask R-CNN with a ResNet-101 backbone",
        ),
        (
            lambda s: _with(s, **{"backbone__layer1__0__conv2__weight": torch.zeros(128, 4, 3, 3)}),
            "with a ResNeXt (32 groups) backbone",
        ),
        (
            lambda s: _with(s, rpn_head__rpn_cls__weight=torch.zeros(6, 256, 1, 1)),
            "its RPN classifier has 6 outputs for 3 anchors: a softmax RPN",
        ),
        (
            lambda s: _with(s, backbone__layer2__0__conv2__conv_offset__weight=torch.zeros(1)),
            "with deformable convolutions (DCN)",
        ),
        (
            lambda s: _with(s, roi_head__mask_iou_head__fc__weight=torch.zeros(1)),
            "has tensors that model does not have: roi_head.mask_iou_head.fc.weight",
        ),
        (
            lambda s: _with(s, drop=["neck.fpn_convs.3"]),
            "lacks the tensors for backbone.fpn_output5.weight, backbone.fpn_output5.bias",
        ),
    ],
)
def test_bad_input_is_refused_by_name(mm_state, make, message):
    with pytest.raises(CheckpointError) as e:
        convert({"meta": {"mmdet_version": "2.25.0"}, "state_dict": make(mm_state)}, "bad.pth")
    assert message in str(e.value)


@pytest.mark.parametrize(
    "meta, message",
    [
        ({"CLASSES": ("a", "b")}, "its meta names 2 classes but its classifier has 80"),
        (
            {"config": PYTORCH_CFG.replace("[58.395, 57.12, 57.375]", "[1.0, 1.0, 1.0]")},
            "its config (pytorch-style ResNet) normalises images with std [1.0, 1.0, 1.0], not the "
            "[58.395, 57.12, 57.375]",
        ),
        (
            {"config": CAFFE_CFG.replace("bgr_to_rgb=False", "bgr_to_rgb=True")},
            "normalises images with channel order RGB, not the BGR",
        ),
    ],
)
def test_inconsistent_meta_is_refused(mm_state, meta, message):
    with pytest.raises(CheckpointError) as e:
        convert({"meta": meta, "state_dict": mm_state}, "bad.pth")
    assert message in str(e.value)


def test_unknown_layout_in_an_mmengine_checkpoint_is_named(mm_state):
    with pytest.raises(CheckpointError) as e:
        convert(
            {"meta": {}, "state_dict": {"head.classification_head.conv.0.weight": torch.zeros(1)}},
            "retina.pth",
        )
    assert "retina.pth: cannot tell which toolbox wrote it: a single-stage detector" in str(e.value)


# ----------------------------------------------------------------------------------------------
# Against MMDetection's own code: needs mmengine, mmdet 3.x and mmcv (mmcv-lite is enough).


@pytest.fixture(scope="module")
def mmdet_installed():
    from d2_finetune.checkpoint.convert.mmdet_parity import import_mmdet

    try:
        return import_mmdet()
    except ImportError as e:
        pytest.skip(
            f"MMDetection is not installed ({e}); pip install mmengine==0.10.7 "
            "mmdet==3.3.0 mmcv-lite==2.1.0, or mmdet==2.28.2 mmcv==1.7.2 (see "
            "docs/checkpoints.md)"
        )


def test_layout_is_mmdetections_own(mmdet_installed):
    from d2_finetune.checkpoint.convert.mmdet_parity import mmdet_model

    model, _ = mmdet_model("pytorch")
    theirs = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert theirs == mmdet_layout()


@pytest.fixture(scope="module", params=["pytorch", "caffe"])
def mmdet_pair(request, mmdet_installed):
    """MMDetection's randomised Mask R-CNN of one ResNet style, its checkpoint as MMDetection
    saves it, and the Detectron2 model of the config the conversion names, loaded."""
    from d2_finetune.checkpoint.convert.mmdet_parity import build_mmdet_maskrcnn, mmdet_checkpoint
    from d2_finetune.checkpoint.convert.parity import synthetic_images

    images = synthetic_images(2, 192, 256, seed=0)
    mm_model, cfg_text = build_mmdet_maskrcnn(
        [im.flip(0) for im in images], seed=0, style=request.param, max_per_img=10
    )
    converted, info = convert(mmdet_checkpoint(mm_model, cfg_text, COCO), "mmdet.pth")
    assert info["thing_classes"] == COCO
    model = d2_model(
        os.path.join(REPO, info["config"]),
        80,
        "model.roi_heads.box_predictor.test_topk_per_image=10",
        "model.proposal_generator.post_nms_topk=[1000,300]",
    )
    check_model(model, Requirements.from_dict(info["requires"]), "mmdet.pth")
    mm_model.rpn_head.test_cfg.max_per_img = 300
    result = model.load_state_dict(converted, strict=False)
    assert not result.missing_keys and not result.unexpected_keys
    return request.param, info, mm_model, model, images


def test_the_config_text_in_meta_picks_the_config(mmdet_pair):
    style, info = mmdet_pair[:2]
    assert info["format"].endswith(f"{style}-style")
    assert (
        info["config"]
        == {"pytorch": "configs/cityscapes_ft_from_mmdet.py", "caffe": "configs/cityscapes_ft.py"}[
            style
        ]
    )


def test_every_module_computes_what_mmdetection_computes(mmdet_pair):
    from d2_finetune.checkpoint.convert.mmdet_parity import mmdet_parity

    _, _, mm_model, model, images = mmdet_pair
    result = mmdet_parity(mm_model, model, images)
    assert result["proposal_counts"] == [(300, 300)] * 2
    for stage in (
        "preprocess",
        "p2",
        "p3",
        "p4",
        "p5",
        "p6",
        "rpn_objectness",
        "rpn_deltas",
        "anchors",
        "box_roi_features",
        "cls_logits",
        "box_deltas",
        "mask_roi_features",
        "mask_logits",
    ):
        diff, ref = result[stage]
        assert ref > 0.1 and diff <= 1e-5 * ref, (stage, diff, ref)
    assert result["proposals"][0] < 1e-3


def test_detections_agree_end_to_end(mmdet_pair):
    from d2_finetune.checkpoint.convert.mmdet_parity import mmdet_detections

    _, _, mm_model, model, images = mmdet_pair
    for r in mmdet_detections(mm_model, model, images):
        assert r["count"] == (10, 10) and r["labels_equal"]
        assert r["boxes"][0] < 1e-3 and r["scores"][0] < 1e-5
        assert r["mask_iou_min"] > 0.99
