#!/usr/bin/env python
"""Mask-loss targets per training batch: one ROIAlign per ground-truth crop against one batched
ROIAlign over all of an image's crops (``CroppedMasks.crop_and_resize(batched=...)``).

detectron2's mask loss asks each image's ground-truth masks for 28x28 targets of its foreground
proposals. Per crop, that is a device-to-host read (the proposals per crop) and a few kernels
per crop; batched, a fixed number of kernels and no read. On generated 2048x1024 Cityscapes-
layout images mapped by the recipe (short side 800-1024, flip), with 128 proposals per image
around its objects (clipped to the image, as the RPN's are), times a batch of 8 images on the
device at hand, after checking that both give the same masks. On a CPU the per-crop loop is
the faster (and the default there); the batched path is the default on GPUs.

    python bench/mask_targets.py [--repeat 10]
"""

import argparse
import copy
import os
import statistics
import time

import torch

CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "cityscapes_ft.py"
)  # its train mapper is the Cityscapes recipe


def proposals_around(instances, count, generator):
    """``count`` boxes jittered around random ground-truth boxes, clipped to the image, and the
    ground-truth masks they are matched to."""
    index = torch.randint(len(instances), (count,), generator=generator)
    boxes = instances.gt_boxes.tensor[index] + torch.randn(count, 4, generator=generator) * 10
    height, width = instances.image_size
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, width)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, height)
    boxes[:, 2] = torch.maximum(boxes[:, 2], boxes[:, 0] + 1).clamp(max=width)
    boxes[:, 3] = torch.maximum(boxes[:, 3], boxes[:, 1] + 1).clamp(max=height)
    return boxes, instances.gt_masks[index]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", default="output/bench_mask_targets")
    parser.add_argument("--images", type=int, default=8, help="images per batch")
    parser.add_argument("--proposals", type=int, default=128, help="foreground proposals per image")
    parser.add_argument("--repeat", type=int, default=10)
    args = parser.parse_args()

    from tabulate import tabulate

    from detectron2.config import instantiate

    from d2_finetune.config import load_config
    from d2_finetune.data.cityscapes import load_cityscapes_instances
    from d2_finetune.demo.synthetic import make_cityscapes_parallel

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    root = os.path.abspath(args.work_dir)
    image_dir = os.path.join(root, "cityscapes", "leftImg8bit", "train")
    gt_dir = os.path.join(root, "cityscapes", "gtFine", "train")
    if not os.path.isdir(image_dir):
        make_cityscapes_parallel(root, "train", args.images, size=(2048, 1024))
    records = load_cityscapes_instances(image_dir, gt_dir, cache=False)[: args.images]
    mapper = instantiate(load_config(CONFIG).dataloader.train.mapper)
    generator = torch.Generator().manual_seed(0)
    batch = []
    for record in records:
        boxes, masks = proposals_around(
            mapper(copy.deepcopy(record))["instances"], args.proposals, generator
        )
        batch.append((boxes.to(device), masks.to(device)))

    def targets(batched):
        out = [masks.crop_and_resize(boxes, 28, batched=batched) for boxes, masks in batch]
        if device.type == "cuda":
            torch.cuda.synchronize()
        return out

    for a, b in zip(targets(True), targets(False), strict=True):
        assert torch.equal(a, b), "batched and per-crop targets differ"
    rows = []
    for name, batched in (
        ("one ROIAlign per crop", False),
        ("one batched ROIAlign per image", True),
    ):
        targets(batched)
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            targets(batched)
            times.append((time.perf_counter() - start) * 1000)
        rows.append((name, statistics.median(times)))
    crops = sum(len(masks.crops) for _, masks in batch)
    print(
        f"{device.type}: {len(batch)} images, {crops} ground-truth crops, "
        f"{args.proposals} proposals "
        f"each, 28x28 targets; the same masks both ways\n"
    )
    print(tabulate([(n, f"{ms:.2f}") for n, ms in rows], headers=["mask targets", "ms per batch"]))
    print(f"\nratio per-crop / batched: {rows[0][1] / rows[1][1]:.2f}x")


if __name__ == "__main__":
    main()
