"""Cityscapes loading: fidelity to the official instance PNGs, crowd flags, category order,
registration, validation errors, and how the training config uses the records."""

import json
import logging
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
from PIL import Image, ImageDraw

from detectron2.config import instantiate
from detectron2.data import DatasetCatalog, DatasetFromList, MetadataCatalog
from detectron2.structures import BoxMode

from d2_finetune.data import cityscapes as cs
from d2_finetune.demo.synthetic import make_cityscapes
from d2_finetune.errors import DatasetError

CLASSES = cs.CITYSCAPES_THING_CLASSES


def _labels():
    from cityscapesscripts.helpers.labels import id2label, name2label

    return id2label, name2label


def _dirs(root, split):
    return (
        os.path.join(root, "cityscapes", "leftImg8bit", split),
        os.path.join(root, "cityscapes", "gtFine", split),
    )


def _gt_file(record, suffix):
    image = record["file_name"]
    gt = image.replace(os.sep + "leftImg8bit" + os.sep, os.sep + "gtFine" + os.sep)
    return gt[: -len("_leftImg8bit.png")] + suffix


def _official_instances(record):
    """{instance id: mask} of the thing instances in the record's official instanceIds PNG."""
    id2label, _ = _labels()
    ids = np.asarray(Image.open(_gt_file(record, "_gtFine_instanceIds.png")))
    return {
        int(v): ids == v
        for v in np.unique(ids)
        if v >= 1000 and id2label[int(v) // 1000].name in CLASSES
    }


def _decode(segmentation, height, width):
    if isinstance(segmentation, dict):
        return mask_util.decode(segmentation).astype(bool)
    rles = mask_util.frPyObjects([list(map(float, p)) for p in segmentation], height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def _iou(a, b):
    union = np.logical_or(a, b).sum()
    return np.logical_and(a, b).sum() / union if union else 0.0


def _best_ious(records):
    """For every official instance: the best IoU of a same-class non-crowd loader mask."""
    id2label, _ = _labels()
    ious = []
    for r in records:
        masks = [
            (a["category_id"], _decode(a["segmentation"], r["height"], r["width"]))
            for a in r["annotations"]
            if not a["iscrowd"]
        ]
        for value, gt in _official_instances(r).items():
            category = CLASSES.index(id2label[value // 1000].name)
            ious.append(max((_iou(gt, m) for c, m in masks if c == category), default=0.0))
    return np.array(ious)


@pytest.fixture(scope="module")
def occluded_root(tmp_path_factory):
    """Many overlapping objects per image, so later objects often cover earlier ones."""
    root = str(tmp_path_factory.mktemp("cs_occluded"))
    make_cityscapes(
        root, {"val": 10}, size=(384, 192), seed=3, objects_per_image=(8, 12), group_prob=0.6
    )
    return root


def _occluded_instances(root):
    """Number of instances whose official mask is smaller than their own polygon's raster."""
    _, name2label = _labels()
    occluded = 0
    image_dir, gt_dir = _dirs(root, "val")
    for _, json_file in cs.cityscapes_files(image_dir, gt_dir):
        with open(json_file) as f:
            data = json.load(f)
        ids = np.asarray(Image.open(json_file.replace("_polygons.json", "_instanceIds.png")))
        seen = {}
        for obj in data["objects"]:
            if obj["label"] not in CLASSES:
                continue
            k = seen.get(obj["label"], 0)
            seen[obj["label"]] = k + 1
            alone = Image.new("L", (data["imgWidth"], data["imgHeight"]), 0)
            ImageDraw.Draw(alone).polygon([tuple(p) for p in obj["polygon"]], fill=1)
            visible = (ids == name2label[obj["label"]].id * 1000 + k).sum()
            occluded += visible < np.asarray(alone).sum()
    return occluded


def test_masks_match_official_png_at_least_as_well_as_detectron2(occluded_root):
    from detectron2.data.datasets.cityscapes import load_cityscapes_instances as d2_load

    assert _occluded_instances(occluded_root) >= 20
    image_dir, gt_dir = _dirs(occluded_root, "val")
    ours = _best_ious(cs.load_cityscapes_instances(image_dir, gt_dir, cache=False))
    theirs = _best_ious(d2_load(image_dir, gt_dir, from_json=True, to_polygons=True))
    assert len(ours) == len(theirs) > 50
    share_ours, share_theirs = (ours >= 0.95).mean(), (theirs >= 0.95).mean()
    assert share_ours >= share_theirs, (share_ours, share_theirs)
    assert (ours == 1.0).all(), f"{(ours < 1).sum()} of {len(ours)} instances are not exact"


def test_png_source_is_exact_and_equals_polygons(occluded_root):
    image_dir, gt_dir = _dirs(occluded_root, "val")
    from_png = cs.load_cityscapes_instances(image_dir, gt_dir, source="png", cache=False)
    from_json = cs.load_cityscapes_instances(image_dir, gt_dir, cache=False)
    assert (_best_ious(from_png) == 1.0).all()
    for a, b in zip(from_png, from_json):
        assert a["file_name"] == b["file_name"]

        def things(record):
            return sorted(
                (x["category_id"], x["segmentation"]["counts"], tuple(x["bbox"]))
                for x in record["annotations"]
                if not x["iscrowd"]
            )

        assert things(a) == things(b)


def test_crowd_flags_categories_and_boxes(occluded_root):
    image_dir, gt_dir = _dirs(occluded_root, "val")
    records = cs.load_cityscapes_instances(image_dir, gt_dir, cache=False)
    crowd_seen = 0
    for r in records:
        with open(_gt_file(r, "_gtFine_polygons.json")) as f:
            objects = json.load(f)["objects"]
        group_classes = sorted(
            CLASSES.index(o["label"][: -len("group")])
            for o in objects
            if o["label"].endswith("group")
        )
        crowd = [a for a in r["annotations"] if a["iscrowd"]]
        # a group region can be fully covered by later objects: then it has no annotation
        assert len(crowd) <= len(group_classes)
        assert all(a["category_id"] in group_classes for a in crowd)
        crowd_seen += len(crowd)
        thing_classes = sorted(CLASSES.index(o["label"]) for o in objects if o["label"] in CLASSES)
        ours = [a["category_id"] for a in r["annotations"] if not a["iscrowd"]]
        assert set(ours) <= set(thing_classes)
        assert len(ours) == len(_official_instances(r))
        for a in r["annotations"]:
            assert a["bbox_mode"] == BoxMode.XYXY_ABS
            ys, xs = np.nonzero(_decode(a["segmentation"], r["height"], r["width"]))
            assert a["bbox"] == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    assert crowd_seen >= 3


def test_category_ids_follow_official_order(occluded_root):
    id2label, _ = _labels()
    image_dir, gt_dir = _dirs(occluded_root, "val")
    records = cs.load_cityscapes_instances(image_dir, gt_dir, cache=False)
    assert CLASSES == ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    seen = set()
    for r in records:
        masks = {a["segmentation"]["counts"]: a["category_id"] for a in r["annotations"]}
        for value, gt in _official_instances(r).items():
            rle = mask_util.encode(np.asfortranarray(gt.astype(np.uint8)))
            category = masks[rle["counts"].decode()]
            assert CLASSES[category] == id2label[value // 1000].name
            seen.add(category)
    assert len(seen) >= 6


def test_pool_and_serial_parsing_agree(occluded_root):
    image_dir, gt_dir = _dirs(occluded_root, "val")
    serial = cs.load_cityscapes_instances(image_dir, gt_dir, cache=False, num_workers=0)
    pooled = cs.load_cityscapes_instances(image_dir, gt_dir, cache=False, num_workers=2)
    assert serial == pooled
    assert sum(len(r["annotations"]) for r in serial) > 50


def test_crop_rle_equals_full_image_encoding():
    rng = np.random.default_rng(0)
    for trial in range(500):
        height, width = (int(v) for v in rng.integers(1, 10, size=2))
        y0, x0 = int(rng.integers(height)), int(rng.integers(width))
        y1, x1 = int(rng.integers(y0 + 1, height + 1)), int(rng.integers(x0 + 1, width + 1))
        if trial % 3 == 0:
            y0, y1 = 0, height
        mask = np.zeros((height, width), dtype=bool)
        mask[y0:y1, x0:x1] = rng.random((y1 - y0, x1 - x0)) < rng.choice([0.3, 0.7, 1.0])
        expected = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert cs._crop_rle(mask[y0:y1, x0:x1], x0, y0, height, width) == expected


def test_registration_is_lazy_idempotent_and_carries_metadata(tmp_path):
    from cityscapesscripts.helpers.labels import name2label

    root = str(tmp_path / "absent")
    names = cs.register_cityscapes(root=root)
    assert names == [f"cityscapes_ft_instance_{s}" for s in ("train", "val", "test")]
    assert cs.register_cityscapes(root=root) == names
    meta = MetadataCatalog.get("cityscapes_ft_instance_val")
    assert meta.thing_classes == CLASSES
    assert meta.thing_colors == [list(name2label[c].color) for c in CLASSES]
    assert meta.gt_dir == os.path.join(root, "cityscapes", "gtFine", "val")
    assert meta.evaluator_type == "cityscapes_instance"
    with pytest.raises(DatasetError, match="Cityscapes not found.*gtFine_trainvaltest.zip"):
        DatasetCatalog.get("cityscapes_ft_instance_val")


def test_loader_options_come_from_the_config(tiny_cfg, cityscapes_root, tmp_path):
    cache_dir = str(tmp_path / "cache")
    tiny_cfg(**{"dataloader.register.source": "png", "dataloader.register.cache_dir": cache_dir})
    from_png = DatasetCatalog.get("cityscapes_ft_instance_val")
    (folder,) = os.listdir(cache_dir)
    assert sorted(os.listdir(os.path.join(cache_dir, folder))) == [
        "instances_val_png.npz",
        "instances_val_png.npz.lock",
    ]
    assert (_best_ious(from_png) == 1.0).all() and len(from_png) == 3


# ---- validation errors ------------------------------------------------------------------


def _write_image(root, split, stem, objects, size=(64, 32), annotation=True):
    """One image in the Cityscapes layout with the given polygon objects."""
    city = stem.split("_")[0]
    image_dir = os.path.join(root, "cityscapes", "leftImg8bit", split, city)
    gt_dir = os.path.join(root, "cityscapes", "gtFine", split, city)
    os.makedirs(image_dir, exist_ok=True)
    os.makedirs(gt_dir, exist_ok=True)
    Image.new("RGB", size).save(os.path.join(image_dir, stem + "_leftImg8bit.png"))
    json_file = os.path.join(gt_dir, stem + "_gtFine_polygons.json")
    if annotation:
        with open(json_file, "w") as f:
            json.dump({"imgWidth": size[0], "imgHeight": size[1], "objects": objects}, f)
    return json_file


CAR = {"label": "car", "polygon": [[2, 2], [30, 2], [30, 20], [2, 20]]}


def test_missing_split_names_folder_and_download(tmp_path):
    _write_image(str(tmp_path), "train", "aachen_000000_000019", [CAR])
    image_dir, gt_dir = _dirs(str(tmp_path), "val")
    with pytest.raises(DatasetError) as e:
        cs.load_cityscapes_instances(image_dir, gt_dir)
    msg = str(e.value)
    assert "split 'val' not found" in msg and image_dir in msg
    assert "leftImg8bit_trainvaltest.zip" in msg and "gtFine_trainvaltest.zip" in msg
    assert f"unzip both into {os.path.join(str(tmp_path), 'cityscapes')}/" in msg


def test_missing_gt_split_is_named(tmp_path):
    _write_image(str(tmp_path), "train", "aachen_000000_000019", [CAR])
    os.makedirs(os.path.join(str(tmp_path), "cityscapes", "leftImg8bit", "val", "x"))
    image_dir, gt_dir = _dirs(str(tmp_path), "val")
    with pytest.raises(DatasetError, match=f"split 'val' not found: {gt_dir} does not exist"):
        cs.load_cityscapes_instances(image_dir, gt_dir)


def test_missing_root_says_what_to_download(tmp_path):
    image_dir, gt_dir = _dirs(str(tmp_path / "nowhere"), "train")
    with pytest.raises(DatasetError) as e:
        cs.load_cityscapes_instances(image_dir, gt_dir)
    msg = str(e.value)
    assert msg.startswith(
        f"Cityscapes not found: {tmp_path / 'nowhere' / 'cityscapes'} does not exist"
    )
    assert "DETECTRON2_DATASETS" in msg and "leftImg8bit_trainvaltest.zip" in msg


def test_image_without_annotation_file(tmp_path):
    _write_image(str(tmp_path), "train", "aachen_000000_000019", [CAR])
    missing = _write_image(str(tmp_path), "train", "aachen_000001_000019", [CAR], annotation=False)
    with pytest.raises(DatasetError) as e:
        cs.load_cityscapes_instances(*_dirs(str(tmp_path), "train"))
    msg = str(e.value)
    assert "1 image(s)" in msg and "aachen_000001_000019_leftImg8bit.png" in msg
    assert f"(expected {missing})" in msg and "gtFine_trainvaltest.zip" in msg


def test_split_without_images(tmp_path):
    _write_image(str(tmp_path), "train", "aachen_000000_000019", [CAR])
    os.remove(
        os.path.join(
            _dirs(str(tmp_path), "train")[0], "aachen", "aachen_000000_000019_leftImg8bit.png"
        )
    )
    with pytest.raises(DatasetError, match="No \\*_leftImg8bit.png images found"):
        cs.load_cityscapes_instances(*_dirs(str(tmp_path), "train"))


def test_unreadable_json_names_the_file(tmp_path):
    bad = _write_image(str(tmp_path), "train", "aachen_000000_000019", [CAR])
    with open(bad, "w") as f:
        f.write('{"imgWidth": 64, "objects": [')
    with pytest.raises(DatasetError, match=f"Cannot read annotation file {bad}: not valid JSON"):
        cs.load_cityscapes_instances(*_dirs(str(tmp_path), "train"))


def test_json_without_image_size_names_the_file(tmp_path):
    bad = _write_image(str(tmp_path), "train", "aachen_000000_000019", [CAR])
    with open(bad, "w") as f:
        json.dump({"objects": []}, f)
    with pytest.raises(
        DatasetError, match=f"Cannot read annotation file {bad}: not a Cityscapes polygons file"
    ):
        cs.load_cityscapes_instances(*_dirs(str(tmp_path), "train"))


def test_unreadable_instance_png_names_the_file(tmp_path):
    json_file = _write_image(str(tmp_path), "train", "aachen_000000_000019", [CAR])
    png = json_file.replace("_polygons.json", "_instanceIds.png")
    with open(png, "wb") as f:
        f.write(b"not a png")
    with pytest.raises(DatasetError, match=f"Cannot read annotation image {png}"):
        cs.load_cityscapes_instances(*_dirs(str(tmp_path), "train"), source="png")
    Image.new("RGB", (64, 32)).save(png)
    with pytest.raises(DatasetError, match=f"{png} is not an instanceIds image"):
        cs.load_cityscapes_instances(*_dirs(str(tmp_path), "train"), source="png")


def test_unknown_label_names_file_object_and_label(tmp_path):
    bad = _write_image(
        str(tmp_path),
        "train",
        "aachen_000000_000019",
        [CAR, {"label": "hovercraft", "polygon": [[1, 1], [5, 1], [5, 5]]}],
    )
    with pytest.raises(DatasetError) as e:
        cs.load_cityscapes_instances(*_dirs(str(tmp_path), "train"))
    msg = str(e.value)
    assert msg.startswith(f"{bad}: object #2 has unknown label 'hovercraft'")
    assert "cityscapesscripts.helpers.labels" in msg


def test_invalid_polygon_names_file_and_object(tmp_path):
    bad = _write_image(
        str(tmp_path),
        "train",
        "aachen_000000_000019",
        [CAR, {"label": "person", "polygon": [[1, 1], [5, "x"], [5, 5]]}],
    )
    with pytest.raises(
        DatasetError, match=f"{bad}: object #2 \\('person'\\) has an invalid polygon"
    ):
        cs.load_cityscapes_instances(*_dirs(str(tmp_path), "train"))


# Degenerate polygons as annotators leave them: a 2-point diagonal and horizontal line,
# collinear points, repeated points, and a polygon one pixel wide.
DEGENERATE = [
    {"label": "car", "polygon": [[3, 3], [20, 14]]},
    {"label": "person", "polygon": [[1, 25], [40, 25]]},
    {"label": "bus", "polygon": [[5, 5], [15, 10], [25, 15]]},
    {"label": "truck", "polygon": [[44, 4], [44, 4], [44, 4]]},
    {"label": "bicycle", "polygon": [[50, 2], [50, 30], [51, 30]]},
]


def test_degenerate_polygons_are_drawn_as_cityscapesscripts_draws_them(tmp_path):
    """Each instance mask equals its pixels in cityscapesscripts' own instanceIds image
    (json2instanceImg's createInstanceImage), later objects covering earlier ones."""
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage

    _, name2label = _labels()
    objects = [CAR] + DEGENERATE + [{"label": "rider", "polygon": [[10, 0], [12, 31]]}]
    json_file = _write_image(str(tmp_path), "train", "aachen_000000_000019", objects)
    annotation = Annotation()
    annotation.fromJsonFile(json_file)
    ids = np.asarray(createInstanceImage(annotation, "ids"))

    height, width, annotations = cs.parse_polygons_json(json_file)
    assert len(annotations) == len(objects)
    seen = {}
    for obj, ann in zip(objects, annotations):
        label = obj["label"]
        value = name2label[label].id * 1000 + seen.get(label, 0)
        seen[label] = seen.get(label, 0) + 1
        official = ids == value
        assert official.any(), label  # the official image drew it
        assert ann["category_id"] == CLASSES.index(label) and not ann["iscrowd"]
        assert np.array_equal(_decode(ann["segmentation"], height, width), official), label


def test_polygons_too_short_to_draw_are_skipped_counted_and_warned_once(tmp_path, caplog):
    """A polygon of 0 or 1 point: Pillow cannot draw it (cityscapesscripts fails on the file);
    the loader skips it and says how many and where, once per load."""
    root = str(tmp_path)
    point = {"label": "car", "polygon": [[3, 3]]}
    empty = {"label": "person", "polygon": []}
    first = _write_image(root, "train", "aachen_000000_000019", [CAR, point, DEGENERATE[0]])
    _write_image(root, "train", "aachen_000001_000019", [empty, CAR])
    with caplog.at_level(logging.WARNING, logger="d2_finetune"):
        records = cs.load_cityscapes_instances(*_dirs(root, "train"), num_workers=0)
    assert [[a["category_id"] for a in r["annotations"]] for r in records] == [
        [CLASSES.index("car"), CLASSES.index("car")],
        [CLASSES.index("car")],
    ]
    warnings = [r.getMessage() for r in caplog.records if "fewer than 2 points" in r.getMessage()]
    assert warnings == [
        f"Skipped 2 polygon(s) with fewer than 2 points in 2 file(s) of {_dirs(root, 'train')[1]}, "
        f"e.g. {first} (cityscapesscripts cannot draw them either)."
    ]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="d2_finetune"):
        assert cs.load_cityscapes_instances(*_dirs(root, "train")) == records
    assert sum("Skipped 2 polygon(s)" in r.getMessage() for r in caplog.records) == 1


def test_unknown_source_is_refused(tmp_path):
    with pytest.raises(DatasetError, match="must be 'polygons' or 'png', got 'xml'"):
        cs.register_cityscapes(root=str(tmp_path), source="xml")


# ---- images without instances, crowd regions and the training config ----------------------


@pytest.fixture
def sparse_root(tmp_path):
    """train: one image with a car, one with only a crowd region, one with no objects; val: one
    image with a car."""
    root = str(tmp_path / "sparse")
    _write_image(root, "val", "frankfurt_000000_000019", [CAR])
    _write_image(root, "train", "aachen_000000_000019", [CAR])
    _write_image(
        root,
        "train",
        "aachen_000001_000019",
        [{"label": "cargroup", "polygon": [[2, 2], [40, 2], [40, 20]]}],
    )
    _write_image(
        root,
        "train",
        "aachen_000002_000019",
        [{"label": "road", "polygon": [[0, 16], [64, 16], [64, 32], [0, 32]]}],
    )
    return root


def test_images_without_instances_are_kept_by_the_loader(sparse_root):
    records = cs.load_cityscapes_instances(*_dirs(sparse_root, "train"))
    assert [[a["iscrowd"] for a in r["annotations"]] for r in records] == [[0], [1], []]


@pytest.mark.parametrize("filter_empty,expected", [(True, 1), (False, 3)])
def test_training_drops_empty_images_only_when_configured(
    tiny_cfg, sparse_root, filter_empty, expected
):
    cfg = tiny_cfg(
        **{
            "dataloader.register.root": sparse_root,
            "dataloader.train.dataset.filter_empty": filter_empty,
        }
    )
    assert len(instantiate(cfg.dataloader.train.dataset)) == expected


def test_training_mapper_drops_crowd_regions(tiny_cfg, occluded_root):
    cfg = tiny_cfg()
    mapper = instantiate(cfg.dataloader.train.mapper)
    records = cs.load_cityscapes_instances(*_dirs(occluded_root, "val"))
    record = next(r for r in records if any(a["iscrowd"] for a in r["annotations"]))
    non_crowd = [a for a in record["annotations"] if not a["iscrowd"]]
    instances = mapper(dict(record))["instances"]
    assert len(instances) == len(non_crowd) < len(record["annotations"])
    assert sorted(instances.gt_classes.tolist()) == sorted(a["category_id"] for a in non_crowd)


def test_train_loader_keeps_records_serialized(tiny_cfg):
    cfg = tiny_cfg()
    loader = instantiate(cfg.dataloader.train)
    dataset = loader.dataset  # ToIterableDataset(MapDataset(DatasetFromList))
    while not isinstance(dataset, DatasetFromList):
        dataset = dataset.dataset if hasattr(dataset, "dataset") else dataset._dataset
    assert dataset._serialize and not isinstance(dataset._lst, list)
    records = DatasetCatalog.get("cityscapes_ft_instance_train")
    assert len(dataset) == len(records)
    assert dataset[0] == records[0]


def test_records_map_to_exact_instance_masks(tiny_cfg):
    cfg = tiny_cfg()
    mapper = instantiate(cfg.dataloader.train.mapper)
    mapper.augmentations = type(mapper.augmentations)([])
    record = DatasetCatalog.get("cityscapes_ft_instance_train")[0]
    instances = mapper(dict(record))["instances"]
    expected = [
        mask_util.decode(a["segmentation"]).astype(bool)
        for a in record["annotations"]
        if not a["iscrowd"]
    ]
    assert len(expected) > 0
    assert (instances.gt_masks.to_bitmaps().numpy() == np.stack(expected)).all()
