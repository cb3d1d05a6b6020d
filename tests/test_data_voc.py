"""Pascal VOC: the synthetic VOCdevkit, registration, errors, evaluation and a short training."""

import json
import os
import shutil
import xml.etree.ElementTree as ET

import pytest
import torch
from PIL import Image

from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import CLASS_NAMES

from d2_finetune.config import load_config
from d2_finetune.data import register_datasets, register_voc
from d2_finetune.demo.synthetic import VOC_LOOKS, make_voc
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

# detectron2's VOC evaluator divides by zero for classes absent from the tiny test set.
pytestmark = pytest.mark.filterwarnings("ignore:invalid value encountered in divide:RuntimeWarning")

CONFIG = os.path.join(REPO, "configs", "voc_ft.py")
NAMES = [
    "voc_ft_2007_trainval",
    "voc_ft_2007_train",
    "voc_ft_2007_val",
    "voc_ft_2007_test",
    "voc_ft_2012_trainval",
    "voc_ft_2012_train",
    "voc_ft_2012_val",
]


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("voc"))
    make_voc(root, {"trainval": 6, "test": 4}, year=2007, size=(256, 192), seed=0)
    make_voc(root, {"trainval": 4}, year=2012, size=(256, 192), seed=1)
    return root


def objects(xml_file):
    tree = ET.parse(xml_file)
    return [
        (
            o.find("name").text,
            int(o.find("difficult").text),
            [int(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")],
        )
        for o in tree.findall("object")
    ]


def test_the_synthetic_devkit_has_the_standard_layout(voc_root):
    base = os.path.join(voc_root, "VOCdevkit", "VOC2007")
    main = os.path.join(base, "ImageSets", "Main")
    ids = {
        s: open(os.path.join(main, s + ".txt")).read().split()
        for s in ("trainval", "train", "val", "test")
    }
    assert ids["trainval"] == ids["train"] + ids["val"] and len(ids["test"]) == 4
    for image_id in ids["trainval"] + ids["test"]:
        width, height = Image.open(os.path.join(base, "JPEGImages", image_id + ".jpg")).size
        tree = ET.parse(os.path.join(base, "Annotations", image_id + ".xml"))
        assert (int(tree.find("size/width").text), int(tree.find("size/height").text)) == (
            width,
            height,
        )
        for name, _, (x0, y0, x1, y1) in objects(
            os.path.join(base, "Annotations", image_id + ".xml")
        ):
            assert name in VOC_LOOKS
            assert 1 <= x0 < x1 <= width and 1 <= y0 < y1 <= height
    # Per-class lists: 1 present, 0 only difficult, -1 absent, as in the devkit.
    for name in CLASS_NAMES:
        for line in open(os.path.join(main, f"{name}_test.txt")):
            image_id, flag = line.split()
            found = [
                d
                for n, d, _ in objects(os.path.join(base, "Annotations", image_id + ".xml"))
                if n == name
            ]
            assert int(flag) == (-1 if not found else 1 if 0 in found else 0)
    assert os.path.isdir(os.path.join(voc_root, "VOCdevkit", "VOC2012", "JPEGImages"))


def test_registration_is_detectron2s_and_idempotent(voc_root):
    assert register_voc(voc_root) == NAMES
    assert register_voc(voc_root) == NAMES
    meta = MetadataCatalog.get("voc_ft_2007_test")
    assert meta.thing_classes == list(CLASS_NAMES)
    assert (meta.year, meta.split, meta.evaluator_type) == (2007, "test", "pascal_voc")
    assert meta.dirname == os.path.join(voc_root, "VOCdevkit", "VOC2007")
    assert MetadataCatalog.get("voc_ft_2012_trainval").year == 2012
    records = DatasetCatalog.get("voc_ft_2007_trainval")
    assert [r["image_id"] for r in records] == [f"{i:06d}" for i in range(1, 7)]
    for record in records:
        xml_objects = objects(
            os.path.join(meta.dirname, "Annotations", record["image_id"] + ".xml")
        )
        # detectron2 reads VOC's 1-based pixel indices as coordinates: xmin - 1, xmax.
        assert [(CLASS_NAMES[a["category_id"]], a["bbox"]) for a in record["annotations"]] == [
            (n, [x0 - 1.0, y0 - 1.0, float(x1), float(y1)])
            for n, _, (x0, y0, x1, y1) in xml_objects
        ]
    assert len(DatasetCatalog.get("voc_ft_2012_trainval")) == 4


def test_missing_or_broken_data_is_reported(voc_root, tmp_path):
    register_voc(str(tmp_path))
    with pytest.raises(
        DatasetError,
        match=r"VOC image set not found: .*VOC2007/ImageSets/Main/test\.txt\. "
        r"Download VOCtrainval_06-Nov-2007\.tar",
    ):
        DatasetCatalog.get("voc_ft_2007_test")
    with pytest.raises(DatasetError, match=r"Unknown VOC dataset name\(s\) \['voc_2007_test'\]"):
        register_voc(str(tmp_path), names=["voc_2007_test"])
    with pytest.raises(
        DatasetError,
        match=r"Dataset 'voc_ft_2007_trainval': .*VOCdevkit/VOC2007 does "
        r"not exist\. Download VOCtrainval_06-Nov-2007\.tar",
    ):
        register_datasets(load_config(CONFIG, [f"dataloader.register.root={tmp_path}"]))

    shutil.copytree(os.path.join(voc_root, "VOCdevkit"), tmp_path / "VOCdevkit")
    base = tmp_path / "VOCdevkit" / "VOC2007"
    xml_file = base / "Annotations" / "000008.xml"
    xml_file.write_text(xml_file.read_text().replace("<name>", "<name>x", 1))
    name = objects(str(xml_file))[0][0]
    with pytest.raises(
        DatasetError, match=rf"000008\.xml: object class '{name}' is not one of the 20 VOC classes"
    ):
        DatasetCatalog.get("voc_ft_2007_test")
    os.remove(xml_file)
    with pytest.raises(
        DatasetError, match=r"VOC annotation missing: .*000008\.xml \(listed in .*test\.txt\)"
    ):
        DatasetCatalog.get("voc_ft_2007_test")
    os.remove(base / "JPEGImages" / "000002.jpg")
    with pytest.raises(
        DatasetError,
        match=r"1 of the 6 images listed in .*trainval\.txt are "
        r"missing, e\.g\. .*000002\.jpg",
    ):
        DatasetCatalog.get("voc_ft_2007_trainval")
    register_voc(voc_root)


def config(voc_root, output_dir, **extra):
    overrides = tiny_overrides(voc_root, output_dir, **extra) + ["train.epochs=null"]
    return prepare_config(CONFIG, overrides)


def test_the_config_scores_voc_ap50_and_coco_ap(voc_root, tmp_path):
    cfg = config(voc_root, str(tmp_path))
    evaluator = instantiate(cfg.dataloader.evaluator)
    records = DatasetCatalog.get(cfg.dataloader.test.dataset.names)
    for e in evaluator:
        e.reset()
    for record in records:
        for e in evaluator:
            e.process([record], perfect_outputs(record))
    voc, coco = (e.evaluate() for e in evaluator)
    # Perfect boxes score 100 for every class with a non-difficult object in the test set and 0
    # for the others (VOC averages over all 20 classes).
    meta = MetadataCatalog.get("voc_ft_2007_test")
    xml_files = [os.path.join(meta.dirname, "Annotations", r["image_id"] + ".xml") for r in records]
    present = {n for f in xml_files for n, difficult, _ in objects(f) if not difficult}
    assert voc["voc/bbox"]["AP50"] == pytest.approx(100 * len(present) / 20)
    assert coco["coco/bbox"]["AP"] == pytest.approx(100.0)


def test_a_few_training_iterations_of_the_faster_rcnn(voc_root, tmp_path):
    out = str(tmp_path / "run")
    cfg = tiny_detector(
        config(
            voc_root,
            out,
            **FEW_ITERATIONS,
        )
    )
    assert list(cfg.dataloader.train.dataset.names) == [
        "voc_ft_2007_trainval",
        "voc_ft_2012_trainval",
    ]
    trainer = FinetuneTrainer(cfg)
    model = trainer.model
    assert model.roi_heads.box_predictor.cls_score.out_features == 21
    assert not model.roi_heads.mask_on and not hasattr(model.roi_heads, "mask_head")
    calibrate_frozen_bn(model, next(iter(instantiate(cfg.dataloader.train))))
    before = {k: v.clone() for k, v in model.roi_heads.box_predictor.state_dict().items()}
    results = trainer.train()
    assert any(
        not torch.equal(before[k], v) for k, v in model.roi_heads.box_predictor.state_dict().items()
    )
    with open(os.path.join(out, "metrics.json")) as f:
        rows = [json.loads(line) for line in f]
    losses = [r["total_loss"] for r in rows if "total_loss" in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert "loss_mask" not in rows[0]
    assert set(results) == {"voc/bbox", "coco/bbox"}
    assert 0 <= results["voc/bbox"]["AP50"] <= 100


def test_a_coco_checkpoint_transfers_by_class_name_and_synonym(voc_root, tmp_path):
    cfg = tiny_detector(config(voc_root, str(tmp_path / "run")))
    class_map = assert_transfers_from_coco(cfg, tmp_path)
    assert None not in class_map.values()
    assert {
        k: class_map[k]
        for k in (
            "aeroplane",
            "motorbike",
            "sofa",
            "tvmonitor",
            "diningtable",
            "pottedplant",
            "person",
        )
    } == {
        "aeroplane": "airplane",
        "motorbike": "motorcycle",
        "sofa": "couch",
        "tvmonitor": "tv",
        "diningtable": "dining table",
        "pottedplant": "potted plant",
        "person": "person",
    }
