"""Checkpoints of torchvision and MMDetection as Detectron2 starting points.

Public API:

* ``detect_source(obj) -> "detectron2" | "torchvision" | "mmdet"``: the toolbox a loaded
  checkpoint (a state dict, ``{"model": state}`` or MMDetection's ``{"meta", "state_dict"}``)
  comes from, told by its key layout. Anything else raises
  :class:`~d2_finetune.errors.CheckpointError` naming what was found and what is supported.
* ``convert(obj, source="checkpoint") -> (state, info)``: Detectron2's state dict
  (``{name: torch.Tensor}``, the names of ``configs/_base_/models/mask_rcnn_r50_fpn.py``'s
  model without ``pixel_mean``/``pixel_std``) and a JSON-ready ``info`` dict:

  ``source`` ("detectron2", "torchvision", "mmdet"), ``format`` (e.g. "torchvision
  maskrcnn_resnet50_fpn (v1)", "MMDetection Mask R-CNN R50-FPN, mmdet 2.x (>=2.0 layout),
  pytorch-style"), ``thing_classes`` (the class names in Detectron2 head order, or None when
  unknown), ``class_rows`` (how the rows were rearranged), ``dropped_rows`` ({Detectron2
  layer: rows of the source left out}), ``requires`` (:class:`~.common.Requirements` as a
  dict: input format, mean, std, stride_in_1x1, RoIAlign, anchor rounding), ``config`` (the
  shipped config that satisfies them), ``config_deltas`` (``key=value`` overrides that turn the
  recipe ``configs/cityscapes_ft.py`` into it) and ``notes`` (differences that remain).
  A Detectron2 checkpoint is returned as is; one written by ``scripts/convert_checkpoint.py``
  gives its recorded ``converted_from`` back as ``info``.
* ``check_model(model, requirements, source, image_format=None)`` (from :mod:`.common`):
  stops with the config to use when a model cannot compute what the weights were trained for.
* :mod:`.files`: reading source files safely and writing Detectron2's model-zoo ``.pkl``.

Only Mask R-CNN and Faster R-CNN with a ResNet-50 FPN backbone are converted; other backbones
(ResNet-101, ResNeXt), Cascade R-CNN / HTC, torchvision's ``maskrcnn_resnet50_fpn_v2`` and
softmax RPNs are refused by name.
"""

from collections.abc import Mapping

import numpy as np
import torch

from ...errors import CheckpointError
from .common import Requirements, check_model, config_deltas, detectron2_keys, strip_prefix
from .mmdet import convert_mmdet, is_mmdet, mmdet_variant
from .torchvision import convert_torchvision, is_torchvision, torchvision_variant

__all__ = [
    "CONVERTED_FROM_KEY",
    "Requirements",
    "check_model",
    "config_deltas",
    "convert",
    "convert_if_foreign",
    "detect_source",
    "unwrap",
]

# Where a converted Detectron2 file records what it was converted from (its ``info``).
CONVERTED_FROM_KEY = "converted_from"

SUPPORTED = (
    "supported: Detectron2 checkpoints (backbone.bottom_up.*), torchvision "
    "maskrcnn_resnet50_fpn (v1) state dicts (backbone.body.*, rpn.head.*, roi_heads.*) and "
    "MMDetection Mask R-CNN / Faster R-CNN R50-FPN checkpoints ({'meta', 'state_dict'} with "
    "backbone.layer1.*, neck.*, rpn_head.*, roi_head.*)"
)


def unwrap(obj):
    """``(state, meta, wrapper)``: the weights of a loaded checkpoint, MMDetection's ``meta``
    (or None) and how they were wrapped (``"state_dict"``, ``"model"`` or ``None``)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"A checkpoint must be a dict of weights, got a {type(obj).__name__}; {SUPPORTED}."
        )
    for wrapper in ("state_dict", "model"):
        if isinstance(obj.get(wrapper), Mapping):
            meta = obj.get("meta") if wrapper == "state_dict" else None
            return strip_prefix(obj[wrapper]), meta, wrapper
    return strip_prefix(obj), None, None


def _is_detectron2(state):
    if any(
        k.startswith(("backbone.bottom_up.", "proposal_generator.", "roi_heads.box_predictor"))
        for k in state
    ):
        return True
    # Caffe2 / Detectron1 blob names ("res2_0_branch2a_w") have no dots; FinetuneCheckpointer
    # maps them by detectron2's heuristics.
    return bool(state) and not any("." in str(k) for k in state)


def _describe_unknown(state, source):
    keys = [str(k) for k in list(state)[:6]]
    if "fc.weight" in state and any(str(k).startswith("layer1.") for k in state):
        what = "an ImageNet classification network (conv1, layer1-4, fc), not a detector"
    elif any(
        str(k).startswith(("head.classification_head", "bbox_head.retina_cls")) for k in state
    ):
        what = "a single-stage detector (RetinaNet-like), not a Mask R-CNN"
    else:
        what = "an unknown layout"
    return CheckpointError(
        f"{source}: cannot tell which toolbox wrote it: {what} (keys: {', '.join(keys)}"
        f"{', ...' if len(state) > 6 else ''}); {SUPPORTED}."
    )


def detect_source(obj, source="checkpoint"):
    """The toolbox ``obj`` (a loaded checkpoint) comes from: ``"detectron2"``,
    ``"torchvision"`` or ``"mmdet"``, from its key layout; raises CheckpointError otherwise."""
    state, meta, wrapper = unwrap(obj)
    if (
        wrapper == "state_dict"
        and meta is not None
        and not is_mmdet(state)
        and not is_torchvision(state)
    ):
        raise _describe_unknown(state, source)
    if is_torchvision(state):
        return "torchvision"
    if is_mmdet(state):
        return "mmdet"
    if _is_detectron2(state):
        return "detectron2"
    raise _describe_unknown(state, source)


def _tensors(state, source):
    out = {}
    for key, value in state.items():
        if isinstance(value, np.ndarray):
            value = torch.from_numpy(np.array(value, dtype=value.dtype.newbyteorder("=")))
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(
                f"{source}: its entry {key!r} is a {type(value).__name__}, not a weight tensor."
            )
        out[key] = value
    return out


def convert(obj, source="checkpoint"):
    """Convert a loaded checkpoint to Detectron2's names and class rows; see the module
    docstring. ``source`` names the file in messages."""
    kind = detect_source(obj, source)
    state, meta, _ = unwrap(obj)
    if kind == "detectron2":
        recorded = obj.get(CONVERTED_FROM_KEY) if isinstance(obj, Mapping) else None
        info = (
            dict(recorded)
            if isinstance(recorded, Mapping)
            else {
                "source": "detectron2",
                "format": "detectron2",
                "requires": None,
                "thing_classes": obj.get("thing_classes") if isinstance(obj, Mapping) else None,
            }
        )
        return state, info
    state = _tensors(state, source)
    variant, supported = (
        torchvision_variant(state) if kind == "torchvision" else mmdet_variant(state)
    )
    if not supported:
        raise CheckpointError(
            f"{source} holds {variant}; supported: Mask R-CNN / Faster R-CNN with a ResNet-50 "
            "FPN backbone from torchvision (maskrcnn_resnet50_fpn, v1) and MMDetection. "
            "Other architectures need a Detectron2 config of that architecture and a "
            "Detectron2 checkpoint of it."
        )
    try:
        if kind == "torchvision":
            out, facts, unused = convert_torchvision(state)
        else:
            out, facts, unused = convert_mmdet(state, meta, source)
    except KeyError as e:
        raise CheckpointError(
            f"{source} looks like {variant} but lacks the tensor {e.args[0]!r}: the file is "
            "incomplete or of a modified architecture."
        ) from e
    if unused:
        shown = ", ".join(unused[:6]) + (f" and {len(unused) - 6} more" if len(unused) > 6 else "")
        raise CheckpointError(
            f"{source} looks like {variant} but has tensors that model does not have: {shown}. "
            "It is a modified architecture; " + SUPPORTED + "."
        )
    masks = any(k.startswith("roi_heads.mask_head.") for k in out)
    missing = [k for k in detectron2_keys(masks) if k not in out]
    if missing:
        shown = ", ".join(missing[:6]) + (
            f" and {len(missing) - 6} more" if len(missing) > 6 else ""
        )
        raise CheckpointError(
            f"{source} looks like {variant} but lacks the tensors for {shown} (Detectron2 "
            "names): the file is incomplete or of a modified architecture."
        )
    req = facts.pop("requires")
    fmt = variant
    if kind == "mmdet":
        version = facts.pop("version")
        fmt += (f", mmdet {version}" if version else "") + f" ({facts.pop('generation')} layout)"
        style = facts.pop("style")
        fmt += f", {style}-style" if style else ""
    info = {
        "source": kind,
        "format": fmt,
        "thing_classes": facts["thing_classes"],
        "class_rows": facts["class_rows"],
        "dropped_rows": facts["dropped_rows"],
        "requires": req.to_dict(),
        "config": req.config,
        "config_deltas": config_deltas(req),
        "notes": facts.get("notes", []),
    }
    return out, info


def convert_if_foreign(obj, source="checkpoint"):
    """``convert(obj)`` for a torchvision or MMDetection checkpoint, None for anything else
    (Detectron2's layouts, and objects the caller reports itself). A checkpoint in
    MMDetection's wrapping (``{"meta", "state_dict"}``) of an architecture not converted is
    refused here, naming what it holds."""
    if not isinstance(obj, Mapping):
        return None
    state, meta, wrapper = unwrap(obj)
    if is_torchvision(state) or is_mmdet(state) or (wrapper == "state_dict" and meta is not None):
        return convert(obj, source)
    return None
