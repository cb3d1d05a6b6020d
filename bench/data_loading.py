#!/usr/bin/env python
"""Cityscapes annotation loading: d2_finetune's cached loader against detectron2's builtin one.

Writes a synthetic gtFine split (default 3,000 images, like Cityscapes' 2,975 train images) with
full-size 2048x1024 polygon files: ~20 "stuff" polygons and 15-20 instances per image, polygons
of 8-80 points, some crowd regions and license plates. The loaders read only the annotations,
so every image (and every ``*_instanceIds.png`` / ``*_labelIds.png``, whose presence
detectron2's loader checks) is a hard link to one small PNG, and the polygon files repeat a pool
of distinct annotations. Then, in the same run on the same files:

* ours, cold: parse with the process pool and write the cache;
* ours, warm: read the cache (the best of a few runs);
* detectron2's ``load_cityscapes_instances(from_json=True, to_polygons=True)``, which has no
  cache, so its cold and warm times are the same.

    python bench/data_loading.py [--images 3000] [--workdir DIR]
"""

import argparse
import json
import math
import os
import shutil
import tempfile
import time

import numpy as np
from PIL import Image
from tabulate import tabulate

from d2_finetune.data.cityscapes import CITYSCAPES_THING_CLASSES, load_cityscapes_instances

WIDTH, HEIGHT = 2048, 1024
CITIES = [
    "aachen",
    "bochum",
    "bremen",
    "cologne",
    "darmstadt",
    "dusseldorf",
    "erfurt",
    "hamburg",
    "hanover",
    "jena",
    "krefeld",
    "monchengladbach",
    "strasbourg",
    "stuttgart",
    "tubingen",
    "ulm",
    "weimar",
    "zurich",
]
# Rough share of each class among Cityscapes train instances.
THING_SHARE = [0.34, 0.04, 0.49, 0.01, 0.01, 0.005, 0.015, 0.09]
STUFF = ["vegetation", "pole", "traffic sign", "traffic light", "terrain", "fence", "wall"]


def _blob(rng, cx, cy, w, h, points):
    angles = np.sort(rng.uniform(0, 2 * math.pi, points))
    radius = rng.uniform(0.8, 1.0, points)
    return [
        [int(cx + w / 2 * r * math.cos(t)), int(cy + h / 2 * r * math.sin(t))]
        for r, t in zip(radius, angles)
    ]


def _annotation(rng):
    horizon = int(HEIGHT * rng.uniform(0.4, 0.5))
    objects = [
        {
            "label": "sky",
            "polygon": [[0, 0], [WIDTH, 0], [WIDTH, horizon - 200], [0, horizon - 200]],
        },
        {
            "label": "building",
            "polygon": _blob(rng, WIDTH / 2, horizon - 150, WIDTH * 1.1, 400, 60),
        },
        {
            "label": "road",
            "polygon": [[0, horizon], [WIDTH, horizon], [WIDTH, HEIGHT], [0, HEIGHT]],
        },
        {"label": "sidewalk", "polygon": _blob(rng, 200, horizon + 150, 500, 300, 30)},
    ]
    for _ in range(16):
        objects.append(
            {
                "label": STUFF[rng.integers(len(STUFF))],
                "polygon": _blob(
                    rng,
                    rng.uniform(0, WIDTH),
                    rng.uniform(0, horizon + 100),
                    rng.uniform(20, 300),
                    rng.uniform(40, 400),
                    int(rng.integers(8, 40)),
                ),
            }
        )
    if rng.random() < 0.3:
        objects.append(
            {
                "label": CITYSCAPES_THING_CLASSES[rng.integers(8)] + "group",
                "polygon": _blob(rng, rng.uniform(0, WIDTH), horizon + 100, 400, 200, 40),
            }
        )
    for _ in range(int(rng.integers(15, 21))):
        name = CITYSCAPES_THING_CLASSES[rng.choice(8, p=THING_SHARE)]
        h = rng.uniform(40, 350)
        w = h * (0.4 if name in ("person", "rider") else 1.8)
        cx, cy = rng.uniform(0, WIDTH), rng.uniform(horizon, HEIGHT - h / 3)
        objects.append(
            {"label": name, "polygon": _blob(rng, cx, cy, w, h, int(rng.integers(20, 80)))}
        )
        if name == "car" and rng.random() < 0.5:
            x, y = int(cx), int(cy)
            objects.append(
                {
                    "label": "license plate",
                    "polygon": [[x - 15, y], [x + 15, y], [x + 15, y + 8], [x - 15, y + 8]],
                }
            )
    objects.append(
        {"label": "ego vehicle", "polygon": _blob(rng, WIDTH / 2, HEIGHT, WIDTH, 150, 40)}
    )
    return {"imgHeight": HEIGHT, "imgWidth": WIDTH, "objects": objects}


def _link(source, target):
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def make_split(root, num_images, distinct=100, seed=0):
    """Write ``<root>/cityscapes/{leftImg8bit,gtFine}/train/<city>/`` with ``num_images`` images."""
    rng = np.random.default_rng(seed)
    texts = [json.dumps(_annotation(rng)) for _ in range(distinct)]
    image_root = os.path.join(root, "cityscapes", "leftImg8bit", "train")
    gt_root = os.path.join(root, "cityscapes", "gtFine", "train")
    source_png = os.path.join(root, "image.png")
    Image.new("RGB", (64, 32)).save(source_png)
    for i in range(num_images):
        city = CITIES[i % len(CITIES)]
        stem = f"{city}_{i:06d}_000019"
        os.makedirs(os.path.join(image_root, city), exist_ok=True)
        os.makedirs(os.path.join(gt_root, city), exist_ok=True)
        _link(source_png, os.path.join(image_root, city, stem + "_leftImg8bit.png"))
        for suffix in ("_gtFine_instanceIds.png", "_gtFine_labelIds.png"):
            _link(source_png, os.path.join(gt_root, city, stem + suffix))
        with open(os.path.join(gt_root, city, stem + "_gtFine_polygons.json"), "w") as f:
            f.write(texts[i % distinct])
    return image_root, gt_root


def _timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--warm-runs", type=int, default=3)
    parser.add_argument("--workdir", help="where to write the split (default: a temporary folder)")
    args = parser.parse_args()

    from detectron2.data.datasets.cityscapes import load_cityscapes_instances as d2_load

    workdir = args.workdir or tempfile.mkdtemp(prefix="d2ft_bench_")
    cache_dir = os.path.join(workdir, "cache")
    shutil.rmtree(cache_dir, ignore_errors=True)
    gen_time, (image_dir, gt_dir) = _timed(lambda: make_split(workdir, args.images))
    print(
        f"Generated {args.images} images in {gen_time:.1f}s under {workdir}; {os.cpu_count()} CPUs"
    )

    cold, ours = _timed(lambda: load_cityscapes_instances(image_dir, gt_dir, cache_dir=cache_dir))
    warm = min(
        _timed(lambda: load_cityscapes_instances(image_dir, gt_dir, cache_dir=cache_dir))[0]
        for _ in range(args.warm_runs)
    )
    d2_time, theirs = _timed(lambda: d2_load(image_dir, gt_dir, from_json=True, to_polygons=True))

    ours_count = sum(len(r["annotations"]) for r in ours)
    theirs_count = sum(len(r["annotations"]) for r in theirs)
    rows = [
        ["d2_finetune, cold (parse + write cache)", f"{cold:.2f}", f"{d2_time / cold:.1f}x"],
        ["d2_finetune, warm (read cache)", f"{warm:.3f}", f"{d2_time / warm:.0f}x"],
        ["detectron2 builtin (no cache)", f"{d2_time:.2f}", "1.0x"],
    ]
    print(tabulate(rows, headers=["loader", "seconds", "speed-up vs detectron2"]))
    print(
        f"images: {len(ours)} (ours) / {len(theirs)} (detectron2); "
        f"instances incl. crowd: {ours_count} / {theirs_count}"
    )
    print(
        f"cold speed-up {d2_time / cold:.2f}x (target >= 1), "
        f"warm speed-up {d2_time / warm:.1f}x (target >= 20)"
    )
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
