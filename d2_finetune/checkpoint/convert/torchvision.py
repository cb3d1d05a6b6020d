"""torchvision's Mask R-CNN R50-FPN (``maskrcnn_resnet50_fpn``, v1) in Detectron2's names.

Besides renaming (:data:`RENAMES`), the heads' class rows are rearranged: torchvision's box and
mask predictors have 91 rows indexed by raw COCO category id, background at row 0 and ten
"N/A" rows at the ids COCO does not use; Detectron2's have COCO's 80 classes in id order, the
classifier's background row last, and no background rows in the box deltas and mask logits.
So ``cls_score`` takes rows ``[ids..., 0]``, ``bbox_pred`` the 4 rows of each id and
``predictor`` the channel of each id; the N/A rows and the background's box and mask rows are
dropped. A head of another size ``K + 1`` (a torchvision model fine-tuned elsewhere) keeps its
class order, background moved from first to last.

Both key spellings torchvision has used are read: the released COCO checkpoint's
(``fpn.inner_blocks.0.weight``, ``rpn.head.conv.weight``, ``mask_head.mask_fcn1.weight``) and
those of torchvision >= 0.13 models (``inner_blocks.0.0.weight``, ``conv.0.0.weight``,
``mask_head.0.0.weight``). ``maskrcnn_resnet50_fpn_v2`` (BatchNorm in the FPN and heads, a
4-conv box head) is another architecture and is refused.
"""

from .common import TORCHVISION, convert_body, resnet_layout

__all__ = ["NA_IDS", "RENAMES", "convert_torchvision", "is_torchvision", "torchvision_variant"]

# The COCO category ids in 1..90 without a category: torchvision's "N/A" rows.
NA_IDS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)

# torchvision name (without .weight / .bias) -> Detectron2 name, for everything but the ResNet
# body and the class-dependent predictors. Both spellings of the renamed-in-0.13 modules.
RENAMES = {}
for _i in range(4):
    for _tv in (f"backbone.fpn.inner_blocks.{_i}", f"backbone.fpn.inner_blocks.{_i}.0"):
        RENAMES[_tv] = f"backbone.fpn_lateral{_i + 2}"
    for _tv in (f"backbone.fpn.layer_blocks.{_i}", f"backbone.fpn.layer_blocks.{_i}.0"):
        RENAMES[_tv] = f"backbone.fpn_output{_i + 2}"
    for _tv in (f"roi_heads.mask_head.mask_fcn{_i + 1}", f"roi_heads.mask_head.{_i}.0"):
        RENAMES[_tv] = f"roi_heads.mask_head.mask_fcn{_i + 1}"
RENAMES.update(
    {
        "rpn.head.conv": "proposal_generator.rpn_head.conv",
        "rpn.head.conv.0.0": "proposal_generator.rpn_head.conv",
        "rpn.head.cls_logits": "proposal_generator.rpn_head.objectness_logits",
        "rpn.head.bbox_pred": "proposal_generator.rpn_head.anchor_deltas",
        "roi_heads.box_head.fc6": "roi_heads.box_head.fc1",
        "roi_heads.box_head.fc7": "roi_heads.box_head.fc2",
        "roi_heads.mask_predictor.conv5_mask": "roi_heads.mask_head.deconv",
    }
)
CLS = "roi_heads.box_predictor.cls_score"
BOX = "roi_heads.box_predictor.bbox_pred"
MASK = "roi_heads.mask_predictor.mask_fcn_logits"

# Keys only other torchvision detectors have: (what they are, a key that shows it).
_OTHER_MODELS = (
    (
        "torchvision's maskrcnn_resnet50_fpn_v2 (BatchNorm in the FPN and heads, a 4-conv box "
        "head)",
        (
            "roi_heads.box_head.0.0.weight",
            "rpn.head.conv.1.0.weight",
            "backbone.fpn.inner_blocks.0.1.weight",
        ),
    ),
    (
        "a torchvision Keypoint R-CNN",
        ("roi_heads.keypoint_head.0.0.weight", "roi_heads.keypoint_head.conv_fcn1.weight"),
    ),
)


def is_torchvision(state):
    """Whether ``state`` has torchvision's detection layout (``backbone.body``, ``rpn.head``)."""
    return any(k.startswith("backbone.body.") for k in state) and any(
        k.startswith(("rpn.head.", "roi_heads.")) for k in state
    )


def torchvision_variant(state):
    """The torchvision model ``state`` is from, as words, and whether it is supported."""
    for name, keys in _OTHER_MODELS:
        if any(k in state for k in keys):
            return name, False
    backbone, _ = resnet_layout(state, "backbone.body.")
    masks = any(k.startswith("roi_heads.mask_predictor.") for k in state)
    kind = "maskrcnn" if masks else "fasterrcnn"
    if backbone != "ResNet-50":
        return f"a torchvision {kind} with a {backbone} FPN backbone", False
    return f"torchvision {kind}_resnet50_fpn (v1)", True


def class_rows(num_rows):
    """``(rows, names)``: the torchvision rows that make Detectron2's K classes, in Detectron2's
    order, and the class names (None when unknown). 91 rows: COCO by id; else ``1..K``."""
    from .common import coco_ids_and_names

    if num_rows == 91:
        coco = coco_ids_and_names()
        return [i for i, _ in coco], [n for _, n in coco]
    return list(range(1, num_rows)), None


def convert_torchvision(state):
    """Convert a torchvision state dict (see the module docstring).

    Returns:
        (dict, dict, list): Detectron2's state dict, facts for the conversion report (class
        names, rows dropped, the requirements), and the source keys it did not use.
    """
    out, used = convert_body(state, "backbone.body.", RENAMES)
    num_rows = state[f"{CLS}.weight"].shape[0]
    ids, names = class_rows(num_rows)
    dropped = {}
    for src, dst, unit, with_bg in (
        (CLS, "roi_heads.box_predictor.cls_score", 1, True),
        (BOX, "roi_heads.box_predictor.bbox_pred", 4, False),
        (MASK, "roi_heads.mask_head.predictor", 1, False),
    ):
        if f"{src}.weight" not in state:
            continue
        rows = [r * unit + j for r in ids + ([0] if with_bg else []) for j in range(unit)]
        for leaf in ("weight", "bias"):
            out[f"{dst}.{leaf}"] = state[f"{src}.{leaf}"][rows]
            used.add(f"{src}.{leaf}")
        kept = set(ids) | ({0} if with_bg else set())
        dropped[dst] = [
            "background" if r == 0 else ("N/A" if r in NA_IDS else f"row {r}")
            for r in range(state[f"{src}.weight"].shape[0] // unit)
            if r not in kept
        ]
        dropped[dst] = _summarise(dropped[dst])
    facts = {
        "thing_classes": names,
        "class_rows": (
            "91 rows indexed by COCO category id (background 0, N/A at "
            f"{', '.join(map(str, NA_IDS))}) -> COCO's 80 classes in id order, background last"
            if num_rows == 91
            else f"{num_rows} rows, background first -> {num_rows - 1} classes, background last"
        ),
        "dropped_rows": dropped,
        "requires": TORCHVISION,
    }
    return out, facts, [key for key in state if key not in used]


def _summarise(labels):
    counts = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return [f"{n} x {label}" if n > 1 else label for label, n in counts.items()]
