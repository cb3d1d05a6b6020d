"""The Cityscapes instance-level AP of cityscapesscripts, computed from in-memory statistics.

``cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling`` reads one PNG per predicted
mask, intersects it with the ``*_gtFine_instanceIds.png`` of its image and then scores all
images together. The scoring needs only a few numbers per prediction, so this module splits the
work in two:

* :func:`match_image` (:func:`crop_predictions`, then :func:`match_crops`) intersects the
  predictions of one image with its ground truth and keeps the counts the official script uses
  (pixel counts, void pixels, intersection with every ground truth instance of the same class,
  score): a few hundred bytes per image. Each full-size mask is read once, to find its bounding
  box; only the boxes are intersected.
* :func:`average_precisions` scores any collection of those per-image statistics with the
  official rules: overlap thresholds 0.5:0.95:0.05, ground truth regions under 100 pixels and
  ``<class>group`` regions neither counted nor penalised, predictions lying mostly on void or
  ignored regions not counted as false positives, duplicate matches as false positives, and the
  official precision/recall curve (ties by score threshold, an artificial point at recall 0) and
  its step-wise integral.

Both produce the official numbers to floating-point identity; the differences are that nothing
is written to disk and a class with ground truth whose predictions are all ignored scores 0
where the official script stops with an ``IndexError``.
"""

import struct
import warnings
from typing import NamedTuple

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "INSTANCE_LABELS",
    "OVERLAPS",
    "MIN_REGION_SIZE",
    "ImageMatches",
    "PredictionCrops",
    "label_tables",
    "read_instance_ids",
    "crop_predictions",
    "match_crops",
    "match_image",
    "average_precisions",
    "average_precision",
    "summarize",
]

# evalInstanceLevelSemanticLabeling's args.overlaps and args.minRegionSizes[0]; its distance
# thresholds are infinite unless args.distanceAvailable, which Cityscapes' gtFine never sets.
OVERLAPS = np.arange(0.5, 1.0, 0.05)
MIN_REGION_SIZE = 100
# Ground truth values below this are "<class>group" (crowd) regions, above it single instances.
GROUP_ID_LIMIT = 1000
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def label_tables():
    """(instance label names, void label ids, label id -> name) as cityscapesscripts defines them.

    The evaluated classes are the labels with instances that are not ignored in evaluation
    (person, rider, car, truck, bus, train, motorcycle, bicycle, in label-id order); void pixels
    are those whose raw ground truth value is the id of a label ignored in evaluation.
    """
    from cityscapesscripts.helpers.labels import labels

    names = [lb.name for lb in labels if lb.hasInstances and not lb.ignoreInEval]
    void_ids = sorted(lb.id for lb in labels if lb.ignoreInEval and lb.id >= 0)
    id_to_name = {lb.id: lb.name for lb in labels}
    return names, void_ids, id_to_name


INSTANCE_LABELS, VOID_IDS, _ID_TO_NAME = label_tables()
_CLASS_OF_LABEL_ID = {
    label_id: INSTANCE_LABELS.index(name)
    for label_id, name in _ID_TO_NAME.items()
    if name in INSTANCE_LABELS
}
_VOID_IDS = np.asarray(VOID_IDS, dtype=np.int64)
# Every value of an evaluated instance or group region is at least the smallest evaluated id.
_MIN_INSTANCE_VALUE = min(_CLASS_OF_LABEL_ID)


class ImageMatches(NamedTuple):
    """What the official scoring needs to know about one image.

    Classes are indices into :data:`INSTANCE_LABELS`. Ground truth rows are every instance and
    group region of an evaluated class; prediction rows are the non-empty predictions of an
    evaluated class; pair rows are (prediction, ground truth) of the same class that intersect.
    """

    gt_class: np.ndarray  # int64 (G,)
    gt_id: np.ndarray  # int64 (G,): raw instanceIds value, < 1000 for groups
    gt_pixels: np.ndarray  # int64 (G,)
    pred_class: np.ndarray  # int64 (P,)
    pred_score: np.ndarray  # float64 (P,)
    pred_pixels: np.ndarray  # int64 (P,)
    pred_void: np.ndarray  # int64 (P,): pixels on void ground truth
    pair_pred: np.ndarray  # int64 (M,)
    pair_gt: np.ndarray  # int64 (M,)
    pair_pixels: np.ndarray  # int64 (M,): intersection


def read_instance_ids(path):
    """A ``*_gtFine_instanceIds.png`` as an integer array: the values cityscapesscripts reads
    with ``np.array(Image.open(path))``.

    8- and 16-bit grayscale PNGs (as Cityscapes' are) are decoded by OpenCV straight into an
    array, which is faster; their values are the same. Other files are read with PIL, as
    upstream.
    """
    with open(path, "rb") as f:
        header = f.read(26)
    if header[:8] == _PNG_SIGNATURE and header[12:16] == b"IHDR":
        width, height, depth, colour = struct.unpack(">IIBB", header[16:26])
        if colour == 0 and depth in (8, 16):
            ids = cv2.imread(path, cv2.IMREAD_UNCHANGED)
            if ids is not None and ids.shape == (height, width):
                return ids
    with Image.open(path) as image:
        return np.array(image)


def class_of_label_id(label_id):
    """Index into :data:`INSTANCE_LABELS` of a Cityscapes label id, or -1 if not evaluated."""
    return _CLASS_OF_LABEL_ID.get(int(label_id), -1)


def _ground_truth(instance_ids):
    """(class, raw value, pixel count) of every instance and group region of an evaluated class,
    as cityscapesscripts' instances2dict lists them."""
    counts = np.bincount(instance_ids[instance_ids >= _MIN_INSTANCE_VALUE])
    values = np.flatnonzero(counts)
    rows = []
    for value in values.tolist():
        label_id = value if value < GROUP_ID_LIMIT else value // GROUP_ID_LIMIT
        cls = _CLASS_OF_LABEL_ID.get(label_id, -1)
        if cls >= 0:
            rows.append((cls, value, int(counts[value])))
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3).T


def _bounding_box(mask):
    """(y0, y1, x0, x1) of the nonzero pixels of a 2-D bool mask, or None if it is empty.

    Rows and columns are scanned eight pixels at a time when the row length allows it.
    """
    if mask.flags.c_contiguous and mask.shape[1] % 8 == 0:
        words = mask.view(np.uint64)
        rows = np.flatnonzero(np.bitwise_or.reduce(words, axis=1))
        if not len(rows):
            return None
        y0, y1 = rows[0], rows[-1] + 1
        cols = np.flatnonzero(np.bitwise_or.reduce(words[y0:y1], axis=0).view(bool))
    else:
        rows = np.flatnonzero(mask.any(axis=1))
        if not len(rows):
            return None
        y0, y1 = rows[0], rows[-1] + 1
        cols = np.flatnonzero(mask[y0:y1].any(axis=0))
    return y0, y1, cols[0], cols[-1] + 1


class PredictionCrops(NamedTuple):
    """One image's evaluated, non-empty predictions cut to their bounding boxes: all that
    matching needs from the full-size masks."""

    image_shape: tuple  # (H, W)
    classes: np.ndarray  # int64 (K,): indices into INSTANCE_LABELS
    scores: np.ndarray  # float64 (K,)
    boxes: np.ndarray  # int64 (K, 4): y0, y1, x0, x1
    masks: list  # K bool arrays of shape (y1 - y0, x1 - x0)


def crop_predictions(masks, classes, scores):
    """Cut one image's predictions to their bounding boxes.

    Args:
        masks: (N, H, W) array; nonzero pixels belong to the prediction.
        classes: (N,) indices into :data:`INSTANCE_LABELS`; -1 marks a prediction of a class
            that is not evaluated (it is dropped, as the official script drops it).
        scores: (N,) confidences.

    Returns:
        PredictionCrops, without empty masks (which the official script skips).
    """
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must be (N, H, W), got shape {masks.shape}")
    classes = np.asarray(classes, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(classes) != len(masks) or len(scores) != len(masks):
        raise ValueError(f"{len(masks)} masks but {len(classes)} classes and {len(scores)} scores")
    kept, boxes, crops = [], [], []
    for i in np.flatnonzero(classes >= 0).tolist():
        mask = masks[i] if masks.dtype == bool else masks[i] != 0
        box = _bounding_box(mask)
        if box is None:
            continue
        y0, y1, x0, x1 = box
        kept.append(i)
        boxes.append(box)
        crops.append(mask[y0:y1, x0:x1].copy())
    return PredictionCrops(
        image_shape=tuple(masks.shape[1:]),
        classes=classes[kept],
        scores=scores[kept],
        boxes=np.asarray(boxes, dtype=np.int64).reshape(-1, 4),
        masks=crops,
    )


def match_crops(instance_ids, crops):
    """Intersect one image's cropped predictions with its instanceIds ground truth.

    Returns:
        ImageMatches
    """
    instance_ids = np.asarray(instance_ids)
    if instance_ids.dtype.kind not in "ui":
        raise ValueError(f"instance ids must be integers, got {instance_ids.dtype}")
    if instance_ids.dtype.kind == "i" and instance_ids.size and instance_ids.min() < 0:
        raise ValueError("instance ids must be non-negative")
    if tuple(crops.image_shape) != instance_ids.shape:
        raise ValueError(
            f"masks of shape {tuple(crops.image_shape)} do not match instance ids "
            f"of shape {instance_ids.shape}"
        )

    gt_class, gt_id, gt_pixels = _ground_truth(instance_ids)
    gt_rows_of_class = {c: np.flatnonzero(gt_class == c) for c in np.unique(gt_class).tolist()}
    pred_pixels, pred_void, pairs = [], [], []
    for k, ((y0, y1, x0, x1), mask) in enumerate(zip(crops.boxes.tolist(), crops.masks)):
        under = instance_ids[y0:y1, x0:x1][mask]
        hist = np.bincount(under)
        for g in gt_rows_of_class.get(int(crops.classes[k]), ()):
            value = gt_id[g]
            if value < len(hist) and hist[value]:
                pairs.append((k, g, hist[value]))
        pred_pixels.append(under.size)
        pred_void.append(hist[_VOID_IDS[_VOID_IDS < len(hist)]].sum())

    pair = np.asarray(pairs, dtype=np.int64).reshape(-1, 3).T
    return ImageMatches(
        gt_class=gt_class,
        gt_id=gt_id,
        gt_pixels=gt_pixels,
        pred_class=crops.classes,
        pred_score=crops.scores,
        pred_pixels=np.asarray(pred_pixels, dtype=np.int64),
        pred_void=np.asarray(pred_void, dtype=np.int64),
        pair_pred=pair[0],
        pair_gt=pair[1],
        pair_pixels=pair[2],
    )


def match_image(instance_ids, masks, classes, scores):
    """Intersect one image's predictions with its ground truth.

    Args:
        instance_ids: (H, W) non-negative integer array, the image's instanceIds ground truth.
        masks, classes, scores: as for :func:`crop_predictions`.

    Returns:
        ImageMatches
    """
    return match_crops(instance_ids, crop_predictions(masks, classes, scores))


def _concatenate(images):
    """All images' statistics as one :class:`ImageMatches` with global row indices."""
    images = list(images)
    if not images:
        empty_i, empty_f = np.zeros(0, np.int64), np.zeros(0, np.float64)
        return ImageMatches(
            empty_i, empty_i, empty_i, empty_i, empty_f, empty_i, empty_i, empty_i, empty_i, empty_i
        )
    gt_offsets = np.cumsum([0] + [len(m.gt_id) for m in images[:-1]])
    pred_offsets = np.cumsum([0] + [len(m.pred_score) for m in images[:-1]])
    return ImageMatches(
        gt_class=np.concatenate([m.gt_class for m in images]),
        gt_id=np.concatenate([m.gt_id for m in images]),
        gt_pixels=np.concatenate([m.gt_pixels for m in images]),
        pred_class=np.concatenate([m.pred_class for m in images]),
        pred_score=np.concatenate([m.pred_score for m in images]),
        pred_pixels=np.concatenate([m.pred_pixels for m in images]),
        pred_void=np.concatenate([m.pred_void for m in images]),
        pair_pred=np.concatenate([m.pair_pred + o for m, o in zip(images, pred_offsets)]),
        pair_gt=np.concatenate([m.pair_gt + o for m, o in zip(images, gt_offsets)]),
        pair_pixels=np.concatenate([m.pair_pixels for m in images]),
    )


def average_precision(y_true, y_score, hard_false_negatives):
    """evalInstanceLevelSemanticLabeling's AP of one class at one overlap threshold.

    Precision and recall are taken at every distinct score (all examples scoring at least that
    much count as detections, so ties never depend on order), an artificial point (recall 0,
    precision 1) closes the curve, and the curve is integrated step-wise with the official
    centred step widths. With no scored example at all the AP is 0 (the official script raises
    ``IndexError`` there).
    """
    y_true = np.asarray(y_true, dtype=np.float64)
    y_score = np.asarray(y_score, dtype=np.float64)
    if not len(y_score):
        return 0.0
    order = np.argsort(y_score)
    y_score_sorted = y_score[order]
    cumsum = np.cumsum(y_true[order])
    _, unique_indices = np.unique(y_score_sorted, return_index=True)
    num_examples = len(y_score_sorted)
    num_true = cumsum[-1]
    below = np.append(cumsum, 0)[unique_indices - 1]
    tp = num_true - below
    fp = num_examples - unique_indices - tp
    fn = below + hard_false_negatives
    precision = np.append(tp / (tp + fp), 1.0)
    recall = np.append(tp / (tp + fn), 0.0)
    padded = np.concatenate([recall[:1], recall, [0.0]])
    step_widths = np.convolve(padded, [-0.5, 0, 0.5], "valid")
    return float(np.dot(precision, step_widths))


def average_precisions(images, overlaps=OVERLAPS, min_region_size=MIN_REGION_SIZE):
    """The official AP matrix over all given images.

    Args:
        images: iterable of :class:`ImageMatches`, one per image.

    Returns:
        (len(INSTANCE_LABELS), len(overlaps)) float array: AP per class and overlap threshold;
        NaN for a class without (counted) ground truth, 0 for one with ground truth but no
        prediction.
    """
    m = _concatenate(images)
    num_classes = len(INSTANCE_LABELS)
    ap = np.full((num_classes, len(overlaps)), np.nan)

    is_group = m.gt_id < GROUP_ID_LIMIT
    is_small = m.gt_pixels < min_region_size
    counted = ~is_group & ~is_small
    num_counted = np.bincount(m.gt_class[counted], minlength=num_classes)
    has_pred = np.bincount(m.pred_class, minlength=num_classes) > 0

    union = m.gt_pixels[m.pair_gt] + m.pred_pixels[m.pair_pred] - m.pair_pixels
    pair_overlap = m.pair_pixels / union
    # Pixels a prediction shares with ignored regions; a small group counts twice, as upstream.
    pair_ignored = m.pair_pixels * (is_group[m.pair_gt].astype(np.int64) + is_small[m.pair_gt])
    ignored = m.pred_void + np.bincount(
        m.pair_pred, weights=pair_ignored, minlength=len(m.pred_score)
    ).astype(np.int64)
    ignored_share = ignored / m.pred_pixels

    for t, threshold in enumerate(overlaps):
        matched = pair_overlap > threshold
        # Ground truth side: the best-scoring match is a true positive, other matches are
        # false positives.
        hit = matched & counted[m.pair_gt]
        hit_gt, hit_score = m.pair_gt[hit], m.pred_score[m.pair_pred[hit]]
        order = np.lexsort((-hit_score, hit_gt))
        hit_gt, hit_score = hit_gt[order], hit_score[order]
        best = np.ones(len(hit_gt), dtype=bool)
        best[1:] = hit_gt[1:] != hit_gt[:-1]
        hit_class = m.gt_class[hit_gt]
        # Prediction side: unmatched predictions are false positives unless mostly ignored.
        has_match = np.zeros(len(m.pred_score), dtype=bool)
        has_match[m.pair_pred[matched]] = True
        false_pos = ~has_match & (ignored_share <= threshold)
        found = np.bincount(hit_class[best], minlength=num_classes)

        for c in range(num_classes):
            if not num_counted[c]:
                continue
            if not has_pred[c]:
                ap[c, t] = 0.0
                continue
            tp_scores = hit_score[best & (hit_class == c)]
            fp_scores = np.concatenate(
                [
                    hit_score[~best & (hit_class == c)],
                    m.pred_score[false_pos & (m.pred_class == c)],
                ]
            )
            y_true = np.concatenate([np.ones(len(tp_scores)), np.zeros(len(fp_scores))])
            y_score = np.concatenate([tp_scores, fp_scores])
            ap[c, t] = average_precision(y_true, y_score, num_counted[c] - found[c])
    return ap


def summarize(ap, overlaps=OVERLAPS):
    """The official averages of an AP matrix, in percent.

    ``AP`` averages over classes and thresholds ignoring NaN (classes without ground truth),
    ``AP50`` over classes at overlap 0.5; per class, ``AP-<class>`` and ``AP50-<class>``.
    """
    o50 = int(np.flatnonzero(np.isclose(overlaps, 0.5))[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all NaN: no class has ground truth
        results = {"AP": 100 * float(np.nanmean(ap)), "AP50": 100 * float(np.nanmean(ap[:, o50]))}
    for c, name in enumerate(INSTANCE_LABELS):
        results[f"AP-{name}"] = 100 * float(np.average(ap[c]))
    for c, name in enumerate(INSTANCE_LABELS):
        results[f"AP50-{name}"] = 100 * float(ap[c, o50])
    return results
