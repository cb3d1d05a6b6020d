#!/usr/bin/env python
"""Prediction speed of an exported model: eager PyTorch, TorchScript and onnxruntime, on the CPU.

Exports the demo model (configs/demo/cityscapes_demo.py: ResNet-18, 64-channel FPN; test
resize to 256x512) to TorchScript and ONNX, then times each path on the same synthetic
512x256 Cityscapes-layout images, in one process, after a warm-up: per image, the test resize,
the network and the post-processing that pastes masks (what scripts/predict.py does per image,
without reading and drawing). The paths take turns, one pass over the images each per round,
so that other work on a shared machine slows them alike; prints each path's median images/s
over the rounds and its ratio to eager (the median of the rounds' ratios).

    python bench/export_speed.py [--init output/demo/finetune/model_final.pth] [--images 20]

The weights default to the demo's fine-tuned model when `make demo` has run, else a calibrated
random init (which detects its maximum of 100 instances everywhere: more post-processing than a
trained model's few).
"""

import argparse
import os
import statistics
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "demo", "cityscapes_demo.py")
DEMO_WEIGHTS = os.path.join(REPO, "output", "demo", "finetune", "model_final.pth")


def images_per_second(predict, images):
    start = time.perf_counter()
    for image in images:
        predict(image)
    return len(images) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--work-dir", default="output/bench_export_speed")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5, help="passes over the images per path")
    parser.add_argument("--init", default=None, help="weights (default: see above)")
    parser.add_argument(
        "--threads",
        type=int,
        default=0,
        help="threads for torch and onnxruntime (0: their defaults)",
    )
    args = parser.parse_args()

    import glob

    import torch
    from tabulate import tabulate

    from detectron2.data.detection_utils import read_image

    from d2_finetune.data.synthetic import make_cityscapes
    from d2_finetune.demo import make_calibrated_init
    from d2_finetune.engine import load_for_inference
    from d2_finetune.export import ExportedModel, ExportedPredictor, export_model
    from d2_finetune.export.exporter import export_config
    from d2_finetune.predict import Predictor

    if args.threads:
        torch.set_num_threads(args.threads)
    work = os.path.abspath(args.work_dir)
    root = os.path.join(work, "data")
    if not os.path.isdir(os.path.join(root, "cityscapes", "leftImg8bit", "val")):
        make_cityscapes(root, {"train": 2, "val": args.images}, seed=7)
    base = [f"dataloader.register.root={root}", f"train.output_dir={work}/out", "train.seed=0"]
    init = args.init or (DEMO_WEIGHTS if os.path.isfile(DEMO_WEIGHTS) else None)
    if init is None:
        init = os.path.join(work, "init.pth")
        if not os.path.isfile(init):
            torch.manual_seed(0)
            make_calibrated_init(CONFIG, base + ["dataloader.train.total_batch_size=2"], init)
    cfg = export_config(CONFIG, base + [f"train.init_checkpoint={init}"])
    paths = sorted(glob.glob(f"{root}/cityscapes/leftImg8bit/val/*/*.png"))[: args.images]
    images = [read_image(p, format="BGR") for p in paths]

    eager = Predictor(cfg, load_for_inference(cfg).eval())
    predictors = {"eager PyTorch": eager}
    for fmt in ("torchscript", "onnx"):
        folder = os.path.join(work, fmt)
        manifest = export_model(cfg, folder, fmt)
        model = ExportedModel(os.path.join(folder, manifest["model_file"]), threads=args.threads)
        predictors[f"{fmt} ({'onnxruntime' if fmt == 'onnx' else 'torch.jit'})"] = (
            ExportedPredictor(model)
        )

    detections = sum(len(eager(image)) for image in images) / len(images)
    for predict in predictors.values():  # warm-up: allocator, oneDNN, TorchScript's profiling
        for image in images[:3]:
            predict(image)
    rounds = {name: [] for name in predictors}
    for _ in range(args.rounds):
        for name, predict in predictors.items():
            rounds[name].append(images_per_second(predict, images))
    eager_rounds = rounds["eager PyTorch"]
    rows = [
        [
            name,
            f"{statistics.median(values):.2f}",
            # within a round the paths ran under the same load: the ratio of each round
            f"{statistics.median(v / e for v, e in zip(values, eager_rounds)):.2f}x",
            " ".join(f"{v:.1f}" for v in values),
        ]
        for name, values in rounds.items()
    ]
    print(
        f"\n{len(images)} images of {images[0].shape[1]}x{images[0].shape[0]} (network input "
        f"256x512), {detections:.0f} detections per image, weights {init}, "
        f"{torch.get_num_threads()} torch threads"
    )
    print(tabulate(rows, headers=["path", "images/s (median)", "vs eager", "per round"]))


if __name__ == "__main__":
    main()
