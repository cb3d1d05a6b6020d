"""KITTI AP|R40: hand-computable cases, agreement with a line-by-line transcription of the
devkit's evaluate_object.cpp, and the detectron2 evaluator."""

import math

import numpy as np
import pytest
import torch

from detectron2.data import MetadataCatalog
from detectron2.structures import Boxes, Instances

from d2_finetune.data.kitti import KITTI_CLASSES
from d2_finetune.errors import ConfigError
from d2_finetune.evaluation import KittiEvaluator, PrefixedEvaluator, kitti_average_precision


def gt(kind, box, truncated=0.0, occluded=0):
    return {"type": kind, "bbox": list(box), "truncated": truncated, "occluded": occluded}


def det(kind, box, score):
    return {"type": kind, "bbox": list(box), "score": score}


def cars(n, per_frame=10, detected=None):
    """``n`` valid 50-pixel cars, 10 per frame, and perfect detections of the first
    ``detected`` (default all) with decreasing scores."""
    detected = n if detected is None else detected
    gts, dets = [], []
    for i in range(n):
        if i % per_frame == 0:
            gts.append([])
            dets.append([])
        box = (100 * (i % per_frame), 100, 100 * (i % per_frame) + 80, 150)
        gts[-1].append(gt("Car", box))
        if i < detected:
            dets[-1].append(det("Car", box, 1.0 - i / 1000))
    return gts, dets


def ap(gts, dets, cls="Car", difficulty="easy"):
    return kitti_average_precision(gts, dets, cls, difficulty)


def test_perfect_detections_of_many_cars_score_100():
    gts, dets = cars(80)
    for difficulty in ("easy", "moderate", "hard"):
        assert ap(gts, dets, difficulty=difficulty) == pytest.approx(100.0)


@pytest.mark.parametrize("n", [1, 4, 40])
def test_recall_is_sampled_at_detections_so_few_boxes_score_n_minus_1_over_40(n):
    gts, dets = cars(n)
    assert ap(gts, dets) == pytest.approx(100 * (n - 1) / 40)


def test_finding_half_the_cars_scores_50():
    # 40 of 80 found: recall reaches 1/2 at precision 1, i.e. 20 of the 40 recall positions.
    gts, dets = cars(80, detected=40)
    assert ap(gts, dets) == pytest.approx(50.0)


def test_confident_false_positives_halve_the_precision():
    gts, dets = cars(80)
    for frame in dets:
        for d in list(frame):
            x1, y1, x2, y2 = d["bbox"]
            frame.append(det("Car", (x1, y1 + 200, x2, y2 + 200), d["score"] + 1))
    assert ap(gts, dets) == pytest.approx(50.0)


def test_a_car_detection_on_a_van_is_ignored_but_on_a_truck_is_a_false_positive():
    for other, expected in (("Van", 100.0), ("Truck", 100 * 80 / 81)):
        gts, dets = cars(80)
        gts[0].append(gt(other, (0, 300, 100, 360)))
        dets[0].append(det("Car", (0, 300, 100, 360), 2.0))
        assert ap(gts, dets) == pytest.approx(expected), other


def test_person_sitting_is_the_pedestrians_neighbour():
    gts, dets = cars(80)
    for frame_gt, frame_det in zip(gts, dets):
        for g, d in zip(frame_gt, frame_det):
            g["type"] = d["type"] = "Pedestrian"
    gts[0].append(gt("Person_sitting", (0, 300, 40, 360)))
    dets[0].append(det("Pedestrian", (0, 300, 40, 360), 2.0))
    assert ap(gts, dets, "Pedestrian") == pytest.approx(100.0)
    gts[0][-1]["type"] = "Cyclist"
    assert ap(gts, dets, "Pedestrian") == pytest.approx(100 * 80 / 81)


def test_a_detection_of_another_class_is_no_detection():
    gts, dets = cars(40)
    missing = [frame[:] for frame in dets]
    missing[3] = missing[3][1:]
    dets[3][0]["type"] = "Van"
    assert ap(gts, dets) == pytest.approx(ap(gts, missing))
    assert ap(gts, dets) == pytest.approx(100 * 38 / 40)  # 39 of 40 found


@pytest.mark.parametrize(
    "box, expected",
    [
        ((0, 300, 100, 360), 100.0),  # inside the DontCare region
        ((-50, 300, 50, 360), 100 * 80 / 81),  # half inside: 0.5 of its area, below 0.7
        ((500, 300, 600, 360), 100 * 80 / 81),  # elsewhere
    ],
)
def test_detections_in_dontcare_regions_are_not_false_positives(box, expected):
    gts, dets = cars(80)
    gts[0].append(gt("DontCare", (0, 280, 200, 380), truncated=-1, occluded=-1))
    dets[0].append(det("Car", box, 2.0))
    assert ap(gts, dets) == pytest.approx(expected)


@pytest.mark.parametrize(
    "height, truncated, occluded, counted_from",
    [
        (30, 0.0, 0, "moderate"),  # easy needs more than 40 pixels
        (40, 0.0, 0, "moderate"),
        (50, 0.0, 1, "moderate"),
        (50, 0.0, 2, "hard"),
        (50, 0.2, 0, "moderate"),
        (50, 0.4, 0, "hard"),
    ],
)
def test_difficulty_levels_follow_height_occlusion_and_truncation(
    height, truncated, occluded, counted_from
):
    gts, dets = cars(40)
    extra = [
        [
            gt("Car", (100 * i, 300, 100 * i + 80, 300 + height), truncated, occluded)
            for i in range(10)
        ]
        for _ in range(4)
    ]
    found = [
        [det("Car", g["bbox"], 0.5 - (10 * f + i) / 1000) for i, g in enumerate(frame)]
        for f, frame in enumerate(extra)
    ]
    levels = ("easy", "moderate", "hard")
    for level in levels:
        counted = levels.index(level) >= levels.index(counted_from)
        # Ignored boxes are neither missed nor found: 40 cars found of 40 scores (40 - 1) / 40.
        missed = ap(gts + extra, dets + [[] for _ in extra], difficulty=level)
        assert missed == pytest.approx(50.0 if counted else 97.5), level
        assert ap(gts + extra, dets + found, difficulty=level) == pytest.approx(
            100.0 if counted else 97.5
        ), level


def test_detections_lower_than_the_minimum_height_are_not_false_positives():
    gts, dets = cars(80)
    dets[0].append(det("Car", (0, 300, 80, 330), 2.0))  # 30 pixels: ignored at easy only
    assert ap(gts, dets, difficulty="easy") == pytest.approx(100.0)
    assert ap(gts, dets, difficulty="moderate") == pytest.approx(100 * 80 / 81)


@pytest.mark.parametrize(
    "cls, width, counts",
    [
        ("Car", 71, True),
        ("Car", 69, False),
        ("Pedestrian", 60, True),
        ("Cyclist", 49, False),
    ],
)
def test_the_iou_threshold_is_0_7_for_cars_and_0_5_for_people(cls, width, counts):
    gts, dets = cars(80)
    for frame_gt, frame_det in zip(gts, dets):
        for g, d in zip(frame_gt, frame_det):
            g["type"] = d["type"] = cls
    box = dets[0][0]["bbox"]
    dets[0][0]["bbox"] = [box[0], box[1], box[0] + width * (box[2] - box[0]) / 100, box[3]]
    assert (ap(gts, dets, cls) == pytest.approx(100.0)) is counts


def test_no_ground_truth_is_nan_and_no_detection_is_zero():
    gts, dets = cars(10)
    assert math.isnan(ap(gts, dets, "Pedestrian"))
    assert ap(gts, [[] for _ in gts]) == 0.0
    with pytest.raises(ValueError, match="2 ground-truth frames but 1 detection frames"):
        ap(gts + gts, dets)


# A line-by-line transcription of evaluate_object.cpp (cleanData, computeStatistics,
# getThresholds, eval_class and the R40 sum), slow and loop-based, as the reference.
MIN_HEIGHT, MAX_OCCLUSION, MAX_TRUNCATION = (40, 25, 25), (0, 1, 2), (0.15, 0.3, 0.5)


def devkit_overlap(a, b, criterion):
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[2], b[2]), min(a[3], b[3])
    w, h = x2 - x1, y2 - y1
    if w <= 0 or h <= 0:
        return 0.0
    inter = w * h
    a_area = (a[2] - a[0]) * (a[3] - a[1])
    b_area = (b[2] - b[0]) * (b[3] - b[1])
    return inter / (a_area + b_area - inter) if criterion == -1 else inter / a_area


def devkit_clean(cls, gt_frame, det_frame, d):
    ignored_gt, dc, ignored_det, n_gt = [], [], [], 0
    for g in gt_frame:
        height = g["bbox"][3] - g["bbox"][1]
        if g["type"].lower() == cls.lower():
            valid = 1
        elif cls == "Pedestrian" and g["type"].lower() == "person_sitting":
            valid = 0
        elif cls == "Car" and g["type"].lower() == "van":
            valid = 0
        else:
            valid = -1
        ignore = (
            g["occluded"] > MAX_OCCLUSION[d]
            or g["truncated"] > MAX_TRUNCATION[d]
            or height <= MIN_HEIGHT[d]
        )
        if valid == 1 and not ignore:
            ignored_gt.append(0)
            n_gt += 1
        elif valid == 0 or (ignore and valid == 1):
            ignored_gt.append(1)
        else:
            ignored_gt.append(-1)
    for g in gt_frame:
        if g["type"].lower() == "dontcare":
            dc.append(g)
    for x in det_frame:
        valid = 1 if x["type"].lower() == cls.lower() else -1
        height = int(abs(x["bbox"][1] - x["bbox"][3]))
        if height < MIN_HEIGHT[d]:
            ignored_det.append(1)
        elif valid == 1:
            ignored_det.append(0)
        else:
            ignored_det.append(-1)
    return ignored_gt, dc, ignored_det, n_gt


def devkit_statistics(
    gt_frame, det_frame, dc, ignored_gt, ignored_det, compute_fp, min_overlap, thresh=0.0
):
    no_detection = -10000000
    tp = fp = fn = 0
    v = []
    assigned = [False] * len(det_frame)
    ignored_threshold = [compute_fp and x["score"] < thresh for x in det_frame]
    for i, g in enumerate(gt_frame):
        if ignored_gt[i] == -1:
            continue
        det_idx, valid_detection, max_overlap, assigned_ignored_det = -1, no_detection, 0.0, False
        for j, x in enumerate(det_frame):
            if ignored_det[j] == -1 or assigned[j] or ignored_threshold[j]:
                continue
            overlap = devkit_overlap(x["bbox"], g["bbox"], -1)
            if not compute_fp and overlap > min_overlap and x["score"] > valid_detection:
                det_idx, valid_detection = j, x["score"]
            elif (
                compute_fp
                and overlap > min_overlap
                and (overlap > max_overlap or assigned_ignored_det)
                and ignored_det[j] == 0
            ):
                max_overlap, det_idx, valid_detection, assigned_ignored_det = overlap, j, 1, False
            elif (
                compute_fp
                and overlap > min_overlap
                and valid_detection == no_detection
                and ignored_det[j] == 1
            ):
                det_idx, valid_detection, assigned_ignored_det = j, 1, True
        if valid_detection == no_detection and ignored_gt[i] == 0:
            fn += 1
        elif valid_detection != no_detection and (ignored_gt[i] == 1 or ignored_det[det_idx] == 1):
            assigned[det_idx] = True
        elif valid_detection != no_detection:
            tp += 1
            v.append(det_frame[det_idx]["score"])
            assigned[det_idx] = True
    if compute_fp:
        for j in range(len(det_frame)):
            if not (
                assigned[j] or ignored_det[j] == -1 or ignored_det[j] == 1 or ignored_threshold[j]
            ):
                fp += 1
        nstuff = 0
        for region in dc:
            for j, x in enumerate(det_frame):
                if assigned[j] or ignored_det[j] in (-1, 1) or ignored_threshold[j]:
                    continue
                if devkit_overlap(x["bbox"], region["bbox"], 0) > min_overlap:
                    assigned[j] = True
                    nstuff += 1
        fp -= nstuff
    return tp, fp, fn, v


def devkit_thresholds(v, n_gt):
    v = sorted(v, reverse=True)
    t, current = [], 0.0
    for i in range(len(v)):
        l_recall = (i + 1) / n_gt
        r_recall = (i + 2) / n_gt if i < len(v) - 1 else l_recall
        if (r_recall - current) < (current - l_recall) and i < len(v) - 1:
            continue
        t.append(v[i])
        current += 1.0 / 40.0
    return t


def devkit_ap(gts, dets, cls, d, min_overlap):
    cleaned, v, n_gt = [], [], 0
    for g, x in zip(gts, dets):
        ignored_gt, dc, ignored_det, n = devkit_clean(cls, g, x, d)
        n_gt += n
        cleaned.append((ignored_gt, dc, ignored_det))
        v += devkit_statistics(g, x, dc, ignored_gt, ignored_det, False, min_overlap)[3]
    if n_gt == 0:
        return float("nan")
    thresholds = devkit_thresholds(v, n_gt)
    precision = [0.0] * 41
    for t, thresh in enumerate(thresholds):
        tp = fp = 0
        for g, x, (ignored_gt, dc, ignored_det) in zip(gts, dets, cleaned):
            a, b, _, _ = devkit_statistics(
                g, x, dc, ignored_gt, ignored_det, True, min_overlap, thresh
            )
            tp, fp = tp + a, fp + b
        precision[t] = tp / (tp + fp) if tp + fp else 0.0
    for t in range(len(thresholds)):
        precision[t] = max(precision[t:])
    return sum(precision[1:]) / 40 * 100


def random_frames(rng, num_frames):
    """Scenes mixing every rule: all types, heights around the limits, every truncation and
    occlusion level, overlapping twins, DontCare regions with detections inside, detections
    of the right and wrong class at IoUs around the thresholds, scores that favour the better
    detections, and stray false positives."""
    kinds = [
        "Car",
        "Car",
        "Car",
        "Van",
        "Truck",
        "Pedestrian",
        "Pedestrian",
        "Person_sitting",
        "Cyclist",
        "Cyclist",
        "Tram",
        "Misc",
        "DontCare",
    ]
    gts, dets = [], []
    for _ in range(num_frames):
        frame_gt, frame_det = [], []
        for _ in range(rng.integers(2, 8)):
            x, y = rng.uniform(0, 1000), rng.uniform(0, 300)
            w, h = rng.uniform(10, 150), rng.choice([rng.uniform(15, 50), rng.uniform(40, 160)])
            kind = kinds[rng.integers(len(kinds))]
            boxes = [(x, y, x + w, y + h)]
            if rng.random() < 0.3:
                dx, dy = rng.uniform(-0.25, 0.25, size=2) * [w, h]
                boxes.append((x + dx, y + dy, x + w + dx, y + h + dy))
            for box in boxes:
                frame_gt.append(
                    gt(
                        kind,
                        box,
                        float(rng.choice([0, 0.1, 0.2, 0.4, 0.6])),
                        int(rng.choice([0, 0, 1, 2, 3])),
                    )
                )
                for _ in range(rng.integers(0, 4)):
                    spread = rng.choice([0.01, 0.05, 0.15, 0.3])
                    jitter = rng.normal(0, spread, size=4) * [w, h, w, h]
                    real = kind not in ("Misc", "DontCare") and rng.random() < 0.8
                    guess = kind if real else kinds[rng.integers(10)]
                    score = float(np.clip(rng.normal(0.8 - spread, 0.15), 0, 1))
                    frame_det.append(
                        det(
                            guess,
                            (
                                box[0] + jitter[0],
                                box[1] + jitter[1],
                                box[2] + jitter[2],
                                box[3] + jitter[3],
                            ),
                            score,
                        )
                    )
        for _ in range(rng.integers(0, 3)):
            x, y = rng.uniform(0, 1000), rng.uniform(0, 300)
            frame_det.append(
                det(
                    kinds[rng.integers(10)],
                    (x, y, x + rng.uniform(10, 120), y + rng.uniform(10, 120)),
                    float(rng.random()),
                )
            )
        gts.append(frame_gt)
        dets.append(frame_det)
    return gts, dets


@pytest.mark.parametrize("seed, num_frames", [(0, 40), (1, 60), (2, 200)])
def test_equals_the_devkit_transcription_on_random_scenes(seed, num_frames):
    gts, dets = random_frames(np.random.default_rng(seed), num_frames)
    for cls, min_overlap in (("Car", 0.7), ("Pedestrian", 0.5), ("Cyclist", 0.5)):
        for d, difficulty in enumerate(("easy", "moderate", "hard")):
            ours = kitti_average_precision(gts, dets, cls, difficulty)
            reference = devkit_ap(gts, dets, cls, d, min_overlap)
            assert ours == pytest.approx(reference, abs=1e-9, nan_ok=True), (cls, difficulty)


@pytest.fixture
def kitti_meta(tmp_path):
    label_dir = tmp_path / "label_2"
    label_dir.mkdir()
    lines = [
        f"Car 0.00 0 0.00 {100 * i:.2f} 100.00 {100 * i + 80:.2f} 150.00 1.5 1.6 3.9 0 1 10 0"
        for i in range(5)
    ]
    lines.append("Pedestrian 0.00 0 0.00 600.00 100.00 640.00 200.00 1.8 0.6 0.8 1 1 8 0")
    lines.append("DontCare -1 -1 -10 700.00 100.00 900.00 200.00 -1 -1 -1 -1000 -1000 -1000 -10")
    (label_dir / "000007.txt").write_text("\n".join(lines) + "\n")
    name = f"test_kitti_evaluator_{tmp_path.name}"
    MetadataCatalog.get(name).set(thing_classes=list(KITTI_CLASSES), label_dir=str(label_dir))
    return name


def outputs(boxes, classes, scores):
    instances = Instances((375, 1242))
    instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    instances.pred_classes = torch.tensor(classes)
    instances.scores = torch.tensor(scores)
    return [{"instances": instances}]


def test_the_evaluator_scores_model_outputs_and_writes_devkit_files(kitti_meta, tmp_path):
    evaluator = PrefixedEvaluator(
        KittiEvaluator(kitti_meta, output_dir=str(tmp_path / "out")), "kitti"
    )
    evaluator.reset()
    car, ped = KITTI_CLASSES.index("Car"), KITTI_CLASSES.index("Pedestrian")
    boxes = [[100 * i, 100, 100 * i + 80, 150] for i in range(5)] + [
        [600, 100, 640, 200],
        [750, 120, 800, 180],
    ]
    evaluator.process(
        [{"file_name": "/data/kitti/training/image_2/000007.png"}],
        outputs(boxes, [car] * 5 + [ped, car], [0.9, 0.8, 0.7, 0.6, 0.5, 0.9, 0.95]),
    )
    results = evaluator.evaluate()["kitti/bbox"]
    # 5 cars found, the extra car detection lies in the DontCare region: (5 - 1) / 40.
    assert results["AP_moderate-Car"] == pytest.approx(100 * 4 / 40)
    assert results["AP_moderate-Pedestrian"] == pytest.approx(0.0)  # 1 box: (1 - 1) / 40
    assert math.isnan(results["AP_moderate-Cyclist"])
    assert results["AP_moderate"] == pytest.approx(5.0)  # mean over the classes with boxes
    assert list(results)[:3] == ["AP_easy", "AP_moderate", "AP_hard"]
    written = (tmp_path / "out" / "data" / "000007.txt").read_text().splitlines()
    assert len(written) == 7 and all(len(line.split()) == 16 for line in written)
    assert written[0].split()[:8] == ["Car", "-1", "-1", "-10", "0.00", "100.00", "80.00", "150.00"]
    assert written[0].split()[-1] == "0.9000"


def test_the_evaluator_needs_kitti_metadata_and_known_thresholds(kitti_meta):
    MetadataCatalog.get("test_kitti_no_labels").set(thing_classes=["Car"])
    with pytest.raises(
        ConfigError,
        match="has no label_dir in its metadata; register it with d2_finetune.data.register_kitti",
    ):
        KittiEvaluator("test_kitti_no_labels")
    with pytest.raises(ConfigError, match=r"no IoU threshold for \['Van'\]"):
        KittiEvaluator(kitti_meta, classes=["Car", "Van"])
    evaluator = KittiEvaluator(
        kitti_meta, classes=["Car", "Van"], min_overlaps={"Car": 0.7, "Van": 0.7}
    )
    assert evaluator.evaluate() == {}
