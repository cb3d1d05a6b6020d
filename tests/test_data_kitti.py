"""KITTI 2D: the synthetic label files, parsing, splits, registration, errors, evaluation and a
short training."""

import json
import math
import os

import pytest
import torch
from PIL import Image

from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog

from d2_finetune.config import load_config
from d2_finetune.data import KITTI_CLASSES, register_datasets, register_kitti
from d2_finetune.data.kitti import kitti_split, parse_kitti_label
from d2_finetune.demo.synthetic import make_kitti
from d2_finetune.engine import FinetuneTrainer, prepare_config
from d2_finetune.errors import DatasetError
from d2_finetune.modeling import calibrate_frozen_bn

from conftest import FEW_ITERATIONS, REPO, perfect_outputs, tiny_detector, tiny_overrides

CONFIG = os.path.join(REPO, "configs", "kitti_ft.py")
SIZE = (512, 155)  # KITTI's 1242x375, shrunk
NAMES = ["kitti_ft_train", "kitti_ft_val", "kitti_ft_trainval"]


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("kitti"))
    make_kitti(root, num_images=10, size=SIZE, seed=0, num_test=1)
    return root


def label_files(root):
    folder = os.path.join(root, "kitti", "training", "label_2")
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder))]


def test_the_synthetic_labels_have_kitti_fields_and_geometry(kitti_root):
    files = label_files(kitti_root)
    assert [os.path.basename(f) for f in files] == [f"{i:06d}.txt" for i in range(10)]
    assert os.path.isfile(os.path.join(kitti_root, "kitti", "testing", "image_2", "000000.png"))
    kinds, truncated, occluded = set(), 0, 0
    for path in files:
        image = path.replace("label_2", "image_2").replace(".txt", ".png")
        assert Image.open(image).size == SIZE
        for line in open(path).read().splitlines():
            fields = line.split()
            assert len(fields) == 15
            kinds.add(fields[0])
            if fields[0] == "DontCare":
                assert fields[1:4] == ["-1", "-1", "-10"] and fields[8:] == ["-1"] * 3 + [
                    "-1000"
                ] * 3 + ["-10"]
                continue
            trunc, occ, alpha = float(fields[1]), int(fields[2]), float(fields[3])
            x1, y1, x2, y2 = map(float, fields[4:8])
            x, z, rotation_y = float(fields[11]), float(fields[13]), float(fields[14])
            assert 0 <= x1 < x2 <= SIZE[0] - 1 and 0 <= y1 < y2 <= SIZE[1] - 1
            assert 0 <= trunc <= 1 and occ in (0, 1, 2) and z > 0
            expected = (rotation_y - math.atan2(x, z) + math.pi) % (2 * math.pi) - math.pi
            assert abs(math.remainder(alpha - expected, 2 * math.pi)) < 0.02
            truncated += trunc > 0
            occluded += occ > 0
    assert {"Car", "DontCare"} <= kinds <= set(KITTI_CLASSES) | {"Misc", "DontCare"}
    assert truncated and occluded


def test_parse_reads_every_field(tmp_path):
    path = tmp_path / "000000.txt"
    path.write_text(
        "Pedestrian 0.00 0 -0.20 712.40 143.00 810.73 307.92 1.89 0.48 1.20 1.84 1.47 8.41 0.01\n\n"
    )
    (obj,) = parse_kitti_label(str(path))
    assert obj == {
        "type": "Pedestrian",
        "truncated": 0.0,
        "occluded": 0,
        "alpha": -0.2,
        "bbox": [712.40, 143.0, 810.73, 307.92],
        "dimensions": [1.89, 0.48, 1.2],
        "location": [1.84, 1.47, 8.41],
        "rotation_y": 0.01,
    }
    path.write_text("Car 0 0 0 1 2 3 4 1 1 1 0 0 5 0 0.75\n")
    assert parse_kitti_label(str(path), with_score=True)[0]["score"] == 0.75


@pytest.mark.parametrize(
    "line, message",
    [
        (
            "Car 0.00 0 -0.20 712.40 143.00 810.73 307.92 1.89 0.48 1.20 1.84 1.47 8.41",
            r"000000\.txt, line 2: 14 fields, expected 15",
        ),
        (
            "Bus 0.00 0 -0.20 712.40 143.00 810.73 307.92 1.89 0.48 1.20 1.84 1.47 8.41 0.01",
            r"000000\.txt, line 2: unknown object type 'Bus'; KITTI's are Car, Van",
        ),
        (
            "Car 0.00 0 -0.20 712.40 143.00 810.73 x 1.89 0.48 1.20 1.84 1.47 8.41 0.01",
            r"000000\.txt, line 2: non-numeric field",
        ),
    ],
)
def test_malformed_label_lines_are_reported_with_file_and_line(tmp_path, line, message):
    path = tmp_path / "000000.txt"
    path.write_text("Car 0 0 0 1 2 3 44 1 1 1 0 0 5 0\n" + line + "\n")
    with pytest.raises(DatasetError, match=message):
        parse_kitti_label(str(path))


def test_the_split_is_deterministic_disjoint_and_complete():
    frames = [f"{i:06d}" for i in range(50)]
    train, val = kitti_split(frames, 0.2, seed=0)
    assert (train, val) == kitti_split(list(reversed(frames)), 0.2, seed=0)
    assert len(val) == 10 and sorted(train + val) == frames and not set(train) & set(val)
    assert val != kitti_split(frames, 0.2, seed=1)[1]
    assert val != frames[-10:]  # drawn across the sequence, not its end
    for bad, message in (
        ({"val_fraction": 1.0}, "val_fraction must be between 0 and 1, got 1.0"),
        ({"seed": None}, "seed must be an integer, got None"),
    ):
        with pytest.raises(DatasetError, match=message):
            kitti_split(frames, **{"val_fraction": 0.2, "seed": 0, **bad})


def test_registration_keeps_the_label_fields_and_ignore_regions(kitti_root):
    assert register_kitti(kitti_root) == NAMES
    assert register_kitti(kitti_root) == NAMES
    meta = MetadataCatalog.get("kitti_ft_val")
    assert meta.thing_classes == KITTI_CLASSES
    assert meta.evaluator_type == "kitti" and meta.label_dir.endswith("kitti/training/label_2")
    train, val = DatasetCatalog.get("kitti_ft_train"), DatasetCatalog.get("kitti_ft_val")
    assert (len(train), len(val)) == (8, 2)
    assert sorted(r["image_id"] for r in train + val) == list(range(10))
    crowd_seen = False
    for record in train + val:
        assert (record["width"], record["height"]) == SIZE
        objects = parse_kitti_label(os.path.join(meta.label_dir, f"{record['image_id']:06d}.txt"))
        anns = iter(record["annotations"])
        for obj in objects:
            if obj["type"] in ("Misc", "DontCare"):
                copies = [next(anns) for _ in KITTI_CLASSES]
                assert [a["category_id"] for a in copies] == list(range(7))
                assert all(a["iscrowd"] == 1 and a["bbox"] == obj["bbox"] for a in copies)
                crowd_seen = True
            else:
                ann = next(anns)
                assert KITTI_CLASSES[ann["category_id"]] == obj["type"] and ann["iscrowd"] == 0
                for key in (
                    "truncated",
                    "occluded",
                    "alpha",
                    "bbox",
                    "dimensions",
                    "location",
                    "rotation_y",
                ):
                    assert ann[key] == obj[key], key
        assert next(anns, None) is None
    assert crowd_seen


def test_split_files_choose_the_frames(kitti_root, tmp_path):
    (tmp_path / "train.txt").write_text("000001\n000004\n000007\n")
    (tmp_path / "val.txt").write_text("000002\n000009\n")
    register_kitti(kitti_root, split_dir=str(tmp_path))
    assert [r["image_id"] for r in DatasetCatalog.get("kitti_ft_train")] == [1, 4, 7]
    assert [r["image_id"] for r in DatasetCatalog.get("kitti_ft_val")] == [2, 9]
    (tmp_path / "val.txt").write_text("000002\n000042\n")
    with pytest.raises(
        DatasetError,
        match=r"1 frames of .*val\.txt have no image and label under .*, e\.g\. 000042",
    ):
        DatasetCatalog.get("kitti_ft_val")
    os.remove(tmp_path / "val.txt")
    with pytest.raises(DatasetError, match=r"KITTI split file missing: .*val\.txt"):
        DatasetCatalog.get("kitti_ft_val")
    register_kitti(kitti_root)


def test_missing_data_and_bad_options_are_reported(tmp_path, kitti_root):
    register_kitti(str(tmp_path))
    with pytest.raises(
        DatasetError,
        match=r"KITTI folder not found: .*kitti/training/image_2\. "
        r"Download data_object_image_2\.zip",
    ):
        DatasetCatalog.get("kitti_ft_train")
    with pytest.raises(
        DatasetError,
        match=r"Dataset 'kitti_ft_train': .*kitti/training/image_2 does "
        r"not exist\. Download data_object_image_2\.zip",
    ):
        register_datasets(load_config(CONFIG, [f"dataloader.register.root={tmp_path}"]))
    with pytest.raises(DatasetError, match=r"val_fraction must be between 0 and 1, got 0"):
        register_kitti(str(tmp_path), val_fraction=0)
    register_kitti(kitti_root)


def config(kitti_root, output_dir, **extra):
    overrides = tiny_overrides(kitti_root, output_dir, **extra) + ["train.epochs=null"]
    return prepare_config(CONFIG, overrides)


def test_the_config_scores_kitti_ap_and_coco_ap(kitti_root, tmp_path):
    cfg = config(kitti_root, str(tmp_path))
    evaluators = instantiate(cfg.dataloader.evaluator)
    records = DatasetCatalog.get("kitti_ft_val")
    for e in evaluators:
        e.reset()
        for record in records:
            e.process([record], perfect_outputs(record))
    kitti, coco = (e.evaluate() for e in evaluators)
    assert coco["coco/bbox"]["AP"] == pytest.approx(100.0)
    # Perfect boxes find all n moderate cars; the devkit samples recall at detections, so
    # n <= 40 boxes score (n - 1) / 40.
    label_dir = MetadataCatalog.get("kitti_ft_val").label_dir
    labels = [os.path.join(label_dir, f"{r['image_id']:06d}.txt") for r in records]
    cars = [
        o
        for f in labels
        for o in parse_kitti_label(f)
        if o["type"] == "Car"
        and o["occluded"] <= 1
        and o["truncated"] <= 0.3
        and o["bbox"][3] - o["bbox"][1] > 25
    ]
    assert 2 <= len(cars) <= 40
    assert kitti["kitti/bbox"]["AP_moderate-Car"] == pytest.approx(100 * (len(cars) - 1) / 40)
    written = os.listdir(os.path.join(str(tmp_path), "kitti_results", "data"))
    assert sorted(written) == sorted(f"{r['image_id']:06d}.txt" for r in records)


def test_coco_style_ap_ignores_detections_in_dontcare_regions(kitti_root, tmp_path):
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, Instances

    register_kitti(kitti_root)
    records = DatasetCatalog.get("kitti_ft_trainval")
    evaluator = COCOEvaluator("kitti_ft_trainval", tasks=("bbox",), output_dir=str(tmp_path))

    def score(extra_box):
        evaluator.reset()
        for record in records:
            outputs = perfect_outputs(record)
            regions = [a["bbox"] for a in record["annotations"] if a["type"] == "DontCare"]
            if regions:
                inst = outputs[0]["instances"]
                extra = Instances(
                    inst.image_size,
                    pred_boxes=Boxes(torch.tensor([extra_box(regions[0])])),
                    scores=torch.tensor([2.0]),
                    pred_classes=torch.tensor([0]),
                )
                outputs[0]["instances"] = Instances.cat([inst, extra])
            evaluator.process([record], outputs)
        return evaluator.evaluate()["bbox"]["AP"]

    assert score(lambda region: region) == pytest.approx(100.0)
    assert score(lambda region: [0.0, 0.0, 30.0, 30.0]) < 100.0  # the same, outside the region


def test_a_few_training_iterations_of_the_faster_rcnn(kitti_root, tmp_path):
    out = str(tmp_path / "run")
    cfg = tiny_detector(
        config(
            kitti_root,
            out,
            **{
                **FEW_ITERATIONS,
                "dataloader.train.mapper.augmentations.0.max_size": 512,
                "dataloader.test.mapper.augmentations.0.max_size": 512,
            },
        )
    )
    trainer = FinetuneTrainer(cfg)
    model = trainer.model
    assert model.roi_heads.box_predictor.cls_score.out_features == 8
    assert not model.roi_heads.mask_on
    calibrate_frozen_bn(model, next(iter(instantiate(cfg.dataloader.train))))
    before = {k: v.clone() for k, v in model.roi_heads.box_predictor.state_dict().items()}
    results = trainer.train()
    assert any(
        not torch.equal(before[k], v) for k, v in model.roi_heads.box_predictor.state_dict().items()
    )
    with open(os.path.join(out, "metrics.json")) as f:
        losses = [json.loads(line)["total_loss"] for line in f if '"total_loss"' in line]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert set(results) == {"kitti/bbox", "coco/bbox"}
    assert {"AP_easy", "AP_moderate", "AP_hard", "AP_moderate-Car"} <= set(results["kitti/bbox"])
