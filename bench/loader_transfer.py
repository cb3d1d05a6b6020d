#!/usr/bin/env python
"""The training process's cost of receiving each mapped image from the loader workers.

A DataLoader worker hands every tensor of a sample to the training process through shared
memory. With torch's default ``file_descriptor`` strategy each tensor's descriptor travels over
a fresh socket connection to the worker; with ``file_system`` (our ``train.tensor_sharing``) only
a shared-memory name travels. This is time the training process spends outside the model on
every image, whatever the number of workers.

On a generated 2048x1024 Cityscapes-layout image with 18 objects, mapped by the Cityscapes
recipe (short side 800-1024, flip), workers hand over copies of the mapped sample while the
training process takes them from a full queue. The three cases take turns; each gives the
median over the rounds, in ms per image:

* stock: detectron2's DatasetMapper with polygon masks (the yacs recipe), ``file_descriptor``;
* ours, as before ``train.tensor_sharing``: cropped masks, ``file_descriptor``;
* ours: cropped masks, ``file_system``.

    python bench/loader_transfer.py [--rounds 12] [--workers 2]
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


class Copies(torch.utils.data.Dataset):
    """Fresh copies of one mapped sample, as a mapper would make them."""

    def __init__(self, sample):
        self.sample = sample

    def __len__(self):
        return 10**9

    def __getitem__(self, index):
        return copy.deepcopy(self.sample)


def count_tensors(obj):
    if torch.is_tensor(obj):
        return 1
    if isinstance(obj, dict):
        return sum(count_tensors(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(count_tensors(v) for v in obj)
    return count_tensors(vars(obj)) if hasattr(obj, "__dict__") else 0


def first(batch):
    return batch[0]


def open_loader(sample, strategy, workers, per_round):
    """An iterator over copies of ``sample`` whose workers share tensors by ``strategy``
    (workers keep the strategy in force when they start), its queue deep enough for a round."""
    torch.multiprocessing.set_sharing_strategy(strategy)
    prefetch = -(-per_round // workers) + 1
    loader = torch.utils.data.DataLoader(
        Copies(sample), num_workers=workers, collate_fn=first, prefetch_factor=prefetch
    )
    it = iter(loader)
    for _ in range(workers * prefetch):
        next(it)
    return it


def receive_ms(iterators, rounds, per_round):
    """Median ms per sample for the training process to take ``per_round`` samples from each
    iterator's queue once its workers have filled it; the iterators take turns each round, so
    that a change in the machine's load affects them alike."""
    times = [[] for _ in iterators]
    for _ in range(rounds):
        for it, out in zip(iterators, times):
            time.sleep(1.5)  # the workers refill the queue
            start = time.perf_counter()
            for _ in range(per_round):
                next(it)
            out.append((time.perf_counter() - start) / per_round * 1000)
    return [statistics.median(t) for t in times]


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", default="output/bench_loader_transfer")
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--per-round", type=int, default=16, help="samples taken per round")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()

    from tabulate import tabulate

    from detectron2.config import instantiate
    from detectron2.data import DatasetMapper as StockMapper
    from detectron2.data.datasets.cityscapes import load_cityscapes_instances as stock_load

    from d2_finetune.config import load_config
    from d2_finetune.data.cityscapes import load_cityscapes_instances
    from d2_finetune.data.mapper import DatasetMapper
    from d2_finetune.demo.synthetic import make_cityscapes

    root = os.path.abspath(args.work_dir)
    image_dir = os.path.join(root, "cityscapes", "leftImg8bit", "train")
    gt_dir = os.path.join(root, "cityscapes", "gtFine", "train")
    if not os.path.isdir(image_dir):
        make_cityscapes(root, {"train": 1}, size=(2048, 1024), seed=0, objects_per_image=(18, 18))
    augs = list(instantiate(load_config(CONFIG).dataloader.train.mapper.augmentations))
    kwargs = dict(is_train=True, augmentations=augs, image_format="BGR", use_instance_mask=True)
    stock_record = stock_load(image_dir, gt_dir, from_json=True, to_polygons=True)[0]
    our_record = load_cityscapes_instances(image_dir, gt_dir, cache=False)[0]
    stock_sample = StockMapper(instance_mask_format="polygon", **kwargs)(
        copy.deepcopy(stock_record)
    )
    our_sample = DatasetMapper(instance_mask_format="cropped", **kwargs)(copy.deepcopy(our_record))

    cases = [
        ("stock: polygon masks", stock_sample, "file_descriptor"),
        ("ours: cropped masks", our_sample, "file_descriptor"),
        ("ours: cropped masks", our_sample, "file_system"),
    ]
    iterators = [
        open_loader(sample, strategy, args.workers, args.per_round) for _, sample, strategy in cases
    ]
    medians = receive_ms(iterators, args.rounds, args.per_round)
    rows = [
        (name, strategy, count_tensors(sample), ms)
        for (name, sample, strategy), ms in zip(cases, medians)
    ]
    h, w = our_sample["image"].shape[1:]
    print(
        f"\none mapped {w}x{h} image, {len(our_sample['instances'])} instances; "
        f"{args.workers} workers, median of {args.rounds} rounds of {args.per_round} images\n"
    )
    print(
        tabulate(
            [(n, s, t, f"{ms:.2f}") for n, s, t, ms in rows],
            headers=["sample", "tensor sharing", "tensors", "ms per image in the training process"],
        )
    )
    print(
        f"\nratio stock / ours: {rows[0][3] / rows[2][3]:.2f}x; "
        f"ours file_descriptor / file_system: {rows[1][3] / rows[2][3]:.2f}x"
    )


if __name__ == "__main__":
    main()
