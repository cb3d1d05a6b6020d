"""The official AP curve and the per-image matching of d2_finetune.evaluation.cityscapes_metric.

Scoring against cityscapesscripts itself is in test_evaluation_cityscapes.py.
"""

import numpy as np
import pytest

from d2_finetune.evaluation.cityscapes_metric import (
    INSTANCE_LABELS,
    average_precision,
    average_precisions,
    match_image,
)


def test_curve_of_a_false_positive_above_a_true_positive():
    # Thresholds 0.5 (tp 1, fp 1: P 1/2, R 1) and 0.9 (tp 0, fp 1: P 0, R 0), then the
    # artificial (P 1, R 0); centred step widths 1/2, 1/2, 0: AP = 1/2 * 1/2.
    assert average_precision([1, 0], [0.5, 0.9], 0) == 0.25


def test_curve_of_a_duplicate_below_the_match():
    # Thresholds 0.5 (P 1/2, R 1) and 0.9 (P 1, R 1), then (P 1, R 0): widths 0, 1/2, 1/2.
    assert average_precision([1, 0], [0.9, 0.5], 0) == 1.0


def test_missed_ground_truth_lowers_recall():
    # One of two found at the only threshold: P 1, R 1/2; widths 1/4, 1/4: AP = 1/2.
    assert average_precision([1], [0.7], 1) == 0.5


def test_tied_scores_do_not_depend_on_order():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 2, size=40).astype(float)
    y_score = rng.choice([0.25, 0.5, 0.75], size=40)
    expected = average_precision(y_true, y_score, 3)
    assert 0 < expected < 1
    for _ in range(5):
        order = rng.permutation(40)
        assert average_precision(y_true[order], y_score[order], 3) == expected


def test_no_scored_example_gives_0():
    assert average_precision([], [], 2) == 0.0


def _image():
    ids = np.full((20, 30), 7, dtype=np.uint16)
    ids[0:10, 0:12] = 26000  # car, 120 px
    ids[10:20, 0:5] = 0  # void
    ids[12:20, 20:30] = 26  # cargroup
    return ids


def test_matching_keeps_the_official_counts():
    ids = _image()
    masks = np.zeros((3, 20, 30), dtype=bool)
    masks[0, 0:10, 2:14] = True  # car shifted by 2: 100 px on the car, 20 on road
    masks[1, 10:20, 0:10] = True  # 50 px void, 50 road
    masks[2, 0:5, 0:5] = True  # a class that is not evaluated: dropped
    car = INSTANCE_LABELS.index("car")
    m = match_image(ids, masks, [car, car, -1], [0.5, 0.75, 0.9])
    assert m.gt_id.tolist() == [26, 26000] and m.gt_pixels.tolist() == [80, 120]
    assert m.pred_pixels.tolist() == [120, 100] and m.pred_void.tolist() == [0, 50]
    assert m.pred_score.tolist() == [0.5, 0.75]
    assert list(zip(m.pair_pred, m.pair_gt, m.pair_pixels)) == [(0, 1, 100)]
    ap = average_precisions([m])
    # IoU 100 / 140 = 0.714: a match up to threshold 0.7. The other prediction is only half
    # void (not over the threshold), so a false positive above it: AP 1/4 (see the curve tests)
    # up to 0.7, then 0.
    assert ap[car].tolist() == [0.25] * 5 + [0.0] * 5
    assert np.isnan(ap[INSTANCE_LABELS.index("person")]).all()


def test_bad_arguments_are_refused():
    ids = _image()
    masks = np.zeros((1, 20, 30), dtype=bool)
    with pytest.raises(ValueError, match="must be integers, got float64"):
        match_image(ids.astype(float), masks, [0], [0.5])
    with pytest.raises(ValueError, match="non-negative"):
        match_image(ids.astype(np.int32) - 1, masks, [0], [0.5])
    with pytest.raises(ValueError, match=r"shape \(10, 30\) do not match .* \(20, 30\)"):
        match_image(ids, masks[:, :10], [0], [0.5])
    with pytest.raises(ValueError, match=r"must be \(N, H, W\), got shape \(20, 30\)"):
        match_image(ids, masks[0], [0], [0.5])
    with pytest.raises(ValueError, match="1 masks but 2 classes and 1 scores"):
        match_image(ids, masks, [0, 1], [0.5])


def test_ground_truth_is_read_with_the_values_pil_gives(tmp_path):
    from PIL import Image

    from d2_finetune.data.common import write_uint16_png
    from d2_finetune.evaluation.cityscapes_metric import read_instance_ids

    rng = np.random.default_rng(0)
    ids16 = rng.choice([0, 7, 26, 26000, 26001, 33999], size=(40, 64))
    write_uint16_png(str(tmp_path / "a.png"), ids16)
    ids8 = rng.choice([0, 7, 24, 255], size=(40, 64)).astype(np.uint8)
    Image.fromarray(ids8).save(tmp_path / "b.png")
    palette = Image.fromarray(ids8 % 4).convert("P")
    palette.save(tmp_path / "c.png")
    for name in ("a.png", "b.png", "c.png"):
        expected = np.array(Image.open(tmp_path / name))
        got = read_instance_ids(str(tmp_path / name))
        assert got.shape == expected.shape and np.array_equal(got, expected), name
    assert np.array_equal(read_instance_ids(str(tmp_path / "a.png")), ids16)


@pytest.mark.parametrize("width", [64, 61])
def test_crops_are_the_masks_bounding_boxes(width):
    from d2_finetune.evaluation.cityscapes_metric import crop_predictions

    rng = np.random.default_rng(width)
    masks = np.zeros((6, 24, width), dtype=bool)
    for mask in masks[:5]:
        y, x = rng.integers(0, 20), rng.integers(0, width - 4)
        mask[y : y + rng.integers(1, 5), x : x + rng.integers(1, 5)] = True
        mask[rng.integers(0, 24), rng.integers(0, width)] = True
    crops = crop_predictions(masks, [0, 1, 2, -1, 3, 4], np.linspace(0.1, 0.6, 6))
    kept = [0, 1, 2, 4]  # -1: not evaluated; the last mask is empty
    assert crops.classes.tolist() == [0, 1, 2, 3] and crops.image_shape == (24, width)
    for i, box, crop in zip(kept, crops.boxes.tolist(), crops.masks):
        ys, xs = np.nonzero(masks[i])
        assert box == [ys.min(), ys.max() + 1, xs.min(), xs.max() + 1]
        assert np.array_equal(crop, masks[i][box[0] : box[1], box[2] : box[3]])
