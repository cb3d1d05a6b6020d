#!/usr/bin/env python
"""Registering and loading a COCO-format dataset: d2_finetune's path against detectron2's.

A config that leaves ``num_classes`` to the data needs the class names before the model is
built, i.e. at registration. Three ways to get there, timed in the same run on the same json:

* ours: ``register_coco_dataset`` reads the json once (categories checked, metadata set) and
  builds the records from that parse when the dataset is loaded;
* detectron2, loading at registration: ``load_coco_json`` run once for the metadata and again
  when training loads the dataset (what a ``DatasetCatalog.get`` at registration amounts to);
* detectron2, plain ``load_coco_json`` once: the floor, which gives no class names before
  loading.

The synthetic json has COCO-like annotations (polygons of 10-40 points, a few crowd RLEs); the
images are empty files, since no loader opens them.

    python bench/coco_registration.py [--images 20000] [--workdir DIR]
"""

import argparse
import json
import os
import shutil
import tempfile
import time

import numpy as np
from tabulate import tabulate

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json

from d2_finetune.data import register_coco_dataset


def write_dataset(folder, num_images, seed=0):
    rng = np.random.default_rng(seed)
    image_root = os.path.join(folder, "images")
    os.makedirs(image_root)
    ids = sorted(rng.choice(200, 60, replace=False) + 1)
    categories = [{"id": int(i), "name": f"class_{i}"} for i in ids]
    images, annotations = [], []
    for i in range(num_images):
        name = f"{i:012d}.jpg"
        open(os.path.join(image_root, name), "w").close()
        images.append({"id": i + 1, "file_name": name, "width": 640, "height": 480})
        for _ in range(int(rng.integers(1, 14))):
            x, y = rng.uniform(0, 560, size=2)
            w, h = rng.uniform(8, 80, size=2)
            ann = {
                "id": len(annotations) + 1,
                "image_id": i + 1,
                "category_id": categories[int(rng.integers(len(categories)))]["id"],
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
            }
            if rng.random() < 0.01:
                ann["iscrowd"] = 1
                counts = [int(v) for v in rng.integers(1, 200, 40)]
                ann["segmentation"] = {"size": [480, 640], "counts": counts}
            else:
                points = int(rng.integers(10, 41))
                angles = np.sort(rng.uniform(0, 2 * np.pi, points))
                ann["segmentation"] = [
                    np.round(
                        np.stack(
                            [x + w / 2 * (1 + np.cos(angles)), y + h / 2 * (1 + np.sin(angles))], 1
                        ).ravel(),
                        2,
                    ).tolist()
                ]
            annotations.append(ann)
    json_file = os.path.join(folder, "instances.json")
    with open(json_file, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    return json_file, image_root, len(annotations)


def timed(fn, repeats):
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    folder = tempfile.mkdtemp(dir=args.workdir, prefix="bench_coco_")
    try:
        json_file, image_root, num_annotations = write_dataset(folder, args.images)
        size_mb = os.path.getsize(json_file) / 2**20
        print(f"{args.images} images, {num_annotations} annotations, json {size_mb:.0f} MiB")

        def ours():
            for name in ("bench_ours",):
                if name in DatasetCatalog.list():
                    DatasetCatalog.remove(name)
                    MetadataCatalog.remove(name)
            register_coco_dataset("bench_ours", json_file, image_root)
            return DatasetCatalog.get("bench_ours")

        def stock_twice():
            load_coco_json(json_file, image_root, "bench_stock_twice")
            return load_coco_json(json_file, image_root, "bench_stock_twice")

        def stock_once():
            return load_coco_json(json_file, image_root, "bench_stock_once")

        assert ours() == stock_once()
        rows = []
        ours_s = timed(ours, args.repeats)
        for label, fn in (
            ("ours: register (metadata) + load", None),
            ("detectron2: load_coco_json at registration + load", stock_twice),
            ("detectron2: load_coco_json once (no metadata before)", stock_once),
        ):
            seconds = ours_s if fn is None else timed(fn, args.repeats)
            rows.append([label, f"{seconds:.2f}", f"{seconds / ours_s:.2f}x"])
        print(tabulate(rows, headers=["path", "seconds (best of %d)" % args.repeats, "vs ours"]))
    finally:
        shutil.rmtree(folder)


if __name__ == "__main__":
    main()
