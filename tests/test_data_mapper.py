"""Our DatasetMapper gives the numbers of detectron2's bitmask path, from compact crops."""

import copy
import os

import numpy as np
import pytest
import torch

import detectron2.data.transforms as T
from detectron2.config import instantiate
from detectron2.data import DatasetMapper as StockMapper
from detectron2.data.detection_utils import read_image as stock_read_image
from detectron2.utils.events import EventStorage

from d2_finetune.config import load_config
from d2_finetune.data.cityscapes import load_cityscapes_instances
from d2_finetune.data.mapper import DatasetMapper, read_image
from d2_finetune.demo.synthetic import make_coco
from d2_finetune.errors import DatasetError
from d2_finetune.structures import CroppedMasks

from conftest import DEMO_CONFIG

AUGS = [
    T.ResizeShortestEdge((96, 112, 128, 150, 200), max_size=400, sample_style="choice"),
    T.RandomFlip(horizontal=True),
]


def mapped_pair(d, seed, augs=AUGS):
    stock = StockMapper(
        is_train=True,
        augmentations=augs,
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format="bitmask",
    )
    ours = DatasetMapper(
        is_train=True,
        augmentations=augs,
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format="cropped",
    )
    np.random.seed(seed)
    a = stock(copy.deepcopy(d))
    np.random.seed(seed)
    b = ours(copy.deepcopy(d))
    return a, b


def assert_same(a, b):
    assert torch.equal(a["image"], b["image"])
    ia, ib = a["instances"], b["instances"]
    assert isinstance(ib.gt_masks, CroppedMasks)
    assert torch.equal(ia.gt_boxes.tensor, ib.gt_boxes.tensor)
    assert torch.equal(ia.gt_classes, ib.gt_classes)
    assert torch.equal(ia.gt_masks.tensor, ib.gt_masks.to_bitmaps())


@pytest.fixture(scope="module")
def cityscapes_dicts(cityscapes_root):
    base = os.path.join(cityscapes_root, "cityscapes")
    return load_cityscapes_instances(
        os.path.join(base, "leftImg8bit", "train"), os.path.join(base, "gtFine", "train")
    )


def test_cropped_rle_masks_equal_the_bitmask_path(cityscapes_dicts):
    for seed in range(12):
        d = cityscapes_dicts[seed % len(cityscapes_dicts)]
        assert_same(*mapped_pair(d, seed))


def test_cropped_polygon_masks_equal_the_bitmask_path(tmp_path):
    from detectron2.data.datasets import load_coco_json

    json_file, image_root = make_coco(
        str(tmp_path), num_images=3, size=(160, 96), seed=4, image_ext="png"
    )
    for seed, d in enumerate(load_coco_json(json_file, image_root)):
        assert_same(*mapped_pair(d, seed))


def test_other_transforms_fall_back_to_full_masks(cityscapes_dicts):
    augs = [T.RandomCrop("absolute", (80, 120)), T.RandomFlip(horizontal=False, vertical=True)]
    for seed in range(4):
        assert_same(*mapped_pair(cityscapes_dicts[seed], seed, augs))


def test_opencv_decodes_png_exactly_as_pil(cityscapes_dicts):
    for d in cityscapes_dicts[:3]:
        for fmt in ("BGR", "RGB"):
            assert np.array_equal(
                read_image(d["file_name"], fmt), stock_read_image(d["file_name"], fmt)
            )


def test_the_mask_loss_is_the_same_on_either_path(cityscapes_dicts):
    cfg = load_config(DEMO_CONFIG)
    torch.manual_seed(0)
    model = instantiate(cfg.model)
    model.train()
    pairs = [mapped_pair(d, s) for s, d in enumerate(cityscapes_dicts[:2])]
    losses = []
    for batch in ([a for a, _ in pairs], [b for _, b in pairs]):
        torch.manual_seed(1)
        with EventStorage(), torch.no_grad():
            losses.append({k: v.item() for k, v in model(batch).items()})
    assert losses[0] == losses[1]
    assert losses[0]["loss_mask"] > 0


def test_a_corrupt_image_names_the_file(cityscapes_dicts, tmp_path):
    bad = tmp_path / "bad_leftImg8bit.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 40)
    d = dict(cityscapes_dicts[0], file_name=str(bad))
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    with pytest.raises(DatasetError, match=f"Cannot use image {bad}"):
        mapper(d)
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR", decoder="pil")
    with pytest.raises(DatasetError, match=f"Cannot use image {bad}"):
        mapper(d)


def test_an_image_whose_size_differs_from_its_annotation(cityscapes_dicts):
    d = dict(cityscapes_dicts[0], height=999)
    mapper = DatasetMapper(is_train=True, augmentations=[], image_format="BGR")
    with pytest.raises(DatasetError, match=r"Cannot use image .*Mismatched image shape"):
        mapper(d)


def test_a_mask_whose_runs_do_not_fit_its_image_names_the_file(cityscapes_dicts):
    d = copy.deepcopy(cityscapes_dicts[0])
    segm = next(a["segmentation"] for a in d["annotations"] if not a["iscrowd"])
    segm["size"] = [segm["size"][0], segm["size"][1] + 1]
    mapper = DatasetMapper(
        is_train=True,
        augmentations=[],
        image_format="BGR",
        use_instance_mask=True,
        instance_mask_format="cropped",
    )
    with pytest.raises(
        DatasetError,
        match=rf"Cannot use the masks of {d['file_name']}: its RLE runs "
        r"cover \d+ pixels, not the \d+x\d+ of its size",
    ):
        mapper(d)
