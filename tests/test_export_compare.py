"""d2_finetune.export.compare: pairing two predictions of one image and measuring them."""

import torch

from detectron2.structures import Boxes, Instances

from d2_finetune.export.compare import match_instances, summarize, within


def _instances(boxes, scores, classes, masks=None):
    out = Instances((100, 100))
    out.pred_boxes = Boxes(torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4))
    out.scores = torch.tensor(scores)
    out.pred_classes = torch.tensor(classes)
    if masks is not None:
        out.pred_masks = torch.stack(masks)
    return out


def _mask(x0, x1):
    m = torch.zeros(100, 100, dtype=torch.bool)
    m[10:20, x0:x1] = True
    return m


def test_the_same_predictions_in_another_order_match_exactly():
    a = _instances(
        [[0, 0, 10, 10], [50, 50, 60, 70]], [0.9, 0.6], [1, 2], [_mask(0, 10), _mask(50, 60)]
    )
    b = a[torch.tensor([1, 0])]
    result = match_instances(a, b)
    assert result == {
        "compared": 2,
        "matched": 2,
        "missing": 0,
        "extra": 0,
        "max_box_diff": 0.0,
        "max_score_diff": 0.0,
        "min_mask_iou": 1.0,
        "mean_mask_iou": 1.0,
        "min_mask_iou_beyond_1px": None,
    }


def test_differences_are_measured_over_the_pairs():
    a = _instances(
        [[0, 0, 10, 10], [50, 50, 60, 70]], [0.9, 0.6], [1, 2], [_mask(0, 10), _mask(50, 60)]
    )
    b = _instances(
        [[0.5, 0, 10, 10], [50, 50, 60, 70.25]],
        [0.8995, 0.6],
        [1, 2],
        [_mask(0, 10), _mask(51, 60)],
    )
    result = match_instances(a, b)
    assert result["matched"] == 2
    assert result["max_box_diff"] == 0.5
    assert abs(result["max_score_diff"] - 0.0005) < 1e-6
    assert abs(result["min_mask_iou"] - 0.9) < 1e-6
    assert abs(result["mean_mask_iou"] - 0.95) < 1e-6
    assert abs(result["min_mask_iou_beyond_1px"] - 0.9) < 1e-6


def test_masks_differing_in_one_pixel_are_told_apart():
    one_off = _mask(0, 10)
    one_off[19, 9] = False  # 99 of 100 pixels
    a = _instances([[0, 0, 10, 10]], [0.9], [1], [_mask(0, 10)])
    b = _instances([[0, 0, 10, 10]], [0.9], [1], [one_off])
    result = match_instances(a, b)
    assert abs(result["min_mask_iou"] - 0.99) < 1e-6
    assert result["min_mask_iou_beyond_1px"] is None


def test_another_class_or_a_distant_box_is_no_partner():
    a = _instances([[0, 0, 10, 10], [50, 50, 60, 70]], [0.9, 0.6], [1, 2])
    b = _instances([[0, 0, 10, 10], [80, 80, 90, 90]], [0.9, 0.6], [3, 2])
    result = match_instances(a, b)
    assert (result["compared"], result["matched"], result["missing"], result["extra"]) == (
        2,
        0,
        2,
        2,
    )
    assert result["max_box_diff"] is None


def test_instances_at_the_threshold_may_lack_a_partner():
    # 0.5004 in one and 0.4996 in the other: on different sides of a 0.5 threshold.
    a = _instances([[0, 0, 10, 10], [50, 50, 60, 70]], [0.9, 0.5004], [1, 2])
    b = _instances([[0, 0, 10, 10]], [0.9], [1])
    result = match_instances(a, b, min_score=0.5)
    assert (result["compared"], result["missing"]) == (1, 0)
    # ... but not one clearly above it.
    a.scores[1] = 0.52
    assert match_instances(a, b, min_score=0.5)["missing"] == 1


def test_summary_and_tolerances():
    a = _instances([[0, 0, 10, 10]], [0.9], [1], [_mask(0, 10)])
    b = _instances([[2, 0, 10, 10]], [0.9], [1], [_mask(0, 10)])
    summary = summarize([match_instances(a, a), match_instances(a, b)])
    assert summary["images"] == 2 and summary["compared"] == 2 and summary["max_box_diff"] == 2.0
    assert within(summary) == (False, "boxes differ by up to 2 px")
    assert within(summary, box=2.0) == (True, "")
    missing = summarize([match_instances(a, _instances(torch.zeros(0, 4), [], []))])
    assert within(missing) == (False, "0 of 1 instances found")
    extra = summarize([match_instances(_instances(torch.zeros(0, 4), [], []), a)])
    assert within(extra) == (False, "1 instances found only in the export")
