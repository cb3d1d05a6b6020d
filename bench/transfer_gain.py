#!/usr/bin/env python
"""Mask AP over iterations: fine-tuning with the class transplant vs. a re-initialised head.

The offline analogue of the Mask R-CNN paper's COCO -> Cityscapes experiment, on the demo's
synthetic data at half the demo's resolution (256x128 images): about 900 training iterations
of ~0.35 s and some twenty evaluations, about eight minutes on a two-core CPU:

1. the demo's data: a Cityscapes-layout dataset and a COCO-format one with COCO's 80 classes;
2. the demo's stand-in COCO checkpoint: a calibrated random init of the demo architecture with
   an 80-class head, trained by scripts/train_net.py on the COCO-format data and saved in
   Detectron2's model-zoo .pkl format (with its class names);
3. three fine-tunes of configs/demo/cityscapes_demo.py from that checkpoint by
   scripts/train_net.py, identical (seed, data order, iterations, schedule) except how the
   head starts: ``train.class_map=auto`` (person, car, truck, bus, train, motorcycle, bicycle
   start from the checkpoint's rows; rider fresh), the same with
   ``train.class_init={rider: person}`` (rider from COCO's person), and ``train.class_map=None``
   (the whole head re-initialised, as plain Detectron2 does). Mask AP, and rider's, on the val
   split is measured before training and every ``--eval-period`` iterations.

    python bench/transfer_gain.py [--output-dir output/bench_transfer] [--iters 200]
"""

import argparse
import json
import os
import time

from detectron2.evaluation.testing import flatten_results_dict

from d2_finetune.demo import (
    demo_paths,
    make_calibrated_init,
    run_train_net,
    save_model_zoo_pkl,
    standin_overrides,
)
from d2_finetune.demo.synthetic import make_cityscapes, make_coco
from d2_finetune.engine import evaluate, prepare_config
from d2_finetune.engine.weights import build_checkpointer
from d2_finetune.modeling import build_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN_CONFIG = os.path.join(REPO, "configs", "demo", "coco_standin.py")
FINETUNE_CONFIG = os.path.join(REPO, "configs", "demo", "cityscapes_demo.py")
TRAIN_NET = os.path.join(REPO, "scripts", "train_net.py")

# Fine-tuning runs, identical but for how the head starts: output folder -> overrides.
MODES = {
    "transplant": ["train.class_map=auto"],  # 7 classes from COCO's rows, rider fresh
    "rider_from_person": ["train.class_map=auto", "train.class_init={rider:person}"],
    "re-initialised": ["train.class_map=null"],  # the whole head fresh, as plain Detectron2
}
SIZE = (256, 128)
# The demo config's resolution halved, like the images.
HALF_RESOLUTION = [
    "dataloader.train.mapper.augmentations.0.short_edge_length=[112,120,128,136,144]",
    "dataloader.train.mapper.augmentations.0.max_size=288",
    "dataloader.test.mapper.augmentations.0.short_edge_length=128",
    "dataloader.test.mapper.augmentations.0.max_size=256",
]


def make_data(p, num_train, num_val):
    """Step 1: the demo's data, at the bench's image size."""
    make_cityscapes(p["data"], {"train": num_train, "val": num_val}, size=SIZE, seed=0)
    make_coco(os.path.join(p["coco"], "train"), num_images=3 * num_train, size=SIZE, seed=1)
    make_coco(os.path.join(p["coco"], "val"), num_images=num_val, size=SIZE, seed=2)


def make_standin(p, standin_iters):
    """Step 2: the demo's stand-in COCO checkpoint, in model-zoo .pkl format."""
    overrides = (
        standin_overrides(p)
        + HALF_RESOLUTION
        + [
            f"train.max_iter={standin_iters}",
            f"lr_multiplier.steps=[{standin_iters * 5 // 6}]",
            f"lr_multiplier.warmup_iters={min(50, standin_iters // 4)}",
            f"train.eval_period={standin_iters}",
        ]
    )
    make_calibrated_init(STANDIN_CONFIG, overrides, os.path.join(p["standin"], "init.pth"))
    run_train_net(TRAIN_NET, STANDIN_CONFIG, overrides)
    pkl = os.path.join(p["standin"], "model_final.pkl")
    save_model_zoo_pkl(
        os.path.join(p["standin"], "model_final.pth"),
        pkl,
        author="d2_finetune transfer bench COCO stand-in",
    )
    return pkl


def finetune_overrides(p, pkl, mode, iters, eval_period):
    return HALF_RESOLUTION + [
        f"dataloader.register.root={p['data']}",
        f"train.init_checkpoint={pkl}",
        f"train.output_dir={os.path.join(p['finetune'], mode)}",
        f"train.max_iter={iters}",
        f"lr_multiplier.steps=[{iters * 4 // 5}]",
        f"lr_multiplier.warmup_iters={min(50, iters // 4)}",
        f"train.eval_period={eval_period}",
        f"train.checkpointer.period={iters}",
        "train.plots=False",
        *MODES[mode],
    ]


def ap_before_training(overrides):
    """Mask AP of the freshly loaded model (iteration 0); the eval-only guard does not apply."""
    cfg = prepare_config(FINETUNE_CONFIG, overrides, training=False)
    model = build_model(cfg)
    build_checkpointer(cfg, model, record_name="bench_transfer.json").load(
        cfg.train.init_checkpoint
    )
    return mask_ap(flatten_results_dict(evaluate(cfg, model)))


def mask_ap(flat):
    """(AP, AP50, rider's AP) from flattened evaluation results, or None if they hold no mask
    AP."""
    for prefix in ("cityscapes/", "segm/"):
        if prefix + "AP" in flat:
            return flat[prefix + "AP"], flat[prefix + "AP50"], flat.get(prefix + "AP-rider")
    return None


def ap_during_training(output_dir, iters):
    """{iterations done: (AP, AP50)} from the evaluations logged in metrics.json.

    detectron2 logs a periodic evaluation at the index of the iteration just run and the final
    one, run after training, at ``max_iter``."""
    curve = {}
    with open(os.path.join(output_dir, "metrics.json")) as f:
        for line in f:
            record = json.loads(line)
            ap = mask_ap(record)
            if ap is not None:
                it = record["iteration"]
                curve[it if it == iters else it + 1] = ap
    return curve


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--output-dir", default="output/bench_transfer")
    parser.add_argument("--num-train", type=int, default=60)
    parser.add_argument("--num-val", type=int, default=20)
    parser.add_argument("--standin-iters", type=int, default=300)
    parser.add_argument("--iters", type=int, default=200, help="fine-tuning iterations, each run")
    parser.add_argument("--eval-period", type=int, default=50)
    parser.add_argument("--standin", help="reuse this stand-in .pkl instead of making one")
    args = parser.parse_args()

    start = time.time()
    output_dir = os.path.abspath(args.output_dir)
    pkl = os.path.abspath(args.standin) if args.standin else None
    p = demo_paths(output_dir)
    make_data(p, args.num_train, args.num_val)
    if pkl is None:
        pkl = make_standin(p, args.standin_iters)
    standin_done = time.time()

    curves = {}
    for mode in MODES:
        overrides = finetune_overrides(p, pkl, mode, args.iters, args.eval_period)
        curves[mode] = {0: ap_before_training(overrides)}
        run_train_net(TRAIN_NET, FINETUNE_CONFIG, overrides)
        curves[mode].update(ap_during_training(os.path.join(p["finetune"], mode), args.iters))

    iterations = sorted(set().union(*curves.values()))
    header = f"{'iteration':>9} | " + " | ".join(
        f"{m + ' AP':>22} {'AP50':>6} {'rider':>6}" for m in MODES
    )
    lines = [header, "-" * len(header)]
    nan = float("nan")
    for it in iterations:
        cells = []
        for mode in MODES:
            ap, ap50, rider = curves[mode].get(it, (nan, nan, nan))
            cells.append(f"{ap:22.2f} {ap50:6.2f} {nan if rider is None else rider:6.2f}")
        lines.append(f"{it:9d} | " + " | ".join(cells))
    print("\nMask AP on the synthetic Cityscapes-layout val split (same seed, data and schedule):")
    print("\n".join(lines))
    print(
        f"\nStand-in checkpoint: {pkl} ({standin_done - start:.0f} s); fine-tuning and "
        f"evaluation: {time.time() - standin_done:.0f} s."
    )
    with open(os.path.join(p["finetune"], "transfer_gain.json"), "w") as f:
        json.dump(
            {
                "checkpoint": pkl,
                "args": vars(args),
                "curves": {m: {str(k): v for k, v in c.items()} for m, c in curves.items()},
            },
            f,
            indent=1,
        )


if __name__ == "__main__":
    main()
