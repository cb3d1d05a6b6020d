"""KITTI's 2D object detection AP (easy / moderate / hard), as the official devkit computes it.

The rules are those of the devkit's ``evaluate_object.cpp`` (2D boxes, "image" metric):

* difficulties: a ground-truth box counts at a level if its height exceeds 40 / 25 / 25
  pixels, its ``occluded`` level is at most 0 / 1 / 2 and its ``truncated`` share at most
  0.15 / 0.3 / 0.5 (easy / moderate / hard); other boxes of the class are ignored (neither
  missed nor matched). Detections lower than the minimum height are ignored too;
* neighbouring classes: ``Van`` boxes are ignored when evaluating ``Car``, ``Person_sitting``
  boxes when evaluating ``Pedestrian``; a detection matched to an ignored box is not a false
  positive;
* ``DontCare`` regions: an unmatched detection whose area lies more than the IoU threshold
  inside one is not a false positive;
* a match needs an IoU above 0.7 for cars and 0.5 for pedestrians and cyclists;
* AP over 40 recall positions (AP|R40, the devkit's metric since 2019): precision is sampled
  at score thresholds chosen so that recall steps by about 1/40, made monotone, and averaged
  over positions 1/40 ... 40/40. Recall is sampled at true positives, so with fewer than 40
  ground-truth boxes even perfect detections score below 100: n <= 40 boxes, all found with
  no false positive, give ``(n - 1) / 40``, exactly as the devkit reports.

:func:`kitti_average_precision` computes one class at one difficulty from label-file objects;
:class:`KittiEvaluator` runs it on a detectron2 model's predictions.
"""

import logging
import math
import os
from collections import OrderedDict

import numpy as np
from tabulate import tabulate

from detectron2.data import MetadataCatalog
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm

from ..data.kitti import parse_kitti_label
from ..errors import ConfigError

__all__ = [
    "KITTI_DIFFICULTIES",
    "KITTI_MIN_OVERLAP",
    "KittiEvaluator",
    "kitti_average_precision",
]

logger = logging.getLogger(__name__)

KITTI_DIFFICULTIES = ("easy", "moderate", "hard")
MIN_HEIGHT = (40, 25, 25)
MAX_OCCLUSION = (0, 1, 2)
MAX_TRUNCATION = (0.15, 0.3, 0.5)
KITTI_MIN_OVERLAP = {"Car": 0.7, "Pedestrian": 0.5, "Cyclist": 0.5}
NEIGHBOURS = {"car": "van", "pedestrian": "person_sitting"}
N_SAMPLE_PTS = 41


def _boxes(items):
    return np.asarray([o["bbox"] for o in items], dtype=np.float64).reshape(-1, 4)


def _overlaps(dets, others, criterion):
    """(len(others), len(dets)) overlaps: IoU (criterion "union") or the intersection's share
    of the detection's area ("det"); 0 where the boxes do not overlap."""
    x1 = np.maximum(dets[None, :, 0], others[:, None, 0])
    y1 = np.maximum(dets[None, :, 1], others[:, None, 1])
    x2 = np.minimum(dets[None, :, 2], others[:, None, 2])
    y2 = np.minimum(dets[None, :, 3], others[:, None, 3])
    w, h = x2 - x1, y2 - y1
    inter = w * h
    det_area = (dets[:, 2] - dets[:, 0]) * (dets[:, 3] - dets[:, 1])
    with np.errstate(divide="ignore", invalid="ignore"):
        if criterion == "union":
            other_area = (others[:, 2] - others[:, 0]) * (others[:, 3] - others[:, 1])
            result = inter / (det_area[None, :] + other_area[:, None] - inter)
        else:
            result = inter / det_area[None, :]
    return np.where((w > 0) & (h > 0), result, 0.0)


class _Frame:
    """One image's boxes for one class and difficulty, after the devkit's ``cleanData``.

    Ground truth of other classes and detections of other classes (unless too small, which
    the devkit marks as ignored whatever their class) play no part and are dropped.
    """

    def __init__(self, gt, det, cls, level):
        cls = cls.lower()
        neighbour = NEIGHBOURS.get(cls)
        ignored_gt, kept_gt = [], []
        for obj in gt:
            kind = obj["type"].lower()
            valid = 1 if kind == cls else 0 if kind == neighbour else -1
            x1, y1, x2, y2 = obj["bbox"]
            ignore = (
                obj["occluded"] > MAX_OCCLUSION[level]
                or obj["truncated"] > MAX_TRUNCATION[level]
                or y2 - y1 <= MIN_HEIGHT[level]
            )
            if valid == 1 and not ignore:
                flag = 0
            elif valid == 0 or valid == 1:
                flag = 1
            else:
                continue
            ignored_gt.append(flag)
            kept_gt.append(obj)
        ignored_det, kept_det = [], []
        for d in det:
            x1, y1, x2, y2 = d["bbox"]
            if int(abs(y1 - y2)) < MIN_HEIGHT[level]:
                flag = 1
            elif d["type"].lower() == cls:
                flag = 0
            else:
                continue
            ignored_det.append(flag)
            kept_det.append(d)
        self.ignored_gt = np.asarray(ignored_gt, dtype=np.int64)
        self.ignored_det = np.asarray(ignored_det, dtype=np.int64)
        self.scores = np.asarray([d["score"] for d in kept_det], dtype=np.float64)
        self.n_gt = int((self.ignored_gt == 0).sum())
        dets = _boxes(kept_det)
        self.iou = _overlaps(dets, _boxes(kept_gt), "union")
        dontcare = [o for o in gt if o["type"].lower() == "dontcare"]
        self.dontcare = _overlaps(dets, _boxes(dontcare), "det")

    def true_positive_scores(self, min_overlap):
        """Scores of the true positives when each box takes the highest-scoring overlapping
        detection (the devkit's first pass, which picks the score thresholds)."""
        assigned = np.zeros(len(self.scores), dtype=bool)
        scores = []
        for i, flag in enumerate(self.ignored_gt):
            candidates = ~assigned & (self.iou[i] > min_overlap)
            if not candidates.any():
                continue
            j = int(np.argmax(np.where(candidates, self.scores, -np.inf)))
            assigned[j] = True
            if flag == 0 and self.ignored_det[j] == 0:
                scores.append(self.scores[j])
        return scores

    def statistics(self, thresholds, min_overlap):
        """True positives, false positives and misses at each score threshold, with each box
        taking the overlapping detection of largest IoU (the devkit's second pass)."""
        num_t, num_d = len(thresholds), len(self.scores)
        if num_d == 0:
            zeros = np.zeros(num_t, dtype=np.int64)
            return zeros, zeros.copy(), np.full(num_t, self.n_gt, dtype=np.int64)
        eligible = self.scores[None, :] >= thresholds[:, None]
        assigned = np.zeros((num_t, num_d), dtype=bool)
        valid_det, ignored_det = self.ignored_det == 0, self.ignored_det == 1
        tp = np.zeros(num_t, dtype=np.int64)
        fn = np.zeros(num_t, dtype=np.int64)
        rows = np.arange(num_t)
        for i, flag in enumerate(self.ignored_gt):
            candidates = eligible & ~assigned & (self.iou[i] > min_overlap)[None, :]
            valid = candidates & valid_det[None, :]
            fallback = candidates & ignored_det[None, :]
            has_valid, has_fallback = valid.any(axis=1), fallback.any(axis=1)
            best_valid = np.argmax(np.where(valid, self.iou[i][None, :], -1.0), axis=1)
            first_fallback = np.argmax(fallback, axis=1)
            chosen = np.where(has_valid, best_valid, first_fallback)
            found = has_valid | has_fallback
            assigned[rows[found], chosen[found]] = True
            if flag == 0:
                fn += ~found
                tp += has_valid
        unassigned = eligible & ~assigned & valid_det[None, :]
        in_dontcare = (self.dontcare > min_overlap).any(axis=0)
        fp = (unassigned & ~in_dontcare[None, :]).sum(axis=1)
        return tp, fp, fn


def _thresholds(scores, n_gt):
    """The devkit's ``getThresholds``: scores at which recall is closest to 0, 1/40, 2/40..."""
    scores = sorted(scores, reverse=True)
    chosen, current = [], 0.0
    for i, score in enumerate(scores):
        left = (i + 1) / n_gt
        last = i == len(scores) - 1
        right = left if last else (i + 2) / n_gt
        if not last and (right - current) < (current - left):
            continue
        chosen.append(score)
        current += 1.0 / (N_SAMPLE_PTS - 1.0)
    return np.asarray(chosen[:N_SAMPLE_PTS], dtype=np.float64)


def kitti_average_precision(gt_frames, det_frames, cls, difficulty, min_overlap=None):
    """KITTI AP|R40 in percent of class ``cls`` at ``difficulty`` over a list of images.

    Args:
        gt_frames: per image, the objects of its label file (:func:`parse_kitti_label`): dicts
            with ``type``, ``bbox`` (x1, y1, x2, y2), ``truncated`` and ``occluded``.
        det_frames: per image, detections as dicts with ``type``, ``bbox`` and ``score``.
        cls: a KITTI type, e.g. "Car".
        difficulty: "easy", "moderate" or "hard".
        min_overlap: IoU a match must exceed; default the official one of ``cls``.

    Returns:
        float: AP in [0, 100]; NaN when no ground-truth box counts at this difficulty.
    """
    if len(gt_frames) != len(det_frames):
        raise ValueError(
            f"{len(gt_frames)} ground-truth frames but {len(det_frames)} detection frames"
        )
    if min_overlap is None:
        min_overlap = KITTI_MIN_OVERLAP[cls]
    level = KITTI_DIFFICULTIES.index(difficulty)
    frames = [_Frame(g, d, cls, level) for g, d in zip(gt_frames, det_frames)]
    n_gt = sum(f.n_gt for f in frames)
    if n_gt == 0:
        return float("nan")
    scores = [s for f in frames for s in f.true_positive_scores(min_overlap)]
    thresholds = _thresholds(scores, n_gt)
    if len(thresholds) == 0:
        return 0.0
    tp = np.zeros(len(thresholds), dtype=np.int64)
    fp = np.zeros(len(thresholds), dtype=np.int64)
    for f in frames:
        if len(f.scores):
            t, p, _ = f.statistics(thresholds, min_overlap)
            tp += t
            fp += p
    precision = np.zeros(N_SAMPLE_PTS)
    # 0 / 0 (no counted detection at a threshold) is taken as precision 0.
    precision[: len(thresholds)] = np.where(tp + fp > 0, tp / np.maximum(tp + fp, 1), 0.0)
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    return float(precision[1:].sum() / (N_SAMPLE_PTS - 1) * 100)


def _mean(values):
    values = [v for v in values if not math.isnan(v)]
    return sum(values) / len(values) if values else float("nan")


class KittiEvaluator(DatasetEvaluator):
    """KITTI AP|R40 (easy / moderate / hard) of a dataset registered by
    :func:`d2_finetune.data.register_kitti`, from its label files.

    ``evaluate()`` returns ``{"bbox": {"AP_easy", "AP_moderate", "AP_hard", "AP_<level>-<class>",
    ...}}`` in percent; the unsuffixed values average the classes (KITTI ranks by moderate).
    """

    def __init__(self, dataset_name, classes=None, min_overlaps=None, output_dir=None):
        """
        Args:
            dataset_name: the registered dataset (its metadata has ``label_dir`` and
                ``thing_classes``).
            classes: KITTI types to evaluate; default Car, Pedestrian and Cyclist, the
                benchmark's.
            min_overlaps: {type: IoU a match must exceed}; default 0.7 for Car, 0.5 for
                Pedestrian and Cyclist.
            output_dir: if given, the detections are also written there as KITTI result files
                (``<output_dir>/data/<frame>.txt``), which the official devkit reads.
        """
        meta = MetadataCatalog.get(dataset_name)
        self._label_dir = meta.get("label_dir")
        if self._label_dir is None:
            raise ConfigError(
                f"KittiEvaluator: dataset '{dataset_name}' has no label_dir in its metadata; "
                "register it with d2_finetune.data.register_kitti."
            )
        self._class_names = list(meta.thing_classes)
        self._min_overlaps = dict(min_overlaps or KITTI_MIN_OVERLAP)
        self._classes = list(classes or self._min_overlaps)
        unknown = [c for c in self._classes if c not in self._min_overlaps]
        if unknown:
            raise ConfigError(
                f"KittiEvaluator: no IoU threshold for {unknown}; give min_overlaps for them."
            )
        self._output_dir = output_dir
        self.reset()

    def reset(self):
        self._detections = {}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            frame = os.path.splitext(os.path.basename(inp["file_name"]))[0]
            instances = out["instances"].to("cpu")
            self._detections[frame] = [
                {"type": self._class_names[c], "bbox": box, "score": score}
                for box, score, c in zip(
                    instances.pred_boxes.tensor.tolist(),
                    instances.scores.tolist(),
                    instances.pred_classes.tolist(),
                )
            ]

    def _write_results(self, detections):
        folder = os.path.join(self._output_dir, "data")
        os.makedirs(folder, exist_ok=True)
        for frame, dets in detections.items():
            with open(os.path.join(folder, frame + ".txt"), "w") as f:
                for d in dets:
                    f.write(
                        "%s -1 -1 -10 %.2f %.2f %.2f %.2f -1 -1 -1 -1000 -1000 -1000 -10 %.4f\n"
                        % (d["type"], *d["bbox"], d["score"])
                    )

    def evaluate(self):
        gathered = comm.gather(self._detections, dst=0)
        if not comm.is_main_process():
            return {}
        detections = {}
        for part in gathered:
            detections.update(part)
        if not detections:
            logger.warning("KittiEvaluator received no predictions.")
            return {}
        if self._output_dir:
            self._write_results(detections)
        frames = sorted(detections)
        gt = [parse_kitti_label(os.path.join(self._label_dir, f + ".txt")) for f in frames]
        det = [detections[f] for f in frames]
        table = {}
        for cls in self._classes:
            for difficulty in KITTI_DIFFICULTIES:
                table[cls, difficulty] = kitti_average_precision(
                    gt, det, cls, difficulty, self._min_overlaps[cls]
                )
        metrics = OrderedDict()
        for difficulty in KITTI_DIFFICULTIES:
            metrics[f"AP_{difficulty}"] = _mean([table[c, difficulty] for c in self._classes])
        for cls in self._classes:
            for difficulty in KITTI_DIFFICULTIES:
                metrics[f"AP_{difficulty}-{cls}"] = table[cls, difficulty]
        rows = [[c] + [f"{table[c, d]:.2f}" for d in KITTI_DIFFICULTIES] for c in self._classes]
        logger.info(
            f"KITTI AP|R40 on {len(frames)} images:\n"
            + tabulate(rows, headers=["class", *KITTI_DIFFICULTIES], tablefmt="pipe")
        )
        return {"bbox": metrics}
