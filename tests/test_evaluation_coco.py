import json
import os
import shutil

import pytest

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import convert_to_coco_json
from detectron2.structures import BoxMode

from d2_finetune.evaluation import ScopedCOCOEvaluator

from conftest import perfect_outputs

RECORDS = [
    {
        "file_name": f"img{i}.png",
        "image_id": i,
        "height": 100,
        "width": 120,
        "annotations": [
            {
                "bbox": [10 + i, 20, 40, 30],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": 0,
                "iscrowd": 0,
            },
            {
                "bbox": [60, 50 + i, 30, 40],
                "bbox_mode": BoxMode.XYWH_ABS,
                "category_id": 1,
                "iscrowd": 0,
            },
        ],
    }
    for i in range(3)
]


@pytest.fixture
def dataset(request):
    name = f"scoped_coco_{request.node.name}"
    DatasetCatalog.register(name, lambda: RECORDS)
    MetadataCatalog.get(name).set(thing_classes=["car", "person"])
    yield name
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def box_ap(evaluator, dataset):
    evaluator.reset()
    for record in DatasetCatalog.get(dataset):
        evaluator.process([record], perfect_outputs(record))
    return evaluator.evaluate()["bbox"]["AP"]


def test_each_evaluator_converts_into_its_own_folder(dataset, tmp_path):
    first = tmp_path / "first"
    assert (
        box_ap(ScopedCOCOEvaluator(dataset, tasks=("bbox",), output_dir=str(first)), dataset) == 100
    )
    assert "json_file" not in MetadataCatalog.get(dataset).as_dict()
    shutil.rmtree(first)

    second = tmp_path / "second"
    assert (
        box_ap(ScopedCOCOEvaluator(dataset, tasks=("bbox",), output_dir=str(second)), dataset)
        == 100
    )
    assert os.path.isfile(second / f"{dataset}_coco_format.json")
    assert "json_file" not in MetadataCatalog.get(dataset).as_dict()


def test_a_failed_conversion_leaves_no_path_behind(dataset, tmp_path):
    blocked = tmp_path / "a_file"
    blocked.write_text("")
    with pytest.raises(OSError):
        ScopedCOCOEvaluator(dataset, tasks=("bbox",), output_dir=str(blocked / "inference"))
    assert "json_file" not in MetadataCatalog.get(dataset).as_dict()
    assert (
        box_ap(
            ScopedCOCOEvaluator(dataset, tasks=("bbox",), output_dir=str(tmp_path / "ok")), dataset
        )
        == 100
    )


def test_a_dataset_with_its_own_json_is_evaluated_against_it(dataset, tmp_path):
    own = str(tmp_path / "annotations.json")
    convert_to_coco_json(dataset, own)
    with open(own) as f:
        coco = json.load(f)
    coco["annotations"] = coco["annotations"][1:]  # the top-scored prediction becomes a false one
    with open(own, "w") as f:
        json.dump(coco, f)
    MetadataCatalog.get(dataset).json_file = own

    out = tmp_path / "out"
    ap = box_ap(ScopedCOCOEvaluator(dataset, tasks=("bbox",), output_dir=str(out)), dataset)
    assert 0 < ap < 100
    assert MetadataCatalog.get(dataset).json_file == own
    assert not os.path.exists(out / f"{dataset}_coco_format.json")
