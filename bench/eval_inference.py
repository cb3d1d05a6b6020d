#!/usr/bin/env python
"""Evaluation inference speed: images per forward pass, and precision.

Times the whole inference loop (test loader, model, postprocessing; the evaluator itself
excluded) over generated 2048x1024 Cityscapes-layout val images with the R50-FPN of
``configs/cityscapes_ft.py``: detectron2's stock test loader at batch 1 in float32, then our
path (``d2_finetune.engine.evaluate``) at batch 1 and batch N, in float32 and with AMP. All runs
load
the same weights, in one process, after a warm-up pass; the stock row runs them in detectron2's
NCHW layout, ours in channels-last (``train.channels_last``).

    python bench/eval_inference.py                    # GPU
    python bench/eval_inference.py --smoke            # CPU: tiny images and model
"""

import argparse
import os
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "cityscapes_ft.py")
SMOKE_CONFIG = os.path.join(REPO, "configs", "demo", "cityscapes_demo.py")


class NullEvaluator:
    """Consumes the predictions (so lazy work is done) without scoring them."""

    def reset(self):
        self.count = 0

    def process(self, inputs, outputs):
        self.count += sum(len(o["instances"]) for o in outputs)

    def evaluate(self):
        return {}


def timed(fn, images):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", default="output/bench_eval_inference")
    parser.add_argument("--images", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--init", default="", help="weights (default: a calibrated random init)")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()

    from tabulate import tabulate

    from detectron2.evaluation import inference_on_dataset

    from d2_finetune.data.loaders import build_test_loader
    from d2_finetune.demo import make_calibrated_init
    from d2_finetune.demo.synthetic import make_cityscapes, make_cityscapes_parallel
    from d2_finetune.engine import autocast_context, load_for_inference, prepare_config

    config = SMOKE_CONFIG if args.smoke else CONFIG
    size = (256, 128) if args.smoke else (2048, 1024)
    images = 8 if args.smoke else args.images
    work = os.path.abspath(args.work_dir)
    root = os.path.join(work, "data")
    if not os.path.isdir(os.path.join(root, "cityscapes", "leftImg8bit", "val")):
        make_cityscapes(root, {"train": 2}, size=size, seed=5)
        make_cityscapes_parallel(root, "val", images, size=size, seed=6)
    init = args.init or os.path.join(work, "init.pth")
    base = [
        f"dataloader.register.root={root}",
        f"train.output_dir={work}/out",
        "train.seed=0",
        "dataloader.train.total_batch_size=2",
    ]
    if not os.path.isfile(init):
        make_calibrated_init(config, base, init)

    def cfg_for(batch, amp, channels_last=True):
        overrides = base + [
            f"train.init_checkpoint={init}",
            f"dataloader.test.batch_size={batch}",
            f"train.amp.enabled={amp}",
            f"train.channels_last={channels_last}",
        ]
        return prepare_config(config, overrides, training=False)

    model = load_for_inference(cfg_for(1, False))
    stock_model = load_for_inference(cfg_for(1, False, channels_last=False))

    # detectron2's own test loader for this dataset, as DefaultTrainer builds it from yacs.
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.engine import DefaultTrainer

    yacs = get_cfg()
    yacs.merge_from_file(model_zoo.get_config_file("Cityscapes/mask_rcnn_R_50_FPN.yaml"))
    if args.smoke:
        yacs.INPUT.MIN_SIZE_TEST, yacs.INPUT.MAX_SIZE_TEST = 128, 256
    stock_loader = DefaultTrainer.build_test_loader(yacs, "cityscapes_ft_instance_val")

    def run(loader, amp, net=model):
        """Inference over ``loader`` (built beforehand, as for every path) under AMP or not."""
        c = cfg_for(1, amp)

        def go():
            with autocast_context(c):
                inference_on_dataset(net, loader, NullEvaluator())

        return go

    ours_one = build_test_loader(cfg_for(1, False))
    ours_batched = build_test_loader(cfg_for(args.batch, False))
    run(ours_batched, True)()  # warm-up: kernels, allocator
    run(ours_one, False, stock_model)()
    rows = []
    for name, fn in [
        ("stock test loader, batch 1, fp32", run(stock_loader, False, stock_model)),
        ("ours, batch 1, fp32", run(ours_one, False)),
        (f"ours, batch {args.batch}, fp32", run(ours_batched, False)),
        ("ours, batch 1, AMP", run(ours_one, True)),
        (f"ours, batch {args.batch}, AMP", run(ours_batched, True)),
    ]:
        rows.append([name, f"{timed(fn, images):.1f}"])
    print(tabulate(rows, headers=["path", "images/s"]))
    speed = {r[0]: float(r[1]) for r in rows}
    stock = "stock test loader, batch 1, fp32"
    print(
        f"ratio batch {args.batch} / batch 1 (fp32): "
        f"{speed[f'ours, batch {args.batch}, fp32'] / speed['ours, batch 1, fp32']:.2f}x"
    )
    print(
        f"ratio ours batch {args.batch} AMP / stock batch 1 fp32: "
        f"{speed[f'ours, batch {args.batch}, AMP'] / speed[stock]:.2f}x"
    )
    if args.smoke:
        print(
            "(--smoke checks that both paths run on a CPU with tiny sizes: these are not "
            "benchmark figures)"
        )


if __name__ == "__main__":
    main()
