"""Prepare a Cityscapes download for training: ``python scripts/prepare_cityscapes.py``.

1. Checks the layout ``<root>/cityscapes/{leftImg8bit,gtFine}/<split>/<city>/`` and every
   annotation file (the same checks training runs, with the same messages).
2. Parses each split once into the annotation cache (see :mod:`d2_finetune.data.cache`), so
   training starts without parsing.
3. With ``--train-ids``, writes ``*_gtFine_instanceTrainIds.png`` and ``*_gtFine_labelTrainIds.png``
   next to the polygon files: the arrays cityscapesscripts' ``createTrainIdInstanceImgs`` /
   ``createTrainIdLabelImgs`` compute (their ``createInstanceImage`` / ``createLabelImage`` with
   the "trainIds" encoding), saved as 16-bit and 8-bit PNGs; their own scripts stop with
   "cannot write mode I as PNG" on current Pillow.
4. Prints images per split, instances per class and crowd regions.
"""

import logging
import multiprocessing as mp
import os

import numpy as np
from tabulate import tabulate
from tqdm import tqdm

from ..errors import DatasetError
from .cityscapes import (
    CITYSCAPES_THING_CLASSES,
    DOWNLOAD_HINT,
    FILES_PER_WORKER,
    MIN_POLYGON_POINTS,
    SPLITS,
    cache_file,
    cityscapes_files,
    cityscapes_split_dirs,
    load_cityscapes_instances,
)
from .common import dataset_root, write_uint16_png

__all__ = ["present_splits", "write_train_id_images", "summary_table", "prepare_cityscapes"]

logger = logging.getLogger(__name__)


def present_splits(root=None):
    """Splits of ``<root>/cityscapes`` that have an image or an annotation folder.

    Raises DatasetError (saying what to download) if there is no ``cityscapes/`` folder or no
    split in it.
    """
    base = os.path.join(dataset_root(root), "cityscapes")
    if not os.path.isdir(base):
        raise DatasetError(
            f"Cityscapes not found: {base} does not exist (pass --root, the folder holding "
            "cityscapes/). " + DOWNLOAD_HINT.format(base=base)
        )
    splits = [s for s in SPLITS if any(os.path.isdir(d) for d in cityscapes_split_dirs(root, s))]
    if not splits:
        raise DatasetError(
            f"No Cityscapes split in {base}: expected leftImg8bit/<split>/ and gtFine/<split>/ "
            f"for train, val or test. " + DOWNLOAD_HINT.format(base=base)
        )
    return splits


def _train_id_arrays(json_file):
    """(instanceTrainIds, labelTrainIds) arrays of one polygons file, drawn by cityscapesscripts.

    Polygons too short to draw are left out, as the loader leaves them out.
    """
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    annotation = Annotation()
    annotation.fromJsonFile(json_file)
    annotation.objects = [
        obj for obj in annotation.objects if len(obj.polygon) >= MIN_POLYGON_POINTS
    ]
    instance = np.asarray(createInstanceImage(annotation, "trainIds"))
    label = np.asarray(createLabelImage(annotation, "trainIds"))
    return instance, label


def _write_train_ids(json_file):
    instance, label = _train_id_arrays(json_file)
    stem = json_file[: -len("_polygons.json")]
    write_uint16_png(stem + "_instanceTrainIds.png", instance)
    from PIL import Image

    Image.fromarray(label.astype(np.uint8)).save(stem + "_labelTrainIds.png")


def write_train_id_images(json_files, num_workers=None, progress=None):
    """Write ``*_gtFine_{instance,label}TrainIds.png`` next to each ``*_gtFine_polygons.json``."""
    if num_workers is None:
        num_workers = min(os.cpu_count() or 1, len(json_files) // FILES_PER_WORKER)
    bar = dict(
        total=len(json_files),
        desc="trainId images",
        unit="img",
        disable=None if progress is None else not progress,
    )
    if num_workers > 1:
        with mp.Pool(num_workers) as pool:
            for _ in tqdm(pool.imap_unordered(_write_train_ids, json_files, chunksize=16), **bar):
                pass
    else:
        for json_file in tqdm(json_files, **bar):
            _write_train_ids(json_file)


def _split_counts(records):
    counts = {name: 0 for name in CITYSCAPES_THING_CLASSES}
    crowd = 0
    for record in records:
        for ann in record["annotations"]:
            if ann["iscrowd"]:
                crowd += 1
            else:
                counts[CITYSCAPES_THING_CLASSES[ann["category_id"]]] += 1
    empty = sum(1 for r in records if not any(not a["iscrowd"] for a in r["annotations"]))
    return {
        "images": len(records),
        "images without instances": empty,
        **counts,
        "crowd regions": crowd,
    }


def summary_table(records_by_split):
    """A table with one column per split: images, images without instances, instances per
    class (crowd regions not included) and crowd regions."""
    counts = {split: _split_counts(records) for split, records in records_by_split.items()}
    rows = list(next(iter(counts.values())))
    return tabulate(
        [[row] + [counts[split][row] for split in counts] for row in rows],
        headers=[""] + list(counts),
        colalign=("left",) + ("right",) * len(counts),
    )


def prepare_cityscapes(root=None, train_ids=False, cache_dir=None, num_workers=None, progress=True):
    """Check, cache and summarise every split present under ``<root>/cityscapes``.

    Returns:
        dict: split -> records (as :func:`load_cityscapes_instances` returns them).
    """
    records_by_split = {}
    for split in present_splits(root):
        image_dir, gt_dir = cityscapes_split_dirs(root, split)
        records_by_split[split] = load_cityscapes_instances(
            image_dir, gt_dir, cache_dir=cache_dir, num_workers=num_workers, progress=progress
        )
        print(
            f"{split}: {len(records_by_split[split])} images, annotation cache "
            f"{cache_file(gt_dir, cache_dir=cache_dir) or '(none: no writable folder)'}"
        )
        if train_ids:
            json_files = [ann_file for _, ann_file in cityscapes_files(image_dir, gt_dir)]
            write_train_id_images(json_files, num_workers=num_workers, progress=progress)
            print(f"{split}: wrote *_instanceTrainIds.png and *_labelTrainIds.png in {gt_dir}")
    return records_by_split
