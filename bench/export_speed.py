#!/usr/bin/env python
"""Prediction speed of an exported model: eager PyTorch, TorchScript and onnxruntime, on the CPU.

Exports the demo model (configs/demo/cityscapes_demo.py: ResNet-18, 64-channel FPN; test
resize to 256x512) to TorchScript and ONNX, then times each path on the same synthetic
512x256 Cityscapes-layout images, in one process, after a warm-up: per image, the test resize,
the network and the post-processing that pastes masks (what scripts/predict.py does per image,
without reading and drawing). Prints images/s and the ratio to eager.

    python bench/export_speed.py [--init output/demo/finetune/model_final.pth] [--images 20]

The weights default to the demo's fine-tuned model when `make demo` has run, else a calibrated
random init (which detects its maximum of 100 instances everywhere: more post-processing than a
trained model's few).
"""
import argparse
import os
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(REPO, "configs", "demo", "cityscapes_demo.py")
DEMO_WEIGHTS = os.path.join(REPO, "output", "demo", "finetune", "model_final.pth")


def images_per_second(predict, images, repeats):
    for image in images[:2]:  # warm-up: allocator, oneDNN kernels, TorchScript's profiling runs
        predict(image)
    start = time.perf_counter()
    for _ in range(repeats):
        for image in images:
            predict(image)
    return repeats * len(images) / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="output/bench_export_speed")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2, help="passes over the images")
    parser.add_argument("--init", default=None, help="weights (default: see above)")
    parser.add_argument("--threads", type=int, default=0,
                        help="threads for torch and onnxruntime (0: their defaults)")
    args = parser.parse_args()

    import glob

    import torch
    from tabulate import tabulate

    from detectron2.data.detection_utils import read_image

    from d2_finetune.data.synthetic import make_cityscapes
    from d2_finetune.demo import make_calibrated_init
    from d2_finetune.export import ExportedModel, ExportedPredictor, export_model
    from d2_finetune.export._engine import load_export_config, load_weights
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
    cfg = load_export_config(CONFIG, base + [f"train.init_checkpoint={init}"])
    paths = sorted(glob.glob(f"{root}/cityscapes/leftImg8bit/val/*/*.png"))[:args.images]
    images = [read_image(p, format="BGR") for p in paths]

    eager = Predictor(cfg, load_weights(cfg))
    predictors = {"eager PyTorch": eager}
    for fmt in ("torchscript", "onnx"):
        folder = os.path.join(work, fmt)
        manifest = export_model(cfg, folder, fmt)
        model = ExportedModel(os.path.join(folder, manifest["model_file"]), threads=args.threads)
        predictors[f"{fmt} ({'onnxruntime' if fmt == 'onnx' else 'torch.jit'})"] = \
            ExportedPredictor(model)

    detections = sum(len(eager(image)) for image in images) / len(images)
    speeds = {name: images_per_second(p, images, args.repeats) for name, p in predictors.items()}
    reference = speeds["eager PyTorch"]
    rows = [[name, f"{speed:.2f}", f"{speed / reference:.2f}x"] for name, speed in speeds.items()]
    print(f"\n{len(images)} images of {images[0].shape[1]}x{images[0].shape[0]} (network input "
          f"256x512), {detections:.0f} detections per image, weights {init}, "
          f"{torch.get_num_threads()} torch threads")
    print(tabulate(rows, headers=["path", "images/s", "vs eager"]))


if __name__ == "__main__":
    main()
