"""MMDetection's Mask R-CNN R50-FPN (and Faster R-CNN) checkpoints in Detectron2's names.

A checkpoint is ``{"meta": ..., "state_dict": ...}`` (a bare state dict is read too). The key
layout tells MMDetection >= 2.0 (heads under ``roi_head.``) from 1.x (``bbox_head.`` and
``mask_head.`` at the top; also 1.x files upgraded to 2.0 names keep their 1.x ``meta``, so
the layout decides, not the recorded version). ``meta`` gives, when present, the version
(``mmdet_version``; 3.x files have ``mmengine_version``), the class names (2.x ``CLASSES``,
3.x ``dataset_meta["classes"]``) and the training config's text (2.x ``config``, 3.x ``cfg``),
from which the ResNet style is read: ``style='caffe'`` backbones downsample in the 1x1 conv and
read BGR images with std 1, like Detectron2's MSRA ones, so they need the plain recipe config
(``configs/cityscapes_ft.py``); ``style='pytorch'`` (MMDetection's default and its model
zoo's ``r50_fpn`` models) downsample in the 3x3 conv and read RGB normalised by ImageNet's
mean and std (``configs/cityscapes_ft_from_mmdet.py``). Without a config in ``meta`` the style
cannot be seen in the weights (the key names and shapes are the same) and pytorch style is
assumed, with a note in the report.

Class rows: >= 2.0 heads are Detectron2's layout already (K classes in dataset order, the
classifier's background last, no background rows in ``fc_reg`` and ``conv_logits``); 1.x
heads have background first in all three, which is moved (``fc_cls``) or dropped.
"""

import re
from dataclasses import replace

from ...errors import CheckpointError
from .common import MSRA, PYTORCH_RGB, Requirements, convert_body, resnet_layout

__all__ = ["MMDET_V1", "RENAMES", "convert_mmdet", "is_mmdet", "mmdet_variant", "read_meta"]

RENAMES = {
    "rpn_head.rpn_conv": "proposal_generator.rpn_head.conv",
    "rpn_head.rpn_cls": "proposal_generator.rpn_head.objectness_logits",
    "rpn_head.rpn_reg": "proposal_generator.rpn_head.anchor_deltas",
    "roi_head.bbox_head.shared_fcs.0": "roi_heads.box_head.fc1",
    "roi_head.bbox_head.shared_fcs.1": "roi_heads.box_head.fc2",
    "roi_head.mask_head.upsample": "roi_heads.mask_head.deconv",
}
for _i in range(4):
    RENAMES[f"neck.lateral_convs.{_i}.conv"] = f"backbone.fpn_lateral{_i + 2}"
    RENAMES[f"neck.fpn_convs.{_i}.conv"] = f"backbone.fpn_output{_i + 2}"
    RENAMES[f"roi_head.mask_head.convs.{_i}.conv"] = f"roi_heads.mask_head.mask_fcn{_i + 1}"
CLS, BOX, MASK = (
    "roi_head.bbox_head.fc_cls",
    "roi_head.bbox_head.fc_reg",
    "roi_head.mask_head.conv_logits",
)

# MMDetection 1.x's Mask R-CNN: pytorch-style R50 with unaligned RoIAlign sampling 2 points
# per bin. Its +1-pixel box convention (anchors centred at (stride - 1) / 2 with extents
# (w - 1) / 2, box widths x2 - x1 + 1 in the delta coder) has no Detectron2 setting.
MMDET_V1 = Requirements(
    "MMDetection 1.x Mask R-CNN",
    "RGB",
    PYTORCH_RGB.pixel_mean,
    PYTORCH_RGB.pixel_std,
    False,
    False,
    2,
    False,
    "configs/cityscapes_ft_from_mmdet.py with "
    "model.roi_heads.box_pooler.pooler_type=ROIAlign model.roi_heads.box_pooler.sampling_ratio=2 "
    "model.roi_heads.mask_pooler.pooler_type=ROIAlign model.roi_heads.mask_pooler.sampling_ratio=2",
)
MMDET_V1_NOTE = (
    "MMDetection 1.x's +1-pixel box convention (anchor centres at (stride - 1) / 2, widths "
    "x2 - x1 + 1 in the box coder) cannot be set in Detectron2: boxes start about a pixel off "
    "and fine-tuning has to absorb it"
)


def is_mmdet(state):
    """Whether ``state`` has MMDetection's detector layout (``backbone.layer1``, ``neck`` or
    ``rpn_head``)."""
    return any(k.startswith("backbone.layer1.") for k in state) and any(
        k.startswith(("neck.", "rpn_head.", "roi_head.", "bbox_head.")) for k in state
    )


def _heads_v1(state):
    return any(k.startswith(("bbox_head.", "mask_head.")) for k in state) and not any(
        k.startswith("roi_head.") for k in state
    )


def _cascade_stages(state):
    stages = {
        int(m.group(1))
        for k in state
        for m in [re.match(r"(?:roi_head\.)?bbox_head\.(\d+)\.", k)]
        if m
    }
    return len(stages)


def mmdet_variant(state):
    """The detector ``state`` holds, as words, and whether it is supported."""
    stages = _cascade_stages(state)
    if stages:
        return f"an MMDetection Cascade R-CNN / HTC ({stages} box-head stages)", False
    backbone, _ = resnet_layout(state, "backbone.")
    conv2 = state.get("backbone.layer1.0.conv2.weight")
    if conv2 is not None and conv2.shape[1] != conv2.shape[0]:
        backbone = f"ResNeXt ({conv2.shape[0] // conv2.shape[1]} groups)"
    if "rpn_head.rpn_conv.0.weight" in state:
        return "an MMDetection detector with a multi-conv RPN head", False
    if any(".conv_offset" in k for k in state):
        return "an MMDetection detector with deformable convolutions (DCN)", False
    masks = any(k.startswith(("roi_head.mask_head.", "mask_head.")) for k in state)
    kind = "Mask R-CNN" if masks else "Faster R-CNN"
    if backbone != "ResNet-50":
        return f"an MMDetection {kind} with a {backbone} backbone", False
    return f"MMDetection {kind} R50-FPN", True


def read_meta(meta):
    """``{"version", "classes", "style", "mean", "std", "to_rgb"}`` from a checkpoint's
    ``meta`` (each None when absent)."""
    meta = meta if isinstance(meta, dict) else {}
    version = meta.get("mmdet_version")
    if version is None and "mmengine_version" in meta:
        version = "3.x"
    classes = meta.get("CLASSES")
    if classes is None and isinstance(meta.get("dataset_meta"), dict):
        classes = meta["dataset_meta"].get("classes")
    text = meta.get("config") or meta.get("cfg")
    found = {
        "version": version,
        "classes": list(classes) if classes is not None else None,
        "style": None,
        "mean": None,
        "std": None,
        "to_rgb": None,
    }
    if isinstance(text, str):
        style = re.search(r"\bstyle\s*=\s*['\"](caffe|pytorch)['\"]", text)
        found["style"] = style.group(1) if style else "pytorch"  # mmdet ResNet's default
        for key in ("mean", "std"):
            m = re.search(rf"\b{key}\s*=\s*[\[(]([^\])]*)[\])]", text)
            if m:
                found[key] = [float(v) for v in m.group(1).split(",") if v.strip()]
        rgb = re.search(r"\b(?:to_rgb|bgr_to_rgb)\s*=\s*(True|False)", text)
        found["to_rgb"] = rgb.group(1) == "True" if rgb else None
    return found


def _requirements(meta_facts, source):
    style = meta_facts["style"] or "pytorch"
    if style == "caffe":
        req = replace(MSRA, name="MMDetection caffe-style R50 (MSRA)")
    else:
        req = replace(PYTORCH_RGB, name="MMDetection pytorch-style R50")
    mean, std, to_rgb = meta_facts["mean"], meta_facts["std"], meta_facts["to_rgb"]
    channel = None if to_rgb is None else ("RGB" if to_rgb else "BGR")
    stated = {"mean": mean, "std": std, "channel order": channel}
    wanted = {
        "mean": list(req.pixel_mean),
        "std": list(req.pixel_std),
        "channel order": req.input_format,
    }
    for what, value in stated.items():
        if value is None:
            continue
        if isinstance(value, str):
            same = value == wanted[what]
        else:
            same = len(value) == 3 and all(abs(a - b) < 1e-3 for a, b in zip(value, wanted[what]))
        if not same:
            raise CheckpointError(
                f"{source}: its config ({style}-style ResNet) normalises images with {what} "
                f"{value}, not the {wanted[what]} that {style}-style MMDetection R50 models use; "
                "supported: MMDetection's pytorch-style (RGB, ImageNet mean/std) and caffe-style "
                "(BGR, std 1) R50-FPN Mask R-CNN checkpoints."
            )
    return req


def convert_mmdet(state, meta, source="checkpoint"):
    """Convert an MMDetection state dict; ``meta`` is the checkpoint's ``meta`` (or None).

    Returns:
        (dict, dict, list): Detectron2's state dict, facts for the conversion report, and the
        source keys it did not use (in MMDetection's >= 2.0 names).
    """
    v1 = _heads_v1(state)
    if v1:  # 1.x names: the heads sit at the top level
        state = {
            (f"roi_head.{k}" if k.startswith(("bbox_head.", "mask_head.")) else k): v
            for k, v in state.items()
        }
    facts_meta = read_meta(meta)
    out, used = convert_body(state, "backbone.", RENAMES)
    anchors = (
        state["rpn_head.rpn_cls.weight"].shape[0] if "rpn_head.rpn_cls.weight" in state else None
    )
    if anchors is not None and anchors != state["rpn_head.rpn_reg.weight"].shape[0] // 4:
        raise CheckpointError(
            f"{source}: its RPN classifier has {anchors} outputs for "
            f"{state['rpn_head.rpn_reg.weight'].shape[0] // 4} anchors: a softmax RPN "
            "(use_sigmoid=False), which Detectron2 does not have; supported: sigmoid RPNs."
        )
    k = state[f"{CLS}.weight"].shape[0] - 1
    agnostic = state[f"{BOX}.weight"].shape[0] == 4
    dropped = {}
    for src, dst, unit, kind in (
        (CLS, "roi_heads.box_predictor.cls_score", 1, "cls"),
        (BOX, "roi_heads.box_predictor.bbox_pred", 4, "box"),
        (MASK, "roi_heads.mask_head.predictor", 1, "mask"),
    ):
        if f"{src}.weight" not in state:
            continue
        if not v1 or (kind == "box" and agnostic):
            rows = None
        elif kind == "cls":
            rows = list(range(1, k + 1)) + [0]
        else:
            rows = [r * unit + j for r in range(1, k + 1) for j in range(unit)]
        for leaf in ("weight", "bias"):
            value = state[f"{src}.{leaf}"]
            out[f"{dst}.{leaf}"] = value if rows is None else value[rows]
            used.add(f"{src}.{leaf}")
        if v1 and kind != "cls":
            dropped[dst] = ["background"]
    names = facts_meta["classes"]
    if names is not None and len(names) != k:
        raise CheckpointError(
            f"{source}: its meta names {len(names)} classes but its classifier has {k} "
            "(plus background): the file is inconsistent."
        )
    if names is None and k == 80:
        from .common import coco_ids_and_names

        names = [n for _, n in coco_ids_and_names()]
    if v1:
        req = MMDET_V1
    else:
        req = _requirements(facts_meta, source)
    notes = []
    if facts_meta["style"] is None and not v1:
        notes.append(
            "no training config in the checkpoint's meta: pytorch-style ResNet "
            "assumed (a caffe-style checkpoint needs configs/cityscapes_ft.py)"
        )
    if v1:
        notes.append(MMDET_V1_NOTE)
    facts = {
        "thing_classes": names,
        "class_rows": (
            f"{k} classes + background first (MMDetection 1.x) -> background last"
            if v1
            else f"{k} classes + background last: Detectron2's layout"
        ),
        "dropped_rows": dropped,
        "requires": req,
        "version": facts_meta["version"],
        "style": facts_meta["style"] or ("pytorch" if not v1 else None),
        "generation": "1.x" if v1 else ">=2.0",
        "notes": notes,
    }
    return out, facts, [key for key in state if key not in used]
