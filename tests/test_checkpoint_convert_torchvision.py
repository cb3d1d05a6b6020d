"""torchvision's Mask R-CNN as a starting point: the conversion row by row, the config it needs,
and the converted Detectron2 model computing what torchvision's computes.

The source is ``maskrcnn_resnet50_fpn(weights=None, weights_backbone=None)`` with seeded random
weights and BatchNorm statistics measured on the test images (``convert.parity.randomize``),
its N/A classifier rows left random for the logit comparisons; the end-to-end comparison gives
them the strongly negative logits a trained COCO model has (see docs/checkpoints.md).
"""

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision
from torchvision.models.detection.anchor_utils import AnchorGenerator

from detectron2.config import instantiate

from d2_finetune.checkpoint import FinetuneCheckpointer
from d2_finetune.checkpoint.convert import check_model, convert, detect_source
from d2_finetune.checkpoint.convert.common import TORCHVISION, Requirements, coco_ids_and_names
from d2_finetune.checkpoint.convert.parity import (
    paste_difference,
    random_torchvision_maskrcnn,
    synthetic_images,
    torchvision_detections,
    torchvision_parity,
)
from d2_finetune.checkpoint.convert.torchvision import NA_IDS
from d2_finetune.config import load_config
from d2_finetune.data import CITYSCAPES_THING_CLASSES
from d2_finetune.errors import CheckpointError
from d2_finetune.modeling import RoundedAnchorGenerator

from conftest import REPO, load_script

convert_script = load_script("convert_checkpoint")

TV_CONFIG = os.path.join(REPO, "configs", "cityscapes_ft_from_torchvision.py")
RECIPE = os.path.join(REPO, "configs", "cityscapes_ft.py")
COCO = coco_ids_and_names()
IDS = [i for i, _ in COCO]
H, W = 192, 256
# Kept small on both sides for speed (the box head costs ~25 MFLOP per proposal, the mask
# head ~1 GFLOP per detection): proposals and detections per image.
PROPOSALS, TOPK = 300, 10


def d2_model(config=TV_CONFIG, num_classes=80, *overrides):
    cfg = load_config(
        config,
        [
            f"model.roi_heads.num_classes={num_classes}",
            f"model.roi_heads.box_predictor.test_topk_per_image={TOPK}",
            f"model.proposal_generator.post_nms_topk=[1000,{PROPOSALS}]",
            *overrides,
        ],
    )
    return instantiate(cfg.model).eval()


@pytest.fixture(scope="module")
def images():
    return synthetic_images(2, H, W, seed=0)


@pytest.fixture(scope="module")
def source(images):
    """The randomised torchvision model, its state dict and its conversion."""
    model = random_torchvision_maskrcnn(
        images, seed=0, rpn_post_nms_top_n_test=PROPOSALS, box_detections_per_img=TOPK
    )
    state = {k: v.clone() for k, v in model.state_dict().items()}
    converted, info = convert(state, "tv.pth")
    return model, state, converted, info


@pytest.fixture(scope="module")
def converted_model(source):
    model = d2_model()
    result = model.load_state_dict(source[2], strict=False)
    assert not result.unexpected_keys and not result.missing_keys
    return model


@pytest.fixture(scope="module")
def parity(source, converted_model, images):
    return torchvision_parity(source[0], converted_model, images)


def test_detected_as_torchvision_and_every_tensor_lands_on_the_config_model(source):
    _, state, converted, info = source
    assert detect_source(state) == "torchvision"
    assert detect_source({"model": state}) == "torchvision"  # torchvision's references save so
    assert info["source"] == "torchvision"
    assert info["format"] == "torchvision maskrcnn_resnet50_fpn (v1)"
    model_state = d2_model().state_dict()
    assert set(converted) == set(model_state)
    for key, value in converted.items():
        assert value.shape == model_state[key].shape, key
    # every source tensor was used; only BatchNorm's counters have no Detectron2 counterpart
    assert len(converted) == len([k for k in state if not k.endswith("num_batches_tracked")])


def test_renames(source):
    _, state, converted, _ = source
    pairs = {
        "backbone.body.conv1.weight": "backbone.bottom_up.stem.conv1.weight",
        "backbone.body.bn1.running_var": "backbone.bottom_up.stem.conv1.norm.running_var",
        "backbone.body.layer1.0.downsample.0.weight": "backbone.bottom_up.res2.0.shortcut.weight",
        "backbone.body.layer2.0.downsample.1.bias": "backbone.bottom_up.res3.0.shortcut.norm.bias",
        "backbone.body.layer4.2.conv3.weight": "backbone.bottom_up.res5.2.conv3.weight",
        "backbone.body.layer3.5.bn2.running_mean": (
            "backbone.bottom_up.res4.5.conv2.norm.running_mean"
        ),
        "backbone.fpn.inner_blocks.0.0.weight": "backbone.fpn_lateral2.weight",
        "backbone.fpn.layer_blocks.3.0.bias": "backbone.fpn_output5.bias",
        "rpn.head.conv.0.0.weight": "proposal_generator.rpn_head.conv.weight",
        "rpn.head.cls_logits.bias": "proposal_generator.rpn_head.objectness_logits.bias",
        "rpn.head.bbox_pred.weight": "proposal_generator.rpn_head.anchor_deltas.weight",
        "roi_heads.box_head.fc6.weight": "roi_heads.box_head.fc1.weight",
        "roi_heads.box_head.fc7.bias": "roi_heads.box_head.fc2.bias",
        "roi_heads.mask_head.0.0.weight": "roi_heads.mask_head.mask_fcn1.weight",
        "roi_heads.mask_head.3.0.bias": "roi_heads.mask_head.mask_fcn4.bias",
        "roi_heads.mask_predictor.conv5_mask.weight": "roi_heads.mask_head.deconv.weight",
    }
    for tv_key, d2_key in pairs.items():
        assert torch.equal(converted[d2_key], state[tv_key]), tv_key


def test_class_rows_follow_coco_ids_and_drop_na_and_background_rows(source):
    _, state, converted, info = source
    cls_w, cls_b = (
        state["roi_heads.box_predictor.cls_score.weight"],
        state["roi_heads.box_predictor.cls_score.bias"],
    )
    box_w = state["roi_heads.box_predictor.bbox_pred.weight"]
    mask_w = state["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    assert converted["roi_heads.box_predictor.cls_score.weight"].shape == (81, 1024)
    for i, (coco_id, name) in enumerate(COCO):
        assert torch.equal(
            converted["roi_heads.box_predictor.cls_score.weight"][i], cls_w[coco_id]
        ), name
        assert torch.equal(
            converted["roi_heads.box_predictor.bbox_pred.weight"][4 * i : 4 * i + 4],
            box_w[4 * coco_id : 4 * coco_id + 4],
        ), name
        assert torch.equal(converted["roi_heads.mask_head.predictor.weight"][i], mask_w[coco_id])
    # background: torchvision's row 0 is Detectron2's last classifier row
    assert torch.equal(converted["roi_heads.box_predictor.cls_score.bias"][80], cls_b[0])
    # no N/A row and no background box or mask row survives
    kept = converted["roi_heads.box_predictor.cls_score.weight"]
    for na in NA_IDS:
        assert not any(torch.equal(row, cls_w[na]) for row in kept)
    assert not any(
        torch.equal(converted["roi_heads.mask_head.predictor.weight"][i], mask_w[0])
        for i in range(80)
    )
    assert info["thing_classes"] == [n for _, n in COCO]
    assert info["dropped_rows"] == {
        "roi_heads.box_predictor.cls_score": ["10 x N/A"],
        "roi_heads.box_predictor.bbox_pred": ["background", "10 x N/A"],
        "roi_heads.mask_head.predictor": ["background", "10 x N/A"],
    }


def test_released_checkpoint_key_names_convert_the_same(source):
    """The released COCO file predates torchvision 0.13's renames (inner_blocks.0.weight,
    rpn.head.conv.weight, mask_head.mask_fcn1.weight)."""
    _, state, converted, _ = source
    old = {}
    for key, value in state.items():
        key = key.replace("rpn.head.conv.0.0.", "rpn.head.conv.")
        for block in ("inner_blocks", "layer_blocks"):
            for i in range(4):
                key = key.replace(f"fpn.{block}.{i}.0.", f"fpn.{block}.{i}.")
        for i in range(4):
            key = key.replace(
                f"roi_heads.mask_head.{i}.0.", f"roi_heads.mask_head.mask_fcn{i + 1}."
            )
        old[key] = value
    assert "rpn.head.conv.weight" in old and "roi_heads.mask_head.mask_fcn4.bias" in old
    again, _ = convert(old)
    assert set(again) == set(converted)
    assert all(torch.equal(again[k], converted[k]) for k in converted)


def test_rounded_anchor_generator_equals_torchvision_anchor_generator():
    sizes, ratios = [[32], [64], [128], [256], [512]], [0.5, 1.0, 2.0]
    ours = RoundedAnchorGenerator(
        sizes=sizes, aspect_ratios=ratios, strides=[4, 8, 16, 32, 64], offset=0.0
    )
    theirs = AnchorGenerator(tuple((s[0],) for s in sizes), ((0.5, 1.0, 2.0),) * 5)
    cells = [b for _, b in ours.cell_anchors.named_buffers()]
    assert len(cells) == len(theirs.cell_anchors) == 5
    for mine, tv in zip(cells, theirs.cell_anchors):
        assert torch.equal(mine, tv)
    # Detectron2's own anchors are not rounded: 32 / sqrt(0.5) / 2 = 22.63
    assert cells[0][0].tolist() == [-23.0, -11.0, 23.0, 11.0]


def test_preprocessing_is_the_same(parity):
    """RGB order, 0-255 vs 0-1 scale, mean and std, padding to 32: the normalised batch."""
    diff, ref = parity["preprocess"]
    assert diff <= 1e-6 * ref


@pytest.mark.parametrize(
    "stage",
    [
        "p2",
        "p3",
        "p4",
        "p5",
        "p6",
        "rpn_objectness",
        "rpn_deltas",
        "box_roi_features",
        "box_head",
        "cls_logits",
        "box_deltas",
        "mask_roi_features",
        "mask_logits",
    ],
)
def test_every_module_computes_what_torchvision_computes(parity, stage):
    diff, ref = parity[stage]
    assert ref > 0.1  # a real signal, not a dead network
    assert diff <= 1e-4 * ref, (stage, diff, ref)


def test_anchors_and_proposals_are_torchvisions(parity):
    assert parity["anchors"][0] == 0.0
    assert all(a == b for a, b in parity["proposal_counts"])
    assert parity["proposal_counts"] == [(PROPOSALS, PROPOSALS)] * 2
    assert parity["proposals"][0] < 1e-2  # pixels


def test_detections_agree_end_to_end(source, converted_model, images):
    """With the N/A rows at trained-model logits, torchvision's softmax over 91 rows and
    Detectron2's over 81 give the same scores."""
    model = source[0]
    with torch.no_grad():
        saved = model.roi_heads.box_predictor.cls_score.bias.clone()
        model.roi_heads.box_predictor.cls_score.bias[list(NA_IDS)] = -30.0
        try:
            results = torchvision_detections(model, converted_model, images)
        finally:
            model.roi_heads.box_predictor.cls_score.bias.copy_(saved)
    for r in results:
        assert r["count"] == (TOPK, TOPK)
        assert r["labels_equal"]
        assert r["boxes"][0] < 1e-2
        assert r["scores"][0] < 1e-4
        assert r["mask_probs"][0] < 1e-3  # 28x28 probabilities before pasting


def test_mask_pasting_differs_only_at_the_edges():
    boxes = torch.tensor(
        [[10.0, 20, 60, 90], [100, 30, 300, 250], [5, 5, 25, 17], [200.3, 100.7, 241.2, 163.9]]
    )
    iou_min, iou_mean = paste_difference(boxes, H, W)
    assert 0.9 < iou_min < 1.0 and iou_mean > 0.95


def test_config_deltas_rebuild_the_torchvision_config(source):
    info = source[3]
    via_overrides = load_config(RECIPE, info["config_deltas"])
    shipped = load_config(TV_CONFIG)
    assert via_overrides.dataloader.test.mapper.image_format == "RGB"
    for cfg in (via_overrides, shipped):
        cfg.model.roi_heads.num_classes = 80
    a, b = instantiate(via_overrides.model), instantiate(shipped.model)
    check_model(a, Requirements.from_dict(info["requires"]), "tv.pth", image_format="RGB")
    check_model(b, TORCHVISION, "tv.pth", image_format=shipped.dataloader.train.mapper.image_format)
    assert type(a.proposal_generator.anchor_generator) is RoundedAnchorGenerator
    assert repr(a) == repr(b)


def test_torchvision_weights_under_the_msra_recipe_stop_naming_the_config():
    model = d2_model(RECIPE)
    with pytest.raises(CheckpointError) as e:
        check_model(model, TORCHVISION, "tv.pth", image_format="BGR")
    message = str(e.value)
    assert "tv.pth holds torchvision Mask R-CNN weights" in message
    assert "input_format RGB (the model has BGR)" in message
    assert "stride_in_1x1 False (the model has True)" in message
    assert "roi_aligned False (the model has True)" in message
    assert "rounded_anchors True (the model has False)" in message
    assert "images read as RGB (dataloader.train.mapper.image_format is BGR)" in message
    assert "Use configs/cityscapes_ft_from_torchvision.py" in message


def test_script_writes_the_model_zoo_file_and_the_transfer_starts_cityscapes_classes(
    source, tmp_path
):
    _, state, _, _ = source
    src, dst = tmp_path / "maskrcnn.pth", tmp_path / "maskrcnn_d2.pkl"
    torch.save(state, src)
    run = subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "scripts", "convert_checkpoint.py"),
            str(src),
            str(dst),
        ],
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert "Use configs/cityscapes_ft_from_torchvision.py" in run.stdout
    assert "model.backbone.bottom_up.stages.stride_in_1x1=False" in run.stdout
    with open(dst, "rb") as f:
        saved = pickle.load(f)
    assert saved["thing_classes"] == [n for _, n in COCO]
    recorded = saved["converted_from"]
    assert recorded["format"] == "torchvision maskrcnn_resnet50_fpn (v1)"
    assert recorded["file"] == "maskrcnn.pth" and len(recorded["sha256"]) == 64
    assert all(type(v).__module__ == "numpy" for v in saved["model"].values())
    # Read back, the file gives its record, and the record stops a wrong config.
    assert detect_source(saved) == "detectron2"
    _, info = convert(saved, str(dst))
    assert info == recorded
    with pytest.raises(CheckpointError, match="Use configs/cityscapes_ft_from_torchvision.py"):
        check_model(d2_model(RECIPE), Requirements.from_dict(info["requires"]), str(dst))

    # The checkpointer's class-aware transfer by name: 7 Cityscapes classes from their COCO
    # rows (torchvision row = COCO id), rider fresh.
    model = d2_model(TV_CONFIG, 8)
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    report = FinetuneCheckpointer(model, target_classes=CITYSCAPES_THING_CLASSES).load(str(dst))
    assert report["class_map"]["rider"] is None
    loaded = model.state_dict()
    tv_cls = state["roi_heads.box_predictor.cls_score.weight"]
    tv_mask = state["roi_heads.mask_predictor.mask_fcn_logits.weight"]
    ids = dict((n, i) for i, n in COCO)
    for i, name in enumerate(CITYSCAPES_THING_CLASSES):
        row = loaded["roi_heads.box_predictor.cls_score.weight"][i]
        if name == "rider":
            assert torch.equal(row, fresh["roi_heads.box_predictor.cls_score.weight"][i])
            continue
        assert torch.equal(row, tv_cls[ids[name]]), name
        assert torch.equal(loaded["roi_heads.mask_head.predictor.weight"][i], tv_mask[ids[name]])
    assert torch.equal(loaded["roi_heads.box_predictor.cls_score.weight"][8], tv_cls[0])


def _state_with(state, **changes):
    out = dict(state)
    for key, value in changes.items():
        if value is None:
            del out[key]
        else:
            out[key] = value
    return out


def _resnet101(state):
    out = dict(state)
    for b in range(6, 23):  # ResNet-101's layer3 has 23 blocks
        for key, value in state.items():
            if key.startswith("backbone.body.layer3.5."):
                out[key.replace("layer3.5.", f"layer3.{b}.")] = value
    return out


def test_init_checkpoint_takes_torchvision_weights_as_they_are(source, tmp_path):
    """A torchvision .pth as train.init_checkpoint: recognised from its keys, converted when
    read, recorded in transfer.json, the classes transferred by COCO name; under the recipe's
    MSRA model it stops naming the config to use, before the model is touched."""
    import json

    _, state, converted, _ = source
    src = tmp_path / "maskrcnn_resnet50_fpn_coco.pth"
    torch.save(state, src)
    model = d2_model(TV_CONFIG, 8)
    checkpointer = FinetuneCheckpointer(
        model, str(tmp_path), target_classes=CITYSCAPES_THING_CLASSES, image_format="RGB"
    )
    report = checkpointer.load(str(src))
    assert report["format"] == "torchvision maskrcnn_resnet50_fpn (v1)"
    assert report["converted_from"]["source"] == "torchvision"
    assert report["converted_from"]["config"] == "configs/cityscapes_ft_from_torchvision.py"
    with open(tmp_path / "transfer.json") as f:
        assert json.load(f)["converted_from"]["format"] == report["format"]
    assert report["class_map"]["rider"] is None and report["class_map"]["car"] == "car"
    loaded = model.state_dict()
    assert torch.equal(
        loaded["backbone.bottom_up.res4.2.conv2.weight"],
        converted["backbone.bottom_up.res4.2.conv2.weight"],
    )
    car = [n for _, n in COCO].index("car")
    cls = "roi_heads.box_predictor.cls_score.weight"
    assert torch.equal(loaded[cls][CITYSCAPES_THING_CLASSES.index("car")], converted[cls][car])

    msra = d2_model(RECIPE, 8)
    before = {k: v.clone() for k, v in msra.state_dict().items()}
    with pytest.raises(
        CheckpointError,
        match=r"maskrcnn_resnet50_fpn_coco\.pth holds torchvision "
        r"Mask R-CNN weights, which need .*Use "
        r"configs/cityscapes_ft_from_torchvision\.py",
    ):
        FinetuneCheckpointer(
            msra, target_classes=CITYSCAPES_THING_CLASSES, image_format="BGR"
        ).load(str(src))
    assert all(torch.equal(v, before[k]) for k, v in msra.state_dict().items())


def test_a_new_class_starts_from_a_related_coco_class(source, tmp_path):
    """train.class_init={rider: person}: rider, which COCO lacks, gets person's rows; the other
    classes keep their own."""
    _, state, converted, _ = source
    src = tmp_path / "tv.pth"
    torch.save(state, src)
    model = d2_model(TV_CONFIG, 8)
    report = FinetuneCheckpointer(
        model, target_classes=CITYSCAPES_THING_CLASSES, class_init={"rider": "person"}
    ).load(str(src))
    assert report["class_map"]["rider"] == "person" and report["class_map"]["person"] == "person"
    assert report["class_init_setting"] == {"rider": "person"}
    loaded = model.state_dict()
    person = [n for _, n in COCO].index("person")
    rider = CITYSCAPES_THING_CLASSES.index("rider")
    for key, unit in (
        ("roi_heads.box_predictor.cls_score", 1),
        ("roi_heads.box_predictor.bbox_pred", 4),
        ("roi_heads.mask_head.predictor", 1),
    ):
        for suffix in ("weight", "bias"):
            name = f"{key}.{suffix}"
            assert torch.equal(
                loaded[name][rider * unit : (rider + 1) * unit],
                converted[name][person * unit : (person + 1) * unit],
            ), name


@pytest.mark.parametrize(
    "make, message",
    [
        (
            lambda s: torchvision.models.detection.maskrcnn_resnet50_fpn_v2(
                weights=None, weights_backbone=None
            ).state_dict(),
            "holds torchvision's maskrcnn_resnet50_fpn_v2 (BatchNorm in the FPN and heads",
        ),
        (
            _resnet101,
            "holds a torchvision maskrcnn with a ResNet-101 FPN backbone; supported: Mask "
            "R-CNN / Faster R-CNN with a ResNet-50 FPN backbone",
        ),
        (
            lambda s: _state_with(s, **{"roi_heads.keypoint_head.0.0.weight": torch.zeros(1)}),
            "holds a torchvision Keypoint R-CNN",
        ),
        (
            lambda s: _state_with(s, **{"roi_heads.extra.weight": torch.zeros(1)}),
            "has tensors that model does not have: roi_heads.extra.weight",
        ),
        (
            lambda s: _state_with(s, **{"backbone.fpn.layer_blocks.2.0.weight": None}),
            "lacks the tensors for backbone.fpn_output4.weight (Detectron2 names)",
        ),
        (
            lambda s: torchvision.models.resnet50().state_dict(),
            "cannot tell which toolbox wrote it: an ImageNet classification network",
        ),
        (
            lambda s: {"encoder.layer.0.weight": torch.zeros(1)},
            "cannot tell which toolbox wrote it: an unknown layout (keys: encoder.layer.0.weight)",
        ),
        (lambda s: [1, 2], "A checkpoint must be a dict of weights, got a list"),
    ],
)
def test_bad_input_is_refused_by_name(source, make, message):
    with pytest.raises(CheckpointError) as e:
        convert(make(source[1]), "bad.pth")
    assert message in str(e.value)
    assert (
        "supported" in str(e.value).lower()
        or "Other architectures" in str(e.value)
        or "incomplete" in str(e.value)
    )


def test_faster_rcnn_converts_without_mask_head():
    torch.manual_seed(0)
    state = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None
    ).state_dict()
    converted, info = convert(state)
    assert info["format"] == "torchvision fasterrcnn_resnet50_fpn (v1)"
    assert not any(k.startswith("roi_heads.mask_head") for k in converted)
    assert converted["roi_heads.box_predictor.cls_score.weight"].shape == (81, 1024)


def test_files_that_would_run_code_or_are_already_detectron2_are_refused(tmp_path):
    """torchvision's reference training scripts save their argparse.Namespace with the
    weights; the converter reads files as every checkpoint is read (torch.load with
    weights_only=True), so it refuses it and nothing is executed. A Detectron2 file needs no
    conversion; a legacy-format torch file converts."""
    import argparse

    from d2_finetune.checkpoint.convert.files import convert_file

    path = tmp_path / "checkpoint.pth"
    torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.02)}, path)
    with pytest.raises(CheckpointError) as e:
        convert_file(str(path), str(tmp_path / "out.pkl"))
    assert f"{path}: refused to load: the file asks for the Python object 'argparse.Namespace'" in (
        str(e.value)
    )
    assert "in torchvision, save model.state_dict()" in str(e.value)
    pkl = tmp_path / "model_final.pkl"
    with open(pkl, "wb") as f:
        pickle.dump({"model": {"backbone.bottom_up.stem.conv1.weight": np.zeros(1)}}, f)
    with pytest.raises(
        CheckpointError,
        match=r"model_final\.pkl is already a Detectron2 checkpoint: "
        r"nothing to convert",
    ):
        convert_file(str(pkl), str(tmp_path / "out.pkl"))
    with pytest.raises(CheckpointError, match="Checkpoint not found"):
        convert_file(str(tmp_path / "missing.pth"), str(tmp_path / "out.pkl"))
    assert not (tmp_path / "out.pkl").exists()


def test_script_reports_bad_input_in_one_line(tmp_path, capsys):
    src = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), src)
    with pytest.raises(SystemExit) as exit_info:
        convert_script.main([str(src), str(tmp_path / "out.pkl")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(
        f"ERROR: {src}: cannot tell which toolbox wrote it: an ImageNet classification network"
    )
    assert err.count("\n") == 1
    assert not (tmp_path / "out.pkl").exists()
    with pytest.raises(SystemExit):
        convert_script.main([str(src), str(tmp_path / "out.pth")])
    assert "the output is Detectron2's model-zoo format; name it .pkl" in capsys.readouterr().err
