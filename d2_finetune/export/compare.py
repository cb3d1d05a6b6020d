"""How closely two sets of predictions on one image agree (eager vs exported)."""

import torch

from detectron2.structures import pairwise_iou

__all__ = ["match_instances", "summarize", "within"]


def match_instances(reference, other, min_score=0.0, score_margin=1e-3, min_box_iou=0.5):
    """Pair each instance of ``reference`` with one of ``other`` and measure the differences.

    Instances are paired greedily in decreasing score of ``reference``, each with the unpaired
    instance of ``other`` of the same class that overlaps it most (box IoU >= ``min_box_iou``).
    An instance within ``score_margin`` of ``min_score`` may lack a partner (a score of
    0.5000 in one and 0.4999 in the other puts it on different sides of the threshold).

    Args:
        reference, other (Instances): predictions on the same image (``pred_boxes``, ``scores``,
            ``pred_classes``; ``pred_masks`` as booleans if both have them).
    Returns:
        dict: ``compared`` (reference instances at or above ``min_score + score_margin``),
        ``matched``, ``missing`` (of those, without a partner), ``extra`` (instances of
        ``other`` at or above ``min_score + score_margin`` without a partner), and over the
        pairs ``max_box_diff`` (pixels, any coordinate), ``max_score_diff``, ``min_mask_iou``,
        ``mean_mask_iou`` and ``min_mask_iou_beyond_1px``: the smallest IoU of the masks that
        differ in more than one pixel (a single pixel at the 0.5 threshold can decide a small
        mask's IoU alone: one of 43 is 0.977). None without masks or pairs (or such masks).
    """
    ref = reference[reference.scores >= min_score - score_margin]
    oth = other[other.scores >= min_score - score_margin]
    order = torch.argsort(ref.scores, descending=True)
    iou = pairwise_iou(ref.pred_boxes, oth.pred_boxes) if len(ref) and len(oth) else None
    same_class = ref.pred_classes[:, None] == oth.pred_classes[None, :]
    taken = torch.zeros(len(oth), dtype=torch.bool)
    pairs = []
    for i in order.tolist():
        if iou is None:
            break
        candidates = iou[i].clone()
        candidates[~same_class[i] | taken] = -1
        j = int(candidates.argmax())
        if candidates[j] >= min_box_iou:
            taken[j] = True
            pairs.append((i, j))
    paired_ref = {i for i, _ in pairs}
    firm = min_score + score_margin
    compared = int((ref.scores >= firm).sum())
    missing = sum(1 for i in range(len(ref)) if ref.scores[i] >= firm and i not in paired_ref)
    extra = int(((oth.scores >= firm) & ~taken).sum())
    result = {
        "compared": compared,
        "matched": compared - missing,
        "missing": missing,
        "extra": extra,
        "max_box_diff": None,
        "max_score_diff": None,
        "min_mask_iou": None,
        "mean_mask_iou": None,
        "min_mask_iou_beyond_1px": None,
    }
    if not pairs:
        return result
    i, j = (torch.tensor(v) for v in zip(*pairs))
    result["max_box_diff"] = float(
        (ref.pred_boxes.tensor[i] - oth.pred_boxes.tensor[j]).abs().max()
    )
    result["max_score_diff"] = float((ref.scores[i] - oth.scores[j]).abs().max())
    if ref.has("pred_masks") and oth.has("pred_masks"):
        a = ref.pred_masks[i].flatten(1).bool()
        b = oth.pred_masks[j].flatten(1).bool()
        inter = (a & b).sum(1).float()
        union = (a | b).sum(1).float()
        ious = torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))
        result["min_mask_iou"] = float(ious.min())
        result["mean_mask_iou"] = float(ious.mean())
        beyond = ious[(union - inter) > 1]
        result["min_mask_iou_beyond_1px"] = float(beyond.min()) if len(beyond) else None
    return result


def summarize(results):
    """Several images' :func:`match_instances` results as one (sums, worst values)."""
    total = {k: sum(r[k] for r in results) for k in ("compared", "matched", "missing", "extra")}
    total["images"] = len(results)

    def worst(key, pick):
        values = [r[key] for r in results if r[key] is not None]
        return pick(values) if values else None

    total["max_box_diff"] = worst("max_box_diff", max)
    total["max_score_diff"] = worst("max_score_diff", max)
    total["min_mask_iou"] = worst("min_mask_iou", min)
    total["min_mask_iou_beyond_1px"] = worst("min_mask_iou_beyond_1px", min)
    means = [r["mean_mask_iou"] for r in results if r["mean_mask_iou"] is not None]
    total["mean_mask_iou"] = sum(means) / len(means) if means else None
    return total


def within(summary, box=1.0, score=1e-3, mask_iou=0.98, min_matched=1.0):
    """Whether a :func:`summarize` result keeps to the tolerances; with the first failure.

    ``min_matched`` is the fraction of compared instances (of either side) that must have a
    partner; ``mask_iou`` bounds the mean mask IoU of the pairs.
    """
    compared = summary["compared"]
    if compared and summary["matched"] < min_matched * compared:
        return False, f"{summary['matched']} of {compared} instances found"
    if compared and summary["extra"] > (1 - min_matched) * compared:
        return False, f"{summary['extra']} instances found only in the export"
    if not compared and summary["extra"]:
        return False, f"{summary['extra']} instances found only in the export"
    if summary["max_box_diff"] is not None and summary["max_box_diff"] > box:
        return False, f"boxes differ by up to {summary['max_box_diff']:.3g} px"
    if summary["max_score_diff"] is not None and summary["max_score_diff"] > score:
        return False, f"scores differ by up to {summary['max_score_diff']:.3g}"
    if summary["mean_mask_iou"] is not None and summary["mean_mask_iou"] < mask_iou:
        return False, f"masks overlap with a mean IoU of {summary['mean_mask_iou']:.3f}"
    return True, ""
