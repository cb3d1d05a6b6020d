"""Any COCO-format dataset: one json of images, annotations and categories.

Registration reads the json once: class names and their count come from its categories (sorted
by id, as detectron2's ``load_coco_json`` orders them), so a config can leave
``model.roi_heads.num_classes`` to the data. The parsed json is kept until the dataset is first
loaded, so the file is read once, not twice. Records are built exactly as ``load_coco_json``
builds them (a test compares both); category ids are mapped to contiguous ones and the mapping
is kept in the metadata (``thing_dataset_id_to_contiguous_id``), which detectron2's
``COCOEvaluator`` uses to map predictions back to the json's ids.
"""

import functools
import json
import logging
import os
from collections import Counter, defaultdict

import pycocotools.mask as mask_util

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..errors import DatasetError
from .common import registered_as

__all__ = [
    "register_coco_dataset",
    "load_coco_dataset",
    "read_coco_json",
    "coco_categories",
    "coco_records",
]

logger = logging.getLogger(__name__)

_ANNOTATION_KEYS = ("iscrowd", "bbox", "keypoints", "category_id")

# abspath -> ((mtime_ns, size), parsed json): filled by read_coco_json, emptied by
# load_coco_dataset once it has built the records.
_PARSED = {}


def _stamp(path):
    stat = os.stat(path)
    return stat.st_mtime_ns, stat.st_size


def read_coco_json(json_file):
    """The parsed json, checked to have ``images``, ``annotations`` and ``categories`` lists.

    A file parsed before and unchanged since is not read again until it has been loaded.
    """
    path = os.path.abspath(json_file)
    try:
        stamp = _stamp(path)
    except FileNotFoundError:
        raise DatasetError(f"COCO annotation file not found: {json_file}") from None
    cached = _PARSED.get(path)
    if cached is not None and cached[0] == stamp:
        return cached[1]
    try:
        with open(path, "rb") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DatasetError(
            f"Cannot read COCO annotation file {json_file}: {type(e).__name__}: {e}"
        ) from None
    if not isinstance(data, dict):
        raise DatasetError(
            f"{json_file} is not a COCO annotation file: it holds a {type(data).__name__}, "
            "not an object with 'images', 'annotations' and 'categories'."
        )
    wrong = [
        k for k in ("images", "annotations", "categories") if not isinstance(data.get(k), list)
    ]
    if wrong:
        raise DatasetError(
            f"{json_file} is not a COCO instances file: {', '.join(repr(k) for k in wrong)} "
            "missing or not a list (it needs 'images', 'annotations' and 'categories')."
        )
    _PARSED[path] = (stamp, data)
    return data


def coco_categories(data, json_file):
    """Class names (categories sorted by id) and the ``{json id: contiguous id}`` mapping."""
    categories = data["categories"]
    if not categories:
        raise DatasetError(
            f"{json_file}: 'categories' is empty; list the classes as "
            '[{"id": 1, "name": "..."}, ...].'
        )
    for category in categories:
        if not (
            isinstance(category, dict)
            and isinstance(category.get("id"), int)
            and isinstance(category.get("name"), str)
        ):
            raise DatasetError(
                f"{json_file}: category {category!r} needs an integer 'id' and a string 'name'."
            )
    for what in ("id", "name"):
        repeated = sorted(v for v, n in Counter(c[what] for c in categories).items() if n > 1)
        if repeated:
            raise DatasetError(
                f"{json_file}: category {what}s must be unique; repeated: "
                + ", ".join(repr(v) for v in repeated)
            )
    ordered = sorted(categories, key=lambda c: c["id"])
    return [c["name"] for c in ordered], {c["id"]: i for i, c in enumerate(ordered)}


def _check_annotation_categories(data, id_map, json_file):
    unknown = [a for a in data["annotations"] if a.get("category_id") not in id_map]
    if unknown:
        ids = sorted({repr(a.get("category_id")) for a in unknown})
        first = unknown[0]
        raise DatasetError(
            f"{json_file}: {len(unknown)} annotation(s) refer to categories not in 'categories' "
            f"(category_id {', '.join(ids[:10])}{' ...' if len(ids) > 10 else ''}), e.g. "
            f"annotation id {first.get('id')!r} of image {first.get('image_id')!r}; "
            f"the categories have ids {sorted(id_map)}."
        )


def _segmentation(segm):
    """detectron2's handling: uncompressed RLE is compressed; polygons with fewer than 3
    points are dropped (None when none is left)."""
    if isinstance(segm, dict):
        if isinstance(segm["counts"], list):
            return mask_util.frPyObjects(segm, *segm["size"])
        return segm
    polygons = [p for p in segm if len(p) % 2 == 0 and len(p) >= 6]
    return polygons or None


def coco_records(data, json_file, image_root, id_map):
    """Detectron2 dataset dicts from a parsed COCO json, as ``load_coco_json`` makes them.

    Images are sorted by id; each image's annotations keep their order in the json. The parsed
    json is not modified.
    """
    images = {}
    for image in data["images"]:
        if image["id"] in images:
            raise DatasetError(f"{json_file}: image id {image['id']!r} appears more than once.")
        images[image["id"]] = image
    per_image = defaultdict(list)
    for ann in data["annotations"]:
        per_image[ann["image_id"]].append(ann)
    matched = sum(len(per_image[i]) for i in images)
    if matched < len(data["annotations"]):
        logger.warning(
            f"{json_file} contains {len(data['annotations'])} annotations, but only {matched} "
            "of them match to images in the file."
        )
    ids = [a["id"] for i in images for a in per_image[i] if "id" in a]
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    # COCO 2014's minival files repeat a few annotation ids; detectron2 accepts them too.
    if repeated and "minival" not in json_file:
        raise DatasetError(f"{json_file}: annotation ids must be unique; repeated: {repeated[:10]}")

    records, dropped = [], 0
    for image_id in sorted(images):
        image = images[image_id]
        objs = []
        for ann in per_image[image_id]:
            if ann.get("ignore", 0) != 0:
                raise DatasetError(
                    f'{json_file}: annotation {ann.get("id")!r} has "ignore": '
                    f"{ann['ignore']!r}, which is not supported; mark ignored regions with "
                    '"iscrowd": 1 instead.'
                )
            obj = {key: ann[key] for key in _ANNOTATION_KEYS if key in ann}
            if "bbox" in obj and len(obj["bbox"]) == 0:
                raise DatasetError(
                    f"{json_file}: annotation {ann.get('id')!r} of image {image_id!r} has an "
                    "empty 'bbox'; give it as [x, y, width, height]."
                )
            if ann.get("segmentation"):
                segm = _segmentation(ann["segmentation"])
                if segm is None:
                    dropped += 1
                    continue
                obj["segmentation"] = segm
            if ann.get("keypoints"):
                # COCO keypoints are pixel indices; detectron2 uses pixel centres.
                obj["keypoints"] = [
                    v + 0.5 if i % 3 != 2 else v for i, v in enumerate(ann["keypoints"])
                ]
            obj["bbox_mode"] = BoxMode.XYWH_ABS
            obj["category_id"] = id_map[obj["category_id"]]
            objs.append(obj)
        records.append(
            {
                "file_name": os.path.join(image_root, image["file_name"]),
                "height": image["height"],
                "width": image["width"],
                "image_id": image_id,
                "annotations": objs,
            }
        )
    if dropped:
        logger.warning(f"{json_file}: dropped {dropped} annotation(s) without a valid polygon.")
    return records


def _check_images_exist(records, json_file, image_root):
    missing = [r["file_name"] for r in records if not os.path.isfile(r["file_name"])]
    if missing:
        raise DatasetError(
            f"{len(missing)} of the {len(records)} images listed in {json_file} are missing "
            f"under {image_root}, e.g. {missing[0]}. The json's 'file_name's are read relative "
            "to image_root: check that folder."
        )


def load_coco_dataset(json_file, image_root, dataset_name):
    """The records of a dataset registered by :func:`register_coco_dataset`."""
    data = read_coco_json(json_file)
    _PARSED.pop(os.path.abspath(json_file), None)
    classes, id_map = coco_categories(data, json_file)
    if classes != list(MetadataCatalog.get(dataset_name).thing_classes):
        raise DatasetError(
            f"The categories of {json_file} changed after '{dataset_name}' was registered; "
            "register it again."
        )
    _check_annotation_categories(data, id_map, json_file)
    records = coco_records(data, json_file, image_root, id_map)
    _check_images_exist(records, json_file, image_root)
    logger.info(f"Loaded {len(records)} images in COCO format from {json_file}")
    return records


def register_coco_dataset(name, json_file, image_root):
    """Register a COCO-format dataset under ``name``; calling it again is harmless.

    The json is read and checked now (categories, and that every annotation's category is
    one of them); the metadata gets ``thing_classes`` (category names sorted by id),
    ``thing_dataset_id_to_contiguous_id``, ``json_file``, ``image_root`` and
    ``evaluator_type="coco"``. That the images exist is checked when the dataset is loaded.

    Returns:
        list[str]: ``[name]``.
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if os.path.isfile(json_file) and registered_as(
        name, json_file=json_file, image_root=image_root, json_stamp=_stamp(json_file)
    ):
        return [name]
    if not os.path.isdir(image_root):
        raise DatasetError(
            f"Dataset '{name}': image folder not found: {image_root} (the folder that the "
            f"'file_name's in {json_file} are relative to)."
        )
    data = read_coco_json(json_file)
    classes, id_map = coco_categories(data, json_file)
    _check_annotation_categories(data, id_map, json_file)
    DatasetCatalog.register(name, functools.partial(load_coco_dataset, json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file,
        json_stamp=_stamp(json_file),
        image_root=image_root,
        evaluator_type="coco",
        thing_classes=classes,
        thing_dataset_id_to_contiguous_id=id_map,
    )
    return [name]
