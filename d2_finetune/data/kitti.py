"""KITTI 2D object detection (``training/image_2/*.png`` + ``training/label_2/*.txt``).

Each label line has 15 fields: type, truncated, occluded, alpha, the 2D box (left, top, right,
bottom, in pixels), the 3D dimensions (height, width, length in metres), the 3D location
(x, y, z in camera coordinates) and rotation_y; result files add a 16th, the score.

The seven object classes become detectron2 instances with every label field kept in the
annotation dict (``type``, ``truncated``, ``occluded``, ``alpha``, ``dimensions``,
``location``, ``rotation_y``). ``Misc`` and ``DontCare`` regions become ``iscrowd=1``
annotations, one per class, so training ignores them and COCO-style AP ignores detections of
any class inside them. KITTI's own AP (:class:`d2_finetune.evaluation.KittiEvaluator`) reads the
label files again, as the official devkit does.

The official training set has no validation split: :func:`register_kitti` makes one, either
a deterministic random fraction of the frames or the frame lists of ``split_dir``.
"""

import functools
import logging
import os

import numpy as np
from PIL import Image

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode

from ..errors import DatasetError
from .common import dataset_root, registered_as

__all__ = [
    "KITTI_CLASSES",
    "KITTI_IGNORE_TYPES",
    "register_kitti",
    "load_kitti",
    "parse_kitti_label",
    "kitti_frames",
    "kitti_split",
]

logger = logging.getLogger(__name__)

KITTI_CLASSES = ["Car", "Van", "Truck", "Pedestrian", "Person_sitting", "Cyclist", "Tram"]
# KITTI's classes matched to the COCO class that looks the same in a box, for a COCO
# checkpoint's rows (the datasets' class_synonyms): a van is a car to COCO, a tram runs on rails
# like a train, a sitting person is a person. A "Cyclist" box covers the rider and the bicycle;
# it starts from COCO's bicycle, the part that tells a cyclist from a pedestrian (which starts
# from person), so the two classes start apart; its boxes also cover the rider, which
# fine-tuning of the 4 box rows learns.
COCO_SYNONYMS = {
    "pedestrian": "person",
    "person sitting": "person",
    "van": "car",
    "cyclist": "bicycle",
    "tram": "train",
}
KITTI_IGNORE_TYPES = ("Misc", "DontCare")
SPLITS = ("train", "val", "trainval")
DATASET_NAME = "kitti_ft_{}"
DOWNLOAD_HINT = (
    "Download data_object_image_2.zip and data_object_label_2.zip from "
    "https://www.cvlibs.net/datasets/kitti/eval_object.php?obj_benchmark=2d and unzip both into "
    "{root}/kitti/ (giving {root}/kitti/training/image_2/ and {root}/kitti/training/label_2/)."
)


def parse_kitti_label(path, with_score=False):
    """The objects of one KITTI label (or, ``with_score``, result) file.

    Returns:
        list[dict]: ``type``, ``truncated``, ``occluded``, ``alpha``, ``bbox`` (x1, y1, x2, y2),
        ``dimensions`` (h, w, l), ``location`` (x, y, z), ``rotation_y`` [, ``score``].
    """
    try:
        with open(path) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise DatasetError(f"KITTI label file missing: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"Cannot read KITTI label file {path}: {e}") from None
    expected = 16 if with_score else 15
    objects = []
    for number, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != expected:
            raise DatasetError(
                f"{path}, line {number}: {len(fields)} fields, expected {expected} (type, "
                "truncated, occluded, alpha, 4 box, 3 dimensions, 3 location, rotation_y"
                + (", score" if with_score else "")
                + ")."
            )
        kind = fields[0]
        if kind not in KITTI_CLASSES and kind not in KITTI_IGNORE_TYPES:
            raise DatasetError(
                f"{path}, line {number}: unknown object type '{kind}'; KITTI's are "
                + ", ".join(KITTI_CLASSES + list(KITTI_IGNORE_TYPES))
                + "."
            )
        try:
            values = [float(v) for v in fields[1:]]
        except ValueError:
            raise DatasetError(f"{path}, line {number}: non-numeric field in {line!r}.") from None
        obj = {
            "type": kind,
            "truncated": values[0],
            "occluded": int(values[1]),
            "alpha": values[2],
            "bbox": values[3:7],
            "dimensions": values[7:10],
            "location": values[10:13],
            "rotation_y": values[13],
        }
        if with_score:
            obj["score"] = values[14]
        objects.append(obj)
    return objects


def kitti_frames(image_dir, label_dir):
    """Sorted frame ids (file stems) that have both an image and a label file."""
    for folder in (image_dir, label_dir):
        if not os.path.isdir(folder):
            root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(folder))))
            raise DatasetError(
                f"KITTI folder not found: {folder}. " + DOWNLOAD_HINT.format(root=root)
            )
    images = {os.path.splitext(f)[0] for f in os.listdir(image_dir) if f.endswith(".png")}
    labels = {os.path.splitext(f)[0] for f in os.listdir(label_dir) if f.endswith(".txt")}
    frames = sorted(images & labels)
    if not frames:
        raise DatasetError(f"No frames with both {image_dir}/<id>.png and {label_dir}/<id>.txt.")
    unlabelled = sorted(images - labels)
    if unlabelled:
        logger.warning(
            f"{len(unlabelled)} images in {image_dir} have no label file, e.g. "
            f"{unlabelled[0]}.png; they are left out."
        )
    return frames


def _check_split_options(val_fraction, seed):
    if (
        isinstance(val_fraction, bool)
        or not isinstance(val_fraction, (int, float))
        or not (0 < val_fraction < 1)
    ):
        raise DatasetError(f"KITTI val_fraction must be between 0 and 1, got {val_fraction!r}.")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DatasetError(f"KITTI split seed must be an integer, got {seed!r}.")


def kitti_split(frames, val_fraction=0.2, seed=0):
    """Split frame ids into (train, val), the same on every call and machine.

    The sorted frames are shuffled with ``numpy.random.default_rng(seed)`` and the first
    ``round(len * val_fraction)`` become validation; both lists are returned sorted.
    """
    _check_split_options(val_fraction, seed)
    frames = sorted(frames)
    order = np.random.default_rng(seed).permutation(len(frames))
    num_val = int(round(len(frames) * val_fraction))
    val = {frames[i] for i in order[:num_val]}
    return [f for f in frames if f not in val], sorted(val)


def _read_split_file(split_dir, split):
    path = os.path.join(split_dir, split + ".txt")
    try:
        with open(path) as f:
            return [line.strip() for line in f if line.strip()]
    except FileNotFoundError:
        raise DatasetError(
            f"KITTI split file missing: {path} (one frame id per line, e.g. 000042)."
        ) from None


def _split_frames(image_dir, label_dir, split, val_fraction, seed, split_dir):
    frames = kitti_frames(image_dir, label_dir)
    if split == "trainval":
        return frames
    if split_dir is None:
        train, val = kitti_split(frames, val_fraction, seed)
        return train if split == "train" else val
    wanted = _read_split_file(split_dir, split)
    available = set(frames)
    missing = [f for f in wanted if f not in available]
    if missing:
        raise DatasetError(
            f"{len(missing)} frames of {os.path.join(split_dir, split + '.txt')} have no image "
            f"and label under {os.path.dirname(image_dir)}, e.g. {missing[0]}."
        )
    return wanted


def _annotation(obj, category_id, iscrowd):
    ann = {k: list(v) if isinstance(v, list) else v for k, v in obj.items()}
    ann.update(bbox_mode=BoxMode.XYXY_ABS, category_id=category_id, iscrowd=iscrowd)
    return ann


def _annotations(objects):
    annotations = []
    for obj in objects:
        if obj["type"] in KITTI_IGNORE_TYPES:
            annotations.extend(_annotation(obj, c, 1) for c in range(len(KITTI_CLASSES)))
        else:
            annotations.append(_annotation(obj, KITTI_CLASSES.index(obj["type"]), 0))
    return annotations


def load_kitti(image_dir, label_dir, split="trainval", val_fraction=0.2, seed=0, split_dir=None):
    """Detectron2 dataset dicts for the frames of one split (see :func:`register_kitti`).

    ``image_id`` is the frame number (``000042`` -> 42); image sizes are read from the PNG
    headers, since KITTI's vary slightly (1224-1242 x 370-376).
    """
    records = []
    for frame in _split_frames(image_dir, label_dir, split, val_fraction, seed, split_dir):
        image_file = os.path.join(image_dir, frame + ".png")
        try:
            with Image.open(image_file) as image:
                width, height = image.size
        except OSError as e:
            raise DatasetError(f"Cannot read KITTI image {image_file}: {e}") from None
        objects = parse_kitti_label(os.path.join(label_dir, frame + ".txt"))
        records.append(
            {
                "file_name": image_file,
                "image_id": int(frame) if frame.isdigit() else frame,
                "height": height,
                "width": width,
                "annotations": _annotations(objects),
            }
        )
    logger.info(f"Loaded {len(records)} KITTI frames ({split}) from {image_dir}")
    return records


def register_kitti(root=None, val_fraction=0.2, seed=0, split_dir=None):
    """Register ``kitti_ft_{train,val,trainval}``; calling it again is harmless.

    ``trainval`` is all of ``<root>/kitti/training``. ``train`` and ``val`` split it: with
    ``split_dir``, by the frame ids listed in ``<split_dir>/train.txt`` and ``val.txt`` (e.g. the
    widely used 3,712 / 3,769 split); otherwise :func:`kitti_split` puts ``val_fraction`` of the
    frames, chosen with ``seed``, in ``val``. Frames are listed when a split is loaded.

    Args:
        root: folder holding ``kitti/``; default ``$DETECTRON2_DATASETS`` or ``./datasets``.

    Returns:
        list[str]: the registered dataset names.
    """
    _check_split_options(val_fraction, seed)
    base = os.path.join(dataset_root(root), "kitti", "training")
    image_dir, label_dir = os.path.join(base, "image_2"), os.path.join(base, "label_2")
    split_options = {"val_fraction": val_fraction, "seed": seed, "split_dir": split_dir}
    names = []
    for split in SPLITS:
        name = DATASET_NAME.format(split)
        names.append(name)
        if registered_as(name, label_dir=label_dir, split_options=split_options):
            continue
        DatasetCatalog.register(
            name, functools.partial(load_kitti, image_dir, label_dir, split, **split_options)
        )
        MetadataCatalog.get(name).set(
            thing_classes=list(KITTI_CLASSES),
            class_synonyms=dict(COCO_SYNONYMS),
            image_dir=image_dir,
            label_dir=label_dir,
            split=split,
            split_options=split_options,
            evaluator_type="kitti",
            download_hint=DOWNLOAD_HINT.format(root=dataset_root(root)),
        )
    return names
