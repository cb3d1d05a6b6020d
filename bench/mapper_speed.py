#!/usr/bin/env python
"""Data-loader work per training image: detectron2's mappers against ours, one CPU core.

On generated 2048x1024 Cityscapes-layout images with 16-20 instances, with the Cityscapes
recipe's augmentation (short side 800-1024, flip), times per image:

* PNG decoding alone: detectron2's ``read_image`` (PIL) and OpenCV (the same pixels);
* detectron2's DatasetMapper on detectron2's builtin Cityscapes records (polygons, the stock
  recipe) and on ours with ``instance_mask_format="bitmask"`` (full-image masks);
* our DatasetMapper with cropped masks and OpenCV decoding (our default), and with PIL.

Images per second per loader worker is 1000 / (ms per image).

    python bench/mapper_speed.py [--images 12] [--repeat 2]
"""

import argparse
import copy
import os
import time

import numpy as np
import torch

CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "cityscapes_ft.py"
)  # its train mapper is the Cityscapes recipe


def per_image_ms(fn, items, repeat):
    fn(items[0])  # warm-up
    start = time.perf_counter()
    for _ in range(repeat):
        for item in items:
            fn(item)
    return (time.perf_counter() - start) / (repeat * len(items)) * 1000


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", default="output/bench_mapper_speed")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()

    import cv2
    from tabulate import tabulate

    from detectron2.config import instantiate
    from detectron2.data import DatasetMapper as StockMapper
    from detectron2.data.datasets.cityscapes import load_cityscapes_instances as stock_load
    from detectron2.data.detection_utils import read_image as stock_read

    from d2_finetune.config import load_config
    from d2_finetune.data.cityscapes import load_cityscapes_instances
    from d2_finetune.data.mapper import DatasetMapper, read_image
    from d2_finetune.demo.synthetic import make_cityscapes_parallel

    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    root = os.path.abspath(args.work_dir)
    image_dir = os.path.join(root, "cityscapes", "leftImg8bit", "train")
    gt_dir = os.path.join(root, "cityscapes", "gtFine", "train")
    if not os.path.isdir(image_dir):
        make_cityscapes_parallel(root, "train", args.images, size=(2048, 1024))
    ours = load_cityscapes_instances(image_dir, gt_dir, cache=False)
    stock_records = stock_load(image_dir, gt_dir, from_json=True, to_polygons=True)
    augs = list(instantiate(load_config(CONFIG).dataloader.train.mapper.augmentations))

    def mapper(cls, fmt, **kw):
        m = cls(
            is_train=True,
            augmentations=augs,
            image_format="BGR",
            use_instance_mask=True,
            instance_mask_format=fmt,
            **kw,
        )
        return lambda d: m(copy.deepcopy(d))

    files = [d["file_name"] for d in ours]
    rows = [
        (
            "decode PNG: PIL (detectron2)",
            per_image_ms(lambda f: stock_read(f, "BGR"), files, args.repeat),
        ),
        (
            "decode PNG: OpenCV (ours)",
            per_image_ms(lambda f: read_image(f, "BGR"), files, args.repeat),
        ),
        (
            "stock mapper, builtin records, polygon masks",
            per_image_ms(mapper(StockMapper, "polygon"), stock_records, args.repeat),
        ),
        (
            "stock mapper, our records, bitmask",
            per_image_ms(mapper(StockMapper, "bitmask"), ours, args.repeat),
        ),
        (
            "our mapper, cropped masks, PIL decode",
            per_image_ms(mapper(DatasetMapper, "cropped", decoder="pil"), ours, args.repeat),
        ),
        (
            "our mapper, cropped masks, OpenCV (default)",
            per_image_ms(mapper(DatasetMapper, "cropped"), ours, args.repeat),
        ),
    ]
    instances = np.mean([len(d["annotations"]) for d in ours])
    print(f"{len(ours)} images of 2048x1024, {instances:.1f} annotations each, 1 core\n")
    print(
        tabulate(
            [(name, f"{ms:.0f}", f"{1000 / ms:.1f}") for name, ms in rows],
            headers=["per training image", "ms", "images/s per worker"],
        )
    )
    stock, ours_ms = rows[2][1], rows[-1][1]
    print(f"\nratio our mapper / stock recipe mapper (images per worker): {stock / ours_ms:.2f}x")


if __name__ == "__main__":
    main()
