"""``make demo`` (``scripts/demo.py``): the whole fine-tuning recipe offline, on data and weights it
makes itself.

No Cityscapes and no COCO weights can be downloaded here, so the demo makes honest stand-ins:

1. a small synthetic dataset in the exact Cityscapes gtFine layout, and a synthetic
   COCO-format dataset whose categories carry COCO's 80 names and ids;
2. a stand-in "COCO-pretrained" checkpoint: the demo architecture with COCO's 80-class head,
   trained briefly on the COCO-format data and saved in Detectron2's model-zoo ``.pkl`` format;
3. fine-tuning with ``scripts/train_net.py --config-file configs/demo/cityscapes_demo.py``
   (which inherits ``configs/cityscapes_ft.py``), then the Cityscapes AP and prediction pictures.
"""

import json
import logging
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import torch

from ..checkpoint.files import write_model_zoo_pkl
from ..data.loaders import build_train_loader
from ..engine.resolve import prepare_config
from ..engine.weights import load_for_inference
from ..modeling import build_model, calibrate_frozen_bn
from ..predict import Predictor, list_images, predict_images
from .synthetic import make_cityscapes, make_coco

__all__ = [
    "DemoFiles",
    "demo_paths",
    "make_calibrated_init",
    "run_demo",
    "run_train_net",
    "save_model_zoo_pkl",
    "standin_overrides",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoFiles:
    """What the demo runs: the repository's configs and training script."""

    standin_config: str  # configs/demo/coco_standin.py
    finetune_config: str  # configs/demo/cityscapes_demo.py
    train_net: str  # scripts/train_net.py


def save_model_zoo_pkl(pth_file, pkl_file, author):
    """Convert one of our ``.pth`` checkpoints to Detectron2's model-zoo ``.pkl`` format:
    ``{"model": {name: numpy array}, "__author__": ...}``, keeping its ``thing_classes`` (the
    class names the transfer matches by)."""
    checkpoint = torch.load(pth_file, map_location="cpu", weights_only=True)
    entries = {}
    if "thing_classes" in checkpoint:
        entries["thing_classes"] = list(checkpoint["thing_classes"])
    write_model_zoo_pkl(pkl_file, checkpoint["model"], author, **entries)


def _banner(text):
    print(f"\n{'=' * 78}\n{text}\n{'=' * 78}", flush=True)


def run_train_net(train_net, config, overrides):
    cmd = [sys.executable, train_net, "--config-file", config, *overrides]
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def demo_paths(output_dir):
    data = os.path.join(output_dir, "datasets")
    return {
        "data": data,
        "coco": os.path.join(data, "coco_standin"),
        "standin": os.path.join(output_dir, "coco_standin"),
        "finetune": os.path.join(output_dir, "finetune"),
        "predictions": os.path.join(output_dir, "predictions"),
    }


def standin_overrides(p):
    coco = p["coco"]
    return [
        f"dataloader.register.0.json_file={coco}/train/annotations.json",
        f"dataloader.register.0.image_root={coco}/train/images",
        f"dataloader.register.1.json_file={coco}/val/annotations.json",
        f"dataloader.register.1.image_root={coco}/val/images",
        f"train.output_dir={p['standin']}",
        f"train.init_checkpoint={p['standin']}/init.pth",
    ]


def make_calibrated_init(config, overrides, out_file):
    """A random-init model of ``config`` with FrozenBN statistics calibrated on a training batch."""
    cfg = prepare_config(config, overrides)
    torch.manual_seed(cfg.train.seed if cfg.train.seed >= 0 else 0)
    model = build_model(cfg)
    batch = next(iter(build_train_loader(cfg)[0]))
    count = calibrate_frozen_bn(model, batch)
    os.makedirs(os.path.dirname(out_file), exist_ok=True)
    torch.save({"model": model.state_dict()}, out_file)
    print(f"Calibrated {count} FrozenBN layers of a random init -> {out_file}", flush=True)


def run_demo(files, output_dir="output/demo", num_train=60, num_val=20, predictions=4):
    """The four steps; ``files``: a :class:`DemoFiles`."""
    start = time.time()
    output_dir = os.path.abspath(output_dir)
    p = demo_paths(output_dir)

    _banner("1/4  Synthetic data: Cityscapes gtFine layout + COCO-format with COCO's 80 classes")
    make_cityscapes(p["data"], {"train": num_train, "val": num_val}, seed=0)
    make_coco(os.path.join(p["coco"], "train"), num_images=3 * num_train, seed=1)
    make_coco(os.path.join(p["coco"], "val"), num_images=num_val, seed=2)
    print(f"Cityscapes layout: {p['data']}/cityscapes ({num_train} train, {num_val} val images)")
    print(f"COCO format:       {p['coco']} ({3 * num_train} train, {num_val} val images)")

    _banner("2/4  Stand-in for the COCO-pretrained Mask R-CNN (offline: no model zoo download)")
    standin = standin_overrides(p)
    make_calibrated_init(files.standin_config, standin, os.path.join(p["standin"], "init.pth"))
    run_train_net(files.train_net, files.standin_config, standin)
    pkl = os.path.join(p["standin"], "model_final.pkl")
    save_model_zoo_pkl(
        os.path.join(p["standin"], "model_final.pth"), pkl, author="d2_finetune demo COCO stand-in"
    )
    print(f"Saved in Detectron2 model-zoo format: {pkl}")

    _banner(
        "3/4  Fine-tune on Cityscapes layout: scripts/train_net.py + "
        "configs/demo/cityscapes_demo.py"
    )
    finetune = [
        f"dataloader.register.root={p['data']}",
        f"train.init_checkpoint={pkl}",
        f"train.output_dir={p['finetune']}",
    ]
    run_train_net(files.train_net, files.finetune_config, finetune)

    _banner("4/4  Prediction pictures")
    weights = os.path.join(p["finetune"], "model_final.pth")
    cfg = prepare_config(
        files.finetune_config, finetune, training=False, settings={"train.init_checkpoint": weights}
    )
    model = load_for_inference(cfg)
    images = list_images(os.path.join(p["data"], "cityscapes", "leftImg8bit", "val"))[:predictions]
    predict_images(Predictor(cfg, model), images, p["predictions"], "cityscapes_ft_instance_val")
    print(f"Wrote {len(images)} pictures and JSON files to {p['predictions']}")
    _summary(p, time.time() - start)


def _summary(p, seconds):
    with open(os.path.join(p["finetune"], "transfer.json")) as f:
        transfer = json.load(f)
    with open(os.path.join(p["finetune"], "inference", "cityscapes_instance_results.json")) as f:
        metrics = json.load(f)["metrics"]
    started = ", ".join(
        f"{t} <- {s}" if s else f"{t} fresh" for t, s in transfer["class_map"].items()
    )
    _banner("Summary (synthetic data and a stand-in COCO checkpoint: not Cityscapes results)")
    print(f"Head transfer from the stand-in COCO checkpoint: {started}")
    print(
        f"Cityscapes mask AP on the synthetic val split: {metrics['AP']:.1f} "
        f"(AP50 {metrics['AP50']:.1f})"
    )
    print(
        f"Outputs: {os.path.dirname(p['finetune'])} (logs, checkpoints, transfer.json, plots/, "
        "inference/, predictions/)"
    )
    print(f"Demo finished in {seconds:.0f} s.")
