import json
import os

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image

from d2_finetune.data.cityscapes import parse_instance_png, parse_polygons_json
from d2_finetune.demo.synthetic import make_cityscapes, make_coco


def test_cityscapes_layout_and_exact_rasterisation(tmp_path):
    written = make_cityscapes(str(tmp_path), {"train": 3, "val": 2}, size=(160, 80), seed=3)
    assert len(written["train"]) == 3 and len(written["val"]) == 2
    for image in written["train"] + written["val"]:
        assert "/leftImg8bit/" in image and image.endswith("_leftImg8bit.png")
        gt = image.replace("/leftImg8bit/", "/gtFine/").replace("_leftImg8bit.png", "_gtFine_")
        for suffix in ("polygons.json", "instanceIds.png", "labelIds.png", "color.png"):
            assert os.path.isfile(gt + suffix)
        ids = np.asarray(Image.open(gt + "instanceIds.png"))
        assert ids.dtype == np.uint16 and ids.shape == (80, 160)
        assert Image.open(image).size == (160, 80)
        # Masks rasterised from the JSON equal the official PNG's instances.
        _, _, from_json = parse_polygons_json(gt + "polygons.json")
        for ann in from_json:
            if ann["iscrowd"]:
                continue
            mask = mask_util.decode(ann["segmentation"]).astype(bool)
            values = np.unique(ids[mask])
            assert len(values) == 1 and values[0] >= 1000
            assert np.array_equal(ids == values[0], mask)
        _, _, from_png = parse_instance_png(gt + "instanceIds.png")
        assert sorted(a["category_id"] for a in from_png if not a["iscrowd"]) == sorted(
            a["category_id"] for a in from_json if not a["iscrowd"]
        )


def test_coco_sample_uses_real_coco_category_ids(tmp_path):
    json_path, image_dir = make_coco(str(tmp_path), num_images=3, size=(128, 64), seed=1)
    with open(json_path) as f:
        data = json.load(f)
    assert len(data["categories"]) == 80
    ids = {c["name"]: c["id"] for c in data["categories"]}
    assert ids["person"] == 1 and ids["toothbrush"] == 90
    assert len(data["images"]) == 3
    for img in data["images"]:
        assert os.path.isfile(os.path.join(image_dir, img["file_name"]))
    assert all(a["category_id"] in ids.values() for a in data["annotations"])
    assert all(len(a["segmentation"][0]) >= 6 for a in data["annotations"])
