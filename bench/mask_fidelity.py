#!/usr/bin/env python
"""Instance-mask fidelity: our Cityscapes loader vs detectron2's builtin one, against the official
``*_gtFine_instanceIds.png`` that cityscapesscripts draws from the same polygons.

Generated Cityscapes-layout data with heavy occlusion (later objects cover earlier ones, as in
real gtFine files); for every official instance, the best IoU of a same-class mask from each
loader. Prints the share of instances at IoU >= 0.95 and the share that are exact.

    python bench/mask_fidelity.py [--images 10] [--work-dir output/bench_mask_fidelity]
"""

import argparse
import os
import shutil

import numpy as np
import pycocotools.mask as mask_util
from PIL import Image
from tabulate import tabulate

from detectron2.data.datasets.cityscapes import load_cityscapes_instances as stock_load

from d2_finetune.data import cityscapes as cs
from d2_finetune.demo.synthetic import make_cityscapes


def official_instances(record):
    """{instance id: mask} of the thing instances in the record's official instanceIds PNG."""
    from cityscapesscripts.helpers.labels import id2label

    gt = record["file_name"].replace(os.sep + "leftImg8bit" + os.sep, os.sep + "gtFine" + os.sep)
    ids = np.asarray(Image.open(gt[: -len("_leftImg8bit.png")] + "_gtFine_instanceIds.png"))
    return {
        int(v): ids == v
        for v in np.unique(ids)
        if v >= 1000 and id2label[int(v) // 1000].name in cs.CITYSCAPES_THING_CLASSES
    }


def decode(segmentation, height, width):
    if isinstance(segmentation, dict):
        return mask_util.decode(segmentation).astype(bool)
    rles = mask_util.frPyObjects([list(map(float, p)) for p in segmentation], height, width)
    return mask_util.decode(mask_util.merge(rles)).astype(bool)


def best_ious(records):
    from cityscapesscripts.helpers.labels import id2label

    ious = []
    for r in records:
        masks = [
            (a["category_id"], decode(a["segmentation"], r["height"], r["width"]))
            for a in r["annotations"]
            if not a["iscrowd"]
        ]
        for value, gt in official_instances(r).items():
            category = cs.CITYSCAPES_THING_CLASSES.index(id2label[value // 1000].name)
            best = 0.0
            for c, m in masks:
                union = np.logical_or(gt, m).sum()
                if c == category and union:
                    best = max(best, np.logical_and(gt, m).sum() / union)
            ious.append(best)
    return np.array(ious)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=10)
    parser.add_argument("--seed", type=int, default=3)
    parser.add_argument("--work-dir", default="output/bench_mask_fidelity")
    args = parser.parse_args()
    shutil.rmtree(args.work_dir, ignore_errors=True)
    make_cityscapes(
        args.work_dir,
        {"val": args.images},
        size=(384, 192),
        seed=args.seed,
        objects_per_image=(8, 12),
        group_prob=0.6,
    )
    image_dir, gt_dir = cs.cityscapes_split_dirs(args.work_dir, "val")
    ours = best_ious(cs.load_cityscapes_instances(image_dir, gt_dir, cache=False))
    stock = best_ious(stock_load(image_dir, gt_dir, from_json=True, to_polygons=True))
    rows = [
        (name, len(v), f"{100 * (v >= 0.95).mean():.1f}%", f"{100 * (v == 1.0).mean():.1f}%")
        for name, v in (("ours", ours), ("detectron2 builtin (polygons)", stock))
    ]
    print(f"{args.images} generated images of 384x192 with 8-12 overlapping objects each")
    print(tabulate(rows, headers=["loader", "instances", "IoU >= 0.95", "exact"]))


if __name__ == "__main__":
    main()
