"""Cityscapes instance segmentation (gtFine) in Detectron2's dataset format.

Masks are rasterised exactly as cityscapesscripts draws ``*_gtFine_instanceIds.png``: every
polygon of the image, in file order, with PIL, so later objects cover earlier ones. Each
instance is stored as COCO RLE; ``<class>group`` regions become ``iscrowd=1`` annotations.
Images without instances are kept (evaluation needs them); the training loader drops them when
``get_detection_dataset_dicts(filter_empty=True)``.

A split is parsed once, by a process pool, and its records are cached on disk (see
:mod:`d2_finetune.data.cache`); later loads, in any process, read the cache while the
annotation files are unchanged.
"""

import json
import logging
import math
import multiprocessing as mp
import os

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image, ImageDraw
from tqdm import tqdm

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..errors import DatasetError
from . import cache as records_cache
from .common import dataset_root, registered_as

__all__ = [
    "CITYSCAPES_THING_CLASSES",
    "register_cityscapes",
    "load_cityscapes_instances",
    "parse_polygons_json",
    "parse_instance_png",
    "cityscapes_files",
    "cityscapes_split_dirs",
    "cache_file",
]

logger = logging.getLogger(__name__)

CITYSCAPES_THING_CLASSES = [
    "person",
    "rider",
    "car",
    "truck",
    "bus",
    "train",
    "motorcycle",
    "bicycle",
]
SPLITS = ("train", "val", "test")
SOURCES = ("polygons", "png")
DATASET_NAME = "cityscapes_ft_instance_{}"
IMAGE_SUFFIX = "_leftImg8bit.png"
ANNOTATION_SUFFIX = {"polygons": "_gtFine_polygons.json", "png": "_gtFine_instanceIds.png"}
DOWNLOAD_HINT = (
    "Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from "
    "https://www.cityscapes-dataset.com/downloads/ and unzip both into {base}/ "
    "(giving {base}/leftImg8bit/<split>/<city>/ and {base}/gtFine/<split>/<city>/)."
)
# Below this many files per process a pool costs more than it saves.
FILES_PER_WORKER = 32
# Pillow draws a polygon of 2 points or more (2 points, or collinear ones, as a line); fewer it
# refuses, and cityscapesscripts' json2instanceImg fails on such a file. Those are skipped.
MIN_POLYGON_POINTS = 2


def _labels():
    from cityscapesscripts.helpers.labels import labels

    return labels


def _label_tables():
    labels = _labels()
    name2label = {lb.name: lb for lb in labels}
    id2label = {lb.id: lb for lb in labels}
    contiguous = {name: i for i, name in enumerate(CITYSCAPES_THING_CLASSES)}
    return name2label, id2label, contiguous


def cityscapes_split_dirs(root, split):
    """(image dir, gt dir) of a split: ``<root>/cityscapes/{leftImg8bit,gtFine}/<split>``."""
    base = os.path.join(dataset_root(root), "cityscapes")
    return os.path.join(base, "leftImg8bit", split), os.path.join(base, "gtFine", split)


def _check_split_dirs(image_dir, gt_dir):
    """Raise a DatasetError saying what to download if the split's folders are missing."""
    base = os.path.dirname(os.path.dirname(os.path.abspath(image_dir)))
    if not os.path.isdir(base):
        raise DatasetError(
            f"Cityscapes not found: {base} does not exist (set DETECTRON2_DATASETS or "
            "dataloader.register.root to the folder holding cityscapes/). "
            + DOWNLOAD_HINT.format(base=base)
        )
    for folder in (image_dir, gt_dir):
        if not os.path.isdir(folder):
            raise DatasetError(
                f"Cityscapes split '{os.path.basename(os.path.normpath(folder))}' not found: "
                f"{folder} does not exist. " + DOWNLOAD_HINT.format(base=base)
            )


def cityscapes_files(image_dir, gt_dir, source="polygons"):
    """(image, annotation file) paths for every image of a split, sorted.

    The annotation file is ``*_gtFine_polygons.json`` or, for ``source="png"``,
    ``*_gtFine_instanceIds.png``. Every image must have one.
    """
    _check_split_dirs(image_dir, gt_dir)
    suffix = ANNOTATION_SUFFIX[source]
    files, missing = [], []
    for city in sorted(os.listdir(image_dir)):
        city_dir = os.path.join(image_dir, city)
        if not os.path.isdir(city_dir):
            continue
        for name in sorted(os.listdir(city_dir)):
            if not name.endswith(IMAGE_SUFFIX):
                continue
            image_file = os.path.join(city_dir, name)
            ann_file = os.path.join(gt_dir, city, name[: -len(IMAGE_SUFFIX)] + suffix)
            files.append((image_file, ann_file))
            if not os.path.isfile(ann_file):
                missing.append((image_file, ann_file))
    if not files:
        raise DatasetError(
            f"No *{IMAGE_SUFFIX} images found under {image_dir}/<city>/: the folder is empty "
            "or not from leftImg8bit_trainvaltest.zip."
        )
    if missing:
        image_file, ann_file = missing[0]
        raise DatasetError(
            f"{len(missing)} image(s) of {image_dir} have no annotation file, e.g. {image_file} "
            f"(expected {ann_file}). Unzip gtFine_trainvaltest.zip into the same cityscapes/ "
            "folder, or remove images that have no annotations."
        )
    return files


def _annotation(mask, category_id, iscrowd):
    rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
    return _rle_annotation(rle, category_id, iscrowd)


def _rle_annotation(rle, category_id, iscrowd):
    x, y, w, h = mask_util.toBbox(rle).tolist()
    return {
        "iscrowd": int(iscrowd),
        "category_id": category_id,
        "bbox": [x, y, x + w, y + h],
        "bbox_mode": BoxMode.XYXY_ABS,
        "segmentation": {
            "size": [int(v) for v in rle["size"]],
            "counts": rle["counts"].decode("ascii"),
        },
    }


def _crop_rle(crop, x0, y0, height, width):
    """COCO RLE of a ``height x width`` mask that is ``crop`` at (x0, y0) and 0 elsewhere.

    Run boundaries are found in the crop (padded with a zero row above and below, so no run
    crosses a column) and mapped to the image's column-major pixel index: the cost follows the
    object's size rather than the image's.
    """
    h, w = crop.shape
    padded = np.zeros((w, h + 2), dtype=np.uint8)
    padded[:, 1:-1] = crop.T
    flat = padded.ravel()
    col, row = np.divmod(np.flatnonzero(flat[1:] != flat[:-1]) + 1, h + 2)
    bounds = (x0 + col) * height + (y0 - 1) + row
    # A run that ends at the bottom of a full-height column goes on at the top of the next.
    joined = np.flatnonzero(bounds[1:] == bounds[:-1])
    if joined.size:
        bounds = np.delete(bounds, np.concatenate((joined, joined + 1)))
    counts = np.diff(bounds, prepend=0, append=height * width).tolist()
    if len(counts) > 1 and counts[-1] == 0:
        counts.pop()
    return mask_util.frPyObjects({"counts": counts, "size": [height, width]}, height, width)


def _read_json(json_file):
    try:
        with open(json_file, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise DatasetError(f"Annotation file missing: {json_file}") from None
    except json.JSONDecodeError as e:
        raise DatasetError(
            f"Cannot read annotation file {json_file}: not valid JSON ({e}). Re-extract it from "
            "gtFine_trainvaltest.zip."
        ) from None
    except (UnicodeDecodeError, OSError) as e:
        raise DatasetError(
            f"Cannot read annotation file {json_file}: {e}. Re-extract it from "
            "gtFine_trainvaltest.zip."
        ) from None
    try:
        return int(data["imgHeight"]), int(data["imgWidth"]), list(data["objects"])
    except (KeyError, TypeError, ValueError) as e:
        raise DatasetError(
            f"Cannot read annotation file {json_file}: not a Cityscapes polygons file (needs "
            f"imgHeight, imgWidth and objects; {type(e).__name__}: {e}). Re-extract it from "
            "gtFine_trainvaltest.zip."
        ) from None


def _parse_polygons(json_file):
    """(height, width, annotations, number of polygons skipped for having too few points)."""
    height, width, objects = _read_json(json_file)
    name2label, _, contiguous = _label_tables()
    drawn = []  # (object number, label, is group, polygon), in drawing order
    skipped = 0
    for number, obj in enumerate(objects, start=1):
        if not isinstance(obj, dict) or "label" not in obj:
            raise DatasetError(f"{json_file}: object #{number} has no 'label'.")
        if obj.get("deleted"):
            continue
        label = obj["label"]
        is_group = label not in name2label and isinstance(label, str) and label.endswith("group")
        if is_group:
            label = label[: -len("group")]
        if label not in name2label:
            raise DatasetError(
                f"{json_file}: object #{number} has unknown label {obj['label']!r}. Labels must "
                "be names from cityscapesscripts.helpers.labels (or '<name>group' for crowds); "
                "fix or delete that object."
            )
        if name2label[label].id < 0:
            continue
        polygon = obj.get("polygon")
        if not isinstance(polygon, list):
            raise DatasetError(
                f"{json_file}: object #{number} ({obj['label']!r}) has no 'polygon' list of "
                "[x, y] points."
            )
        if len(polygon) < MIN_POLYGON_POINTS:
            skipped += 1
            continue
        drawn.append((number, label, is_group, polygon))

    # Objects drawn before the first thing cannot cover any thing: start drawing there.
    first = next((i for i, (_, label, _, _) in enumerate(drawn) if label in contiguous), None)
    if first is None:
        return height, width, [], skipped
    canvas = Image.new("I", (width, height), 0)
    drawer = ImageDraw.Draw(canvas)
    things = []
    for number, label, is_group, polygon in drawn[first:]:
        try:
            drawer.polygon(polygon, fill=number)
        except (TypeError, ValueError) as e:
            raise DatasetError(
                f"{json_file}: object #{number} ({label!r}) has an invalid polygon ({e}); it "
                "must be a list of [x, y] points."
            ) from None
        if label in contiguous:
            things.append((number, contiguous[label], is_group, polygon))
    annotations = []
    for number, category, is_group, polygon in things:
        xs, ys = [p[0] for p in polygon], [p[1] for p in polygon]
        x0, y0 = max(math.floor(min(xs)) - 1, 0), max(math.floor(min(ys)) - 1, 0)
        x1, y1 = min(math.ceil(max(xs)) + 2, width), min(math.ceil(max(ys)) + 2, height)
        if x1 <= x0 or y1 <= y0:
            continue
        crop = np.asarray(canvas.crop((x0, y0, x1, y1))) == number
        if crop.any():
            annotations.append(
                _rle_annotation(_crop_rle(crop, x0, y0, height, width), category, is_group)
            )
    return height, width, annotations, skipped


def parse_polygons_json(json_file):
    """Instance annotations from a ``*_gtFine_polygons.json``, rasterised the official way.

    Polygons with fewer than 2 points are skipped (see :func:`load_cityscapes_instances`).

    Returns:
        (height, width, annotations)
    """
    return _parse_polygons(json_file)[:3]


def parse_instance_png(png_file):
    """Instance annotations from a ``*_gtFine_instanceIds.png`` (exact by construction).

    Returns:
        (height, width, annotations)
    """
    try:
        ids = np.asarray(Image.open(png_file))
    except FileNotFoundError:
        raise DatasetError(f"Annotation file missing: {png_file}") from None
    except (OSError, SyntaxError) as e:
        raise DatasetError(
            f"Cannot read annotation image {png_file}: {e}. Re-extract it from "
            "gtFine_trainvaltest.zip."
        ) from None
    if ids.ndim != 2:
        raise DatasetError(
            f"{png_file} is not an instanceIds image (expected one 16-bit channel, got shape "
            f"{ids.shape}). Re-extract it from gtFine_trainvaltest.zip."
        )
    _, id2label, contiguous = _label_tables()
    annotations = []
    for value in np.unique(ids):
        label_id = int(value) // 1000 if value >= 1000 else int(value)
        label = id2label.get(label_id)
        if label is None or label.name not in contiguous:
            continue
        annotations.append(_annotation(ids == value, contiguous[label.name], value < 1000))
    return ids.shape[0], ids.shape[1], annotations


def _parse_file(item):
    """Pool task: one image's record and its count of skipped polygons."""
    image_file, ann_file, source = item
    if source == "polygons":
        height, width, annotations, skipped = _parse_polygons(ann_file)
    else:
        (height, width, annotations), skipped = parse_instance_png(ann_file), 0
    record = {
        "file_name": image_file,
        "image_id": os.path.basename(image_file)[: -len(IMAGE_SUFFIX)],
        "height": height,
        "width": width,
        "annotations": annotations,
    }
    return record, skipped


def _parse_all(files, source, num_workers, progress, desc):
    """Records of ``files``, in order, parsed in a process pool; and skip statistics."""
    items = [(image_file, ann_file, source) for image_file, ann_file in files]
    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, len(items) // FILES_PER_WORKER)
    if mp.current_process().daemon:
        num_workers = 0  # daemonic processes (e.g. data-loader workers) cannot have children
    bar = dict(
        total=len(items), desc=desc, unit="img", disable=None if progress is None else not progress
    )
    if num_workers > 1:
        with mp.Pool(num_workers) as pool:
            chunk = max(1, min(64, len(items) // (num_workers * 8)))
            results = list(tqdm(pool.imap(_parse_file, items, chunksize=chunk), **bar))
    else:
        results = [_parse_file(item) for item in tqdm(items, **bar)]
    records = [record for record, _ in results]
    skipped = [(ann_file, n) for (_, ann_file, _), (_, n) in zip(items, results) if n]
    meta = {
        "skipped_polygons": sum(n for _, n in skipped),
        "skipped_files": len(skipped),
        "skipped_example": skipped[0][0] if skipped else "",
    }
    return records, meta


def _dataset_dir(gt_dir):
    return os.path.dirname(os.path.dirname(os.path.abspath(gt_dir)))


def cache_file(gt_dir, source="polygons", cache_dir=None):
    """Path of a split's cache file (see :func:`.cache.find_cache_dir`), or None if no
    cache folder is writable."""
    folder = records_cache.find_cache_dir(_dataset_dir(gt_dir), cache_dir)
    if folder is None:
        logger.warning(
            f"No writable cache folder for {_dataset_dir(gt_dir)}: parsing without a cache."
        )
        return None
    split = os.path.basename(os.path.normpath(gt_dir))
    return os.path.join(folder, f"instances_{split}_{source}.npz")


def load_cityscapes_instances(
    image_dir,
    gt_dir,
    source="polygons",
    *,
    cache=True,
    cache_dir=None,
    num_workers=None,
    progress=None,
):
    """Detectron2 dataset dicts for one Cityscapes split, from the cache when it is current.

    Args:
        image_dir: e.g. ``datasets/cityscapes/leftImg8bit/train``
        gt_dir: e.g. ``datasets/cityscapes/gtFine/train``
        source: "polygons" (``*_gtFine_polygons.json``) or "png" (``*_gtFine_instanceIds.png``)
        cache: read and write the on-disk cache; False parses every time.
        cache_dir: folder for the cache; default ``$D2FT_CACHE_DIR``, else next to the
            dataset if writable, else ``~/.cache/d2_finetune`` (see :mod:`.cache`).
        num_workers: parsing processes; None picks from the CPU count and the split's size,
            0 parses in this process.
        progress: show a progress bar; None shows one on a terminal only.

    Degenerate polygons (2 points, collinear or repeated points) are drawn as Pillow and
    cityscapesscripts draw them, as lines; polygons with fewer than 2 points cannot be drawn:
    they are skipped and counted, and one warning per load names how many and where.
    """
    if source not in SOURCES:
        raise DatasetError(
            f"Cityscapes annotation source must be 'polygons' or 'png', got {source!r}."
        )
    files = cityscapes_files(image_dir, gt_dir, source)
    split = os.path.basename(os.path.normpath(gt_dir))

    def build():
        logger.info(f"Parsing {len(files)} Cityscapes {source} annotations of {gt_dir} ...")
        return _parse_all(files, source, num_workers, progress, desc=f"cityscapes {split}")

    path = cache_file(gt_dir, source, cache_dir) if cache else None
    if path is None:
        records, meta = build()
    else:
        key = records_cache.fingerprint(
            [ann_file for _, ann_file in files],
            os.path.dirname(os.path.dirname(os.path.normpath(gt_dir))),
            source=source,
            classes=CITYSCAPES_THING_CLASSES,
            min_polygon_points=MIN_POLYGON_POINTS,
        )
        records, meta, _ = records_cache.load_or_build(path, key, build, image_dir)
    if meta.get("skipped_polygons"):
        logger.warning(
            f"Skipped {meta['skipped_polygons']} polygon(s) with fewer than {MIN_POLYGON_POINTS} "
            f"points in {meta['skipped_files']} file(s) of {gt_dir}, e.g. "
            f"{meta['skipped_example']} (cityscapesscripts cannot draw them either)."
        )
    logger.info(f"Loaded {len(records)} images from {image_dir}")
    return records


def _thing_colors():
    by_name = {lb.name: lb.color for lb in _labels()}
    return [list(by_name[name]) for name in CITYSCAPES_THING_CLASSES]


def register_cityscapes(root=None, source="polygons", cache=True, cache_dir=None):
    """Register ``cityscapes_ft_instance_{train,val,test}``; calling it again is harmless.

    Data is read from ``<root>/cityscapes/{leftImg8bit,gtFine}/<split>/<city>/`` when a split is
    used, so a split whose folders are absent is an error only then.

    Args:
        root: folder holding ``cityscapes/``; default ``$DETECTRON2_DATASETS`` or ``./datasets``.
        source: "polygons" or "png", see :func:`load_cityscapes_instances`.
        cache, cache_dir: see :func:`load_cityscapes_instances`.

    Returns:
        list[str]: the registered dataset names.
    """
    if source not in SOURCES:
        raise DatasetError(
            f"Cityscapes annotation source must be 'polygons' or 'png', got {source!r}."
        )
    names = []
    for split in SPLITS:
        name = DATASET_NAME.format(split)
        image_dir, gt_dir = cityscapes_split_dirs(root, split)
        settings = {"source": source, "cache": bool(cache), "cache_dir": cache_dir}
        if registered_as(name, image_dir=image_dir, loader_settings=settings):
            names.append(name)
            continue
        DatasetCatalog.register(
            name,
            lambda i=image_dir, g=gt_dir: load_cityscapes_instances(
                i, g, source=source, cache=cache, cache_dir=cache_dir
            ),
        )
        MetadataCatalog.get(name).set(
            thing_classes=list(CITYSCAPES_THING_CLASSES),
            thing_colors=_thing_colors(),
            image_dir=image_dir,
            gt_dir=gt_dir,
            evaluator_type="cityscapes_instance",
            download_hint=DOWNLOAD_HINT.format(base=os.path.join(dataset_root(root), "cityscapes")),
            loader_settings=settings,
        )
        names.append(name)
    return names
