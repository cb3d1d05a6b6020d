"""A synthetic Cityscapes (gtFine layout), its PNGs drawn by cityscapesscripts' own functions."""

import json
import os

import numpy as np

from ...data.common import write_uint16_png
from .drawing import (
    APPEARANCE,
    STUFF,
    paint,
    polygon_box,
    render_objects,
    sample_object,
    stuff_polygons,
)

__all__ = ["make_cityscapes", "make_cityscapes_parallel"]

_CITIES = {"train": ["aachen", "bochum"], "val": ["frankfurt"], "test": ["berlin"]}


def make_cityscapes(
    root,
    splits=None,
    size=(512, 256),
    classes=None,
    seed=0,
    objects_per_image=(3, 7),
    group_prob=0.25,
    cities=None,
):
    """Write a synthetic Cityscapes (gtFine) dataset under ``<root>/cityscapes``.

    Args:
        root: the folder that will hold ``cityscapes/``.
        splits: {split: number of images}, default {"train": 8, "val": 4}.
        size: (width, height) of every image.
        classes: object classes to draw (Cityscapes thing classes by default).
        objects_per_image: inclusive range of instance objects per image.
        group_prob: chance that an image also holds a ``<class>group`` (crowd) region.
        cities: city folder names to spread the images over (default: real Cityscapes names).

    Returns:
        dict: split -> list of image paths.
    """
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.preparation.json2instanceImg import createInstanceImage
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    from ...data.cityscapes import CITYSCAPES_THING_CLASSES

    splits = splits or {"train": 8, "val": 4}
    classes = list(classes or CITYSCAPES_THING_CLASSES)
    stuff_colour = dict(STUFF)
    rng = np.random.default_rng(seed)
    width, height = size
    written = {}
    for split, count in splits.items():
        split_cities = cities or _CITIES.get(split, [split])
        written[split] = []
        for i in range(count):
            city = split_cities[i % len(split_cities)]
            stem = f"{city}_{i:06d}_000019"
            img_dir = os.path.join(root, "cityscapes", "leftImg8bit", split, city)
            gt_dir = os.path.join(root, "cityscapes", "gtFine", split, city)
            os.makedirs(img_dir, exist_ok=True)
            os.makedirs(gt_dir, exist_ok=True)

            objects = [{"label": n, "polygon": p} for n, p in stuff_polygons(rng, width, height)]
            layers = [(o["polygon"], stuff_colour[o["label"]]) for o in objects]
            if rng.random() < group_prob:
                name = classes[rng.integers(len(classes))]
                poly = sample_object(rng, name, width, height, height * 0.35)
                objects.append({"label": name + "group", "polygon": poly})
                layers.append((poly, APPEARANCE[name][1]))
            lo, hi = objects_per_image
            for name, poly in render_objects(
                rng, size, classes, int(rng.integers(lo, hi + 1)), allow_overlap=True
            ):
                objects.append({"label": name, "polygon": poly})
                layers.append((poly, APPEARANCE[name][1]))
                if name == "car" and rng.random() < 0.5:  # label id -1: never drawn
                    x0, y0, x1, y1 = polygon_box(poly)
                    cx, cy = (x0 + x1) // 2, y1 - max(2, (y1 - y0) // 6)
                    plate = [[cx - 4, cy - 2], [cx + 4, cy - 2], [cx + 4, cy + 2], [cx - 4, cy + 2]]
                    objects.append({"label": "license plate", "polygon": plate})
            image = paint(rng, size, layers)
            image_path = os.path.join(img_dir, stem + "_leftImg8bit.png")
            image.save(image_path)

            json_path = os.path.join(gt_dir, stem + "_gtFine_polygons.json")
            with open(json_path, "w") as f:
                json.dump({"imgHeight": height, "imgWidth": width, "objects": objects}, f)
            annotation = Annotation()
            annotation.fromJsonFile(json_path)
            write_uint16_png(
                os.path.join(gt_dir, stem + "_gtFine_instanceIds.png"),
                np.asarray(createInstanceImage(annotation, "ids")),
            )
            createLabelImage(annotation, "ids").save(
                os.path.join(gt_dir, stem + "_gtFine_labelIds.png")
            )
            createLabelImage(annotation, "color").save(
                os.path.join(gt_dir, stem + "_gtFine_color.png")
            )
            written[split].append(image_path)
    return written


def _cityscapes_chunk(kwargs):
    return make_cityscapes(**kwargs)


def make_cityscapes_parallel(
    root, split, count, size=(2048, 1024), seed=0, processes=None, objects_per_image=(16, 20)
):
    """``make_cityscapes`` for one split with several processes: each writes its share of the
    images into its own city folder (``<split>NN``)."""
    import multiprocessing as mp

    processes = max(1, min(processes or os.cpu_count() or 1, count))
    share = -(-count // processes)
    jobs = [
        dict(
            root=root,
            splits={split: min(share, count - k * share)},
            size=size,
            seed=seed + k,
            objects_per_image=objects_per_image,
            cities=[f"{split}{k:02d}"],
        )
        for k in range(processes)
        if count - k * share > 0
    ]
    with mp.Pool(len(jobs)) as pool:
        pool.map(_cityscapes_chunk, jobs)
