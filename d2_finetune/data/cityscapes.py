"""Cityscapes instance segmentation (gtFine) in Detectron2's dataset format.

Masks are rasterised exactly as cityscapesscripts draws ``*_gtFine_instanceIds.png``: every
polygon of the image, in file order, with PIL, so later objects cover earlier ones. Each
instance is stored as COCO RLE (train with ``instance_mask_format="bitmask"``); ``<class>group``
regions become ``iscrowd=1`` annotations.
"""
import json
import logging
import os

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image, ImageDraw

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..errors import DatasetError

__all__ = [
    "CITYSCAPES_THING_CLASSES",
    "register_cityscapes",
    "load_cityscapes_instances",
    "parse_polygons_json",
    "parse_instance_png",
    "cityscapes_files",
    "dataset_root",
]

logger = logging.getLogger(__name__)

CITYSCAPES_THING_CLASSES = [
    "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle",
]
SPLITS = ("train", "val", "test")
DATASET_NAME = "cityscapes_ft_instance_{}"
IMAGE_SUFFIX = "_leftImg8bit.png"
DOWNLOAD_HINT = (
    "Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com/downloads/ and unzip both into {root}/cityscapes/ "
    "(giving {root}/cityscapes/leftImg8bit/<split>/<city>/ and {root}/cityscapes/gtFine/...)."
)


def _labels():
    from cityscapesscripts.helpers.labels import labels

    return labels


def _label_tables():
    labels = _labels()
    name2label = {lb.name: lb for lb in labels}
    id2label = {lb.id: lb for lb in labels}
    contiguous = {name: i for i, name in enumerate(CITYSCAPES_THING_CLASSES)}
    return name2label, id2label, contiguous


def dataset_root(root=None):
    """``root``, else ``$DETECTRON2_DATASETS``, else ``./datasets``."""
    return root or os.environ.get("DETECTRON2_DATASETS") or "datasets"


def cityscapes_files(image_dir, gt_dir):
    """(image, polygons json, instanceIds png) paths for every image of a split, sorted."""
    if not os.path.isdir(image_dir) or not os.path.isdir(gt_dir):
        missing = image_dir if not os.path.isdir(image_dir) else gt_dir
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(missing))))
        raise DatasetError(f"Cityscapes folder not found: {missing}. " + DOWNLOAD_HINT.format(root=root))
    files = []
    for city in sorted(os.listdir(image_dir)):
        city_dir = os.path.join(image_dir, city)
        if not os.path.isdir(city_dir):
            continue
        for name in sorted(os.listdir(city_dir)):
            if not name.endswith(IMAGE_SUFFIX):
                continue
            stem = name[: -len(IMAGE_SUFFIX)]
            gt_prefix = os.path.join(gt_dir, city, stem + "_gtFine_")
            files.append(
                (
                    os.path.join(city_dir, name),
                    gt_prefix + "polygons.json",
                    gt_prefix + "instanceIds.png",
                )
            )
    if not files:
        raise DatasetError(f"No *{IMAGE_SUFFIX} images found under {image_dir}/<city>/.")
    return files


def _annotation(mask, category_id, iscrowd):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    x, y, w, h = mask_util.toBbox(rle).tolist()
    rle["counts"] = rle["counts"].decode("ascii")
    return {
        "iscrowd": int(iscrowd),
        "category_id": category_id,
        "bbox": [x, y, x + w, y + h],
        "bbox_mode": BoxMode.XYXY_ABS,
        "segmentation": rle,
    }


def parse_polygons_json(json_file):
    """Instance annotations from a ``*_gtFine_polygons.json``, rasterised the official way.

    Returns:
        (height, width, annotations)
    """
    try:
        with open(json_file) as f:
            data = json.load(f)
        height, width = int(data["imgHeight"]), int(data["imgWidth"])
        objects = data["objects"]
    except FileNotFoundError:
        raise DatasetError(f"Annotation file missing: {json_file}")
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError, ValueError) as e:
        raise DatasetError(f"Cannot read annotation file {json_file}: {type(e).__name__}: {e}")
    name2label, _, contiguous = _label_tables()
    canvas = Image.new("I", (width, height), 0)
    drawer = ImageDraw.Draw(canvas)
    things = []  # (object index, category, is group)
    for index, obj in enumerate(objects, start=1):
        if obj.get("deleted"):
            continue
        label = obj["label"]
        is_group = label not in name2label and label.endswith("group")
        if is_group:
            label = label[: -len("group")]
        if label not in name2label:
            raise DatasetError(f"{json_file}: unknown label '{obj['label']}'.")
        if name2label[label].id < 0:
            continue
        polygon = [tuple(p) for p in obj["polygon"]]
        drawer.polygon(polygon, fill=index)
        if label in contiguous:
            things.append((index, contiguous[label], is_group))
    ids = np.asarray(canvas)
    annotations = []
    for index, category, is_group in things:
        mask = ids == index
        if mask.any():
            annotations.append(_annotation(mask, category, is_group))
    return height, width, annotations


def parse_instance_png(png_file):
    """Instance annotations from a ``*_gtFine_instanceIds.png`` (exact by construction).

    Returns:
        (height, width, annotations)
    """
    try:
        ids = np.asarray(Image.open(png_file))
    except FileNotFoundError:
        raise DatasetError(f"Annotation file missing: {png_file}")
    except (OSError, SyntaxError) as e:
        raise DatasetError(f"Cannot read annotation image {png_file}: {e}")
    _, id2label, contiguous = _label_tables()
    annotations = []
    for value in np.unique(ids):
        label_id = int(value) // 1000 if value >= 1000 else int(value)
        label = id2label.get(label_id)
        if label is None or label.name not in contiguous:
            continue
        annotations.append(_annotation(ids == value, contiguous[label.name], value < 1000))
    return ids.shape[0], ids.shape[1], annotations


def load_cityscapes_instances(image_dir, gt_dir, source="polygons"):
    """Detectron2 dataset dicts for one Cityscapes split.

    Args:
        image_dir: e.g. ``datasets/cityscapes/leftImg8bit/train``
        gt_dir: e.g. ``datasets/cityscapes/gtFine/train``
        source: "polygons" (``*_gtFine_polygons.json``) or "png" (``*_gtFine_instanceIds.png``)
    """
    if source not in ("polygons", "png"):
        raise DatasetError(f"Cityscapes annotation source must be 'polygons' or 'png', got {source!r}.")
    records = []
    for image_file, json_file, png_file in cityscapes_files(image_dir, gt_dir):
        if source == "polygons":
            height, width, annotations = parse_polygons_json(json_file)
        else:
            height, width, annotations = parse_instance_png(png_file)
        records.append(
            {
                "file_name": image_file,
                "image_id": os.path.basename(image_file)[: -len(IMAGE_SUFFIX)],
                "height": height,
                "width": width,
                "annotations": annotations,
            }
        )
    logger.info(f"Loaded {len(records)} images from {image_dir}")
    return records


def _thing_colors():
    by_name = {lb.name: lb.color for lb in _labels()}
    return [list(by_name[name]) for name in CITYSCAPES_THING_CLASSES]


def register_cityscapes(root=None, source="polygons"):
    """Register ``cityscapes_ft_instance_{train,val,test}``; calling it again is harmless.

    Data is read from ``<root>/cityscapes/{leftImg8bit,gtFine}/<split>/<city>/`` when a split is
    used, so a split whose folders are absent is an error only then.

    Args:
        root: folder holding ``cityscapes/``; default ``$DETECTRON2_DATASETS`` or ``./datasets``.
        source: "polygons" or "png", see :func:`load_cityscapes_instances`.

    Returns:
        list[str]: the registered dataset names.
    """
    base = os.path.join(dataset_root(root), "cityscapes")
    names = []
    for split in SPLITS:
        name = DATASET_NAME.format(split)
        image_dir = os.path.join(base, "leftImg8bit", split)
        gt_dir = os.path.join(base, "gtFine", split)
        if name in DatasetCatalog.list():
            if MetadataCatalog.get(name).get("image_dir") == image_dir:
                names.append(name)
                continue
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
        DatasetCatalog.register(
            name,
            lambda i=image_dir, g=gt_dir: load_cityscapes_instances(i, g, source=source),
        )
        MetadataCatalog.get(name).set(
            thing_classes=list(CITYSCAPES_THING_CLASSES),
            thing_colors=_thing_colors(),
            image_dir=image_dir,
            gt_dir=gt_dir,
            evaluator_type="cityscapes_instance",
            download_hint=DOWNLOAD_HINT.format(root=dataset_root(root)),
        )
        names.append(name)
    return names
