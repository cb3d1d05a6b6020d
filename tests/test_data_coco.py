"""Any COCO-format dataset: registration, records, errors, evaluation and a short training."""

import copy
import json
import os

import pycocotools.mask as mask_util
import pytest
import torch

from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json

from d2_finetune.config import load_config
from d2_finetune.data import coco as coco_module
from d2_finetune.data import register_coco_dataset
from d2_finetune.demo.synthetic import make_coco
from d2_finetune.engine import FinetuneTrainer, prepare_config
from d2_finetune.errors import DatasetError
from d2_finetune.modeling import calibrate_frozen_bn

from conftest import (
    FEW_ITERATIONS,
    REPO,
    assert_transfers_from_coco,
    perfect_outputs,
    tiny_detector,
    tiny_overrides,
)

CONFIG = os.path.join(REPO, "configs", "coco_custom_ft.py")
# A user's dataset: four classes with non-contiguous ids that are not sorted in the json.
IDS = {"person": 7, "car": 3, "dog": 42, "airplane": 15}
BY_ID = ["car", "person", "airplane", "dog"]


def custom_json(src, dst):
    """``make_coco``'s json reduced to the four classes of IDS, with extra cases detectron2
    handles: an RLE mask, an uncompressed-RLE crowd region, keypoints and a dropped polygon."""
    with open(src) as f:
        data = json.load(f)
    old = {c["id"]: c["name"] for c in data["categories"]}
    data["categories"] = [{"id": IDS[n], "name": n, "supercategory": "thing"} for n in IDS]
    for ann in data["annotations"]:
        ann["category_id"] = IDS[old[ann["category_id"]]]
    image = data["images"][0]
    first = data["annotations"][0]
    rle = mask_util.merge(
        mask_util.frPyObjects(first["segmentation"], image["height"], image["width"])
    )
    first["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    first["keypoints"] = [10, 20, 2, 0, 0, 0]
    data["annotations"][1]["segmentation"].append([1.0, 2.0, 3.0, 4.0])
    crowd = mask_util.decode(rle)
    data["annotations"].append(
        {
            "id": 10_000,
            "image_id": image["id"],
            "category_id": IDS["car"],
            "iscrowd": 1,
            "bbox": [0.0, 0.0, 4.0, 4.0],
            "area": 16.0,
            "segmentation": {
                "size": [image["height"], image["width"]],
                "counts": _uncompressed_counts(crowd),
            },
        }
    )
    with open(dst, "w") as f:
        json.dump(data, f)
    return data


def _uncompressed_counts(mask):
    flat = mask.flatten(order="F").tolist()
    counts, value, run = [], 0, 0
    for v in flat:
        if v != value:
            counts.append(run)
            value, run = v, 0
        run += 1
    counts.append(run)
    return counts


@pytest.fixture(scope="module")
def coco_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_custom")
    for split, count, seed in (("train", 6, 1), ("val", 3, 2)):
        src, images = make_coco(
            str(root / split), num_images=count, size=(256, 128), seed=seed, classes=list(IDS)
        )
        custom_json(src, str(root / split / "custom.json"))
    return root


def register(coco_root, split="train", name=None):
    return register_coco_dataset(
        name or f"test_coco_custom_{split}",
        str(coco_root / split / "custom.json"),
        str(coco_root / split / "images"),
    )


def test_classes_come_from_the_json_sorted_by_id(coco_root):
    (name,) = register(coco_root)
    meta = MetadataCatalog.get(name)
    assert meta.thing_classes == BY_ID
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 7: 1, 15: 2, 42: 3}
    assert meta.evaluator_type == "coco"
    records = DatasetCatalog.get(name)
    assert len(records) == 6
    names = [BY_ID[a["category_id"]] for r in records for a in r["annotations"]]
    with open(coco_root / "train" / "custom.json") as f:
        data = json.load(f)
    by_json_id = {c["id"]: c["name"] for c in data["categories"]}
    assert sorted(names) == sorted(by_json_id[a["category_id"]] for a in data["annotations"])


def test_records_equal_detectron2_load_coco_json(coco_root):
    (name,) = register(coco_root, name="test_coco_same_records")
    ours = DatasetCatalog.get(name)
    json_file = str(coco_root / "train" / "custom.json")
    stock = load_coco_json(
        json_file, str(coco_root / "train" / "images"), "test_coco_stock_records"
    )
    assert ours == stock
    first = ours[0]["annotations"]
    assert first[0]["keypoints"] == [10.5, 20.5, 2, 0.5, 0.5, 0]
    assert isinstance(first[0]["segmentation"], dict)
    assert any(
        a.get("iscrowd") == 1 and isinstance(a["segmentation"]["counts"], bytes) for a in first
    )


def test_the_json_is_read_once_for_registration_and_loading(coco_root, monkeypatch):
    calls = []
    real_load = json.load
    monkeypatch.setattr(coco_module.json, "load", lambda f: calls.append(f.name) or real_load(f))
    (name,) = register(coco_root, "val", name="test_coco_read_once")
    assert len(calls) == 1
    assert len(DatasetCatalog.get(name)) == 3
    assert len(calls) == 1
    DatasetCatalog.get(name)  # the parsed json is released once the records are built
    assert len(calls) == 2


def test_registration_is_idempotent_and_follows_a_changed_file(coco_root, tmp_path):
    data = valid(coco_root)
    json_file = write(tmp_path, data, "changing.json")
    images = str(coco_root / "train" / "images")
    name = "test_coco_idempotent"
    assert register_coco_dataset(name, json_file, images) == [name]
    loader = DatasetCatalog[name]
    assert register_coco_dataset(name, json_file, images) == [name]
    assert DatasetCatalog[name] is loader
    data["categories"] = [c for c in data["categories"] if c["name"] == "person"]
    data["categories"].append({"id": 99, "name": "kite"})
    data["annotations"] = [a for a in data["annotations"] if a["category_id"] == IDS["person"]]
    write(tmp_path, data, "changing.json")
    register_coco_dataset(name, json_file, images)
    assert DatasetCatalog[name] is not loader
    assert MetadataCatalog.get(name).thing_classes == ["person", "kite"]
    assert {a["category_id"] for r in DatasetCatalog.get(name) for a in r["annotations"]} == {0}


def write(tmp_path, data, name="bad.json"):
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def valid(coco_root):
    with open(coco_root / "train" / "custom.json") as f:
        return json.load(f)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.update(categories=[]), r"'categories' is empty"),
        (
            lambda d: d["annotations"][2].update(category_id=99),
            r"1 annotation\(s\) refer to categories not in 'categories' \(category_id 99\), e\.g\. "
            r"annotation id \d+ of image \d+; the categories have ids \[3, 7, 15, 42\]",
        ),
        (
            lambda d: d["categories"].append({"id": 3, "name": "bus"}),
            r"category ids must be unique; repeated: 3",
        ),
        (
            lambda d: d["categories"].append({"id": 5, "name": "dog"}),
            r"category names must be unique; repeated: 'dog'",
        ),
        (
            lambda d: d["categories"].append({"id": "5", "name": "bus"}),
            r"needs an integer 'id' and a string 'name'",
        ),
        (
            lambda d: d.pop("annotations"),
            r"not a COCO instances file: 'annotations' missing or not a list",
        ),
    ],
)
def test_bad_categories_are_refused_at_registration(coco_root, tmp_path, change, message):
    data = valid(coco_root)
    change(data)
    with pytest.raises(DatasetError, match=message):
        register_coco_dataset(
            "test_coco_bad", write(tmp_path, data), str(coco_root / "train" / "images")
        )


def test_unreadable_and_missing_files_are_refused(coco_root, tmp_path):
    images = str(coco_root / "train" / "images")
    with pytest.raises(
        DatasetError, match=r"Cannot read COCO annotation file .*bad\.json: JSONDecodeError"
    ):
        register_coco_dataset("test_coco_bad", write(tmp_path, '{"images": ['), images)
    with pytest.raises(DatasetError, match=r"not a COCO annotation file: it holds a list"):
        register_coco_dataset("test_coco_bad", write(tmp_path, "[]"), images)
    with pytest.raises(DatasetError, match=r"COCO annotation file not found: .*nothing\.json"):
        register_coco_dataset("test_coco_bad", str(tmp_path / "nothing.json"), images)
    with pytest.raises(DatasetError, match=r"image folder not found: .*no_images"):
        register_coco_dataset(
            "test_coco_bad", str(coco_root / "train" / "custom.json"), str(tmp_path / "no_images")
        )


def test_missing_images_are_counted_and_one_is_named(coco_root, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    data = valid(coco_root)
    for image in data["images"][:4]:
        os.link(coco_root / "train" / "images" / image["file_name"], images / image["file_name"])
    json_file = write(tmp_path, data, "partial.json")
    register_coco_dataset("test_coco_missing_images", json_file, str(images))
    missing = os.path.join(str(images), data["images"][4]["file_name"])
    with pytest.raises(
        DatasetError,
        match=rf"2 of the 6 images listed in .*partial\.json are "
        rf"missing under .*, e\.g\. {missing}",
    ):
        DatasetCatalog.get("test_coco_missing_images")


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d["annotations"][0].update(bbox=[]), r"has an empty 'bbox'"),
        (lambda d: d["annotations"][0].update(ignore=1), r"\"ignore\": 1, which is not supported"),
        (
            lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]),
            r"annotation ids must be unique",
        ),
        (lambda d: d["images"].append(dict(d["images"][0])), r"image id 1 appears more than once"),
    ],
)
def test_malformed_annotations_are_refused_when_loading(coco_root, tmp_path, change, message):
    data = valid(coco_root)
    change(data)
    register_coco_dataset(
        "test_coco_malformed", write(tmp_path, data), str(coco_root / "train" / "images")
    )
    with pytest.raises(DatasetError, match=message):
        DatasetCatalog.get("test_coco_malformed")


def config(coco_root, output_dir, **extra):
    overrides = [
        o
        for o in tiny_overrides(str(coco_root), output_dir, **extra)
        if not o.startswith("dataloader.register.root=")
    ]
    overrides += ["train.epochs=null", "train.step_epochs=null"]
    for i, split in enumerate(("train", "val")):
        overrides += [
            f"dataloader.register.{i}.json_file={coco_root}/{split}/custom.json",
            f"dataloader.register.{i}.image_root={coco_root}/{split}/images",
        ]
    return prepare_config(CONFIG, overrides)


def test_the_config_evaluates_against_the_json_ids(coco_root, tmp_path):
    cfg = config(coco_root, str(tmp_path))
    evaluator = instantiate(cfg.dataloader.evaluator)
    records = DatasetCatalog.get("coco_custom_val")
    evaluator.reset()
    for record in records:
        evaluator.process([record], perfect_outputs(record, with_masks=True))
    results = evaluator.evaluate()
    assert set(results) == {"coco/bbox", "coco/segm"}
    assert results["coco/bbox"]["AP"] == pytest.approx(100.0)
    assert results["coco/segm"]["AP"] == pytest.approx(100.0)
    # The same boxes with the classes rotated score far lower: the mapping back to the json's
    # category ids is what makes them right.
    evaluator.reset()
    for record in records:
        outputs = perfect_outputs(record, with_masks=True)
        outputs[0]["instances"].pred_classes = (outputs[0]["instances"].pred_classes + 1) % 4
        evaluator.process([record], outputs)
    assert evaluator.evaluate()["coco/bbox"]["AP"] < 50


def test_a_few_training_iterations_with_the_class_count_from_the_json(coco_root, tmp_path):
    out = str(tmp_path / "run")
    cfg = tiny_detector(
        config(
            coco_root,
            out,
            **FEW_ITERATIONS,
        )
    )
    assert load_config(CONFIG).model.roi_heads.num_classes is None  # resolved from the json:
    assert cfg.model.roi_heads.num_classes == 4
    trainer = FinetuneTrainer(cfg)
    assert trainer.model.roi_heads.box_predictor.cls_score.out_features == 5
    assert trainer.model.roi_heads.mask_head.predictor.out_channels == 4
    calibrate_frozen_bn(trainer.model, next(iter(instantiate(cfg.dataloader.train))))
    before = copy.deepcopy(trainer.model.roi_heads.box_predictor.state_dict())
    results = trainer.train()
    after = trainer.model.roi_heads.box_predictor.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before)
    with open(os.path.join(out, "metrics.json")) as f:
        losses = [json.loads(line)["total_loss"] for line in f if '"total_loss"' in line]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert set(results) == {"coco/bbox", "coco/segm"}
    with open(os.path.join(out, "config.yaml")) as f:
        assert "num_classes: 4" in f.read()


def test_a_coco_checkpoint_transfers_by_class_name_out_of_the_box(coco_root, tmp_path):
    cfg = tiny_detector(config(coco_root, str(tmp_path / "run")))
    class_map = assert_transfers_from_coco(cfg, tmp_path)
    assert class_map == {name: name for name in BY_ID}
