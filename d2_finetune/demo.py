"""``make demo``: the whole fine-tuning recipe offline, on data and weights it makes itself.

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
import pickle
import subprocess
import sys
import time

import torch

from .config import load_config
from .data import register_datasets
from .data.synthetic import make_cityscapes, make_coco
from .engine import FinetuneTrainer, resolve_device
from .modeling import calibrate_frozen_bn

__all__ = ["run_demo", "save_model_zoo_pkl"]

logger = logging.getLogger(__name__)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STANDIN_CONFIG = os.path.join(REPO, "configs", "demo", "coco_standin.py")
FINETUNE_CONFIG = os.path.join(REPO, "configs", "demo", "cityscapes_demo.py")
TRAIN_NET = os.path.join(REPO, "scripts", "train_net.py")


def save_model_zoo_pkl(pth_file, pkl_file, author):
    """Convert one of our ``.pth`` checkpoints to Detectron2's model-zoo ``.pkl`` format:
    ``{"model": {name: numpy array}, "__author__": ...}``, keeping its ``thing_classes`` (the
    class names the transfer matches by)."""
    checkpoint = torch.load(pth_file, map_location="cpu", weights_only=True)
    data = {"model": {k: v.numpy() for k, v in checkpoint["model"].items()}, "__author__": author}
    if "thing_classes" in checkpoint:
        data["thing_classes"] = list(checkpoint["thing_classes"])
    with open(pkl_file, "wb") as f:
        pickle.dump(data, f)


def _banner(text):
    print(f"\n{'=' * 78}\n{text}\n{'=' * 78}", flush=True)


def _train_net(config, overrides):
    cmd = [sys.executable, TRAIN_NET, "--config-file", config, *overrides]
    print("+ " + " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def _paths(output_dir):
    data = os.path.join(output_dir, "datasets")
    return {
        "data": data,
        "coco": os.path.join(data, "coco_standin"),
        "standin": os.path.join(output_dir, "coco_standin"),
        "finetune": os.path.join(output_dir, "finetune"),
        "predictions": os.path.join(output_dir, "predictions"),
    }


def _standin_overrides(p):
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
    cfg = resolve_device(load_config(config, overrides))
    register_datasets(cfg)
    torch.manual_seed(cfg.train.seed if cfg.train.seed >= 0 else 0)
    model = FinetuneTrainer.build_model(cfg)
    batch = next(iter(FinetuneTrainer.build_train_loader(cfg)))
    count = calibrate_frozen_bn(model, batch)
    os.makedirs(os.path.dirname(out_file), exist_ok=True)
    torch.save({"model": model.state_dict()}, out_file)
    print(f"Calibrated {count} FrozenBN layers of a random init -> {out_file}", flush=True)


def run_demo(output_dir="output/demo", num_train=60, num_val=20, predictions=4):
    start = time.time()
    output_dir = os.path.abspath(output_dir)
    p = _paths(output_dir)

    _banner("1/4  Synthetic data: Cityscapes gtFine layout + COCO-format with COCO's 80 classes")
    make_cityscapes(p["data"], {"train": num_train, "val": num_val}, seed=0)
    make_coco(os.path.join(p["coco"], "train"), num_images=3 * num_train, seed=1)
    make_coco(os.path.join(p["coco"], "val"), num_images=num_val, seed=2)
    print(f"Cityscapes layout: {p['data']}/cityscapes ({num_train} train, {num_val} val images)")
    print(f"COCO format:       {p['coco']} ({3 * num_train} train, {num_val} val images)")

    _banner("2/4  Stand-in for the COCO-pretrained Mask R-CNN (offline: no model zoo download)")
    standin = _standin_overrides(p)
    make_calibrated_init(STANDIN_CONFIG, standin, os.path.join(p["standin"], "init.pth"))
    _train_net(STANDIN_CONFIG, standin)
    pkl = os.path.join(p["standin"], "model_final.pkl")
    save_model_zoo_pkl(
        os.path.join(p["standin"], "model_final.pth"), pkl, author="d2_finetune demo COCO stand-in"
    )
    print(f"Saved in Detectron2 model-zoo format: {pkl}")

    _banner("3/4  Fine-tune on Cityscapes layout: scripts/train_net.py + configs/demo/cityscapes_demo.py")
    finetune = [
        f"dataloader.register.root={p['data']}",
        f"train.init_checkpoint={pkl}",
        f"train.output_dir={p['finetune']}",
    ]
    _train_net(FINETUNE_CONFIG, finetune)

    _banner("4/4  Prediction pictures")
    cfg = resolve_device(load_config(FINETUNE_CONFIG, finetune))
    register_datasets(cfg)
    from .predict import Predictor, list_images, predict_images

    cfg.train.init_checkpoint = os.path.join(p["finetune"], "model_final.pth")
    model = FinetuneTrainer.load_for_inference(cfg)
    images = list_images(os.path.join(p["data"], "cityscapes", "leftImg8bit", "val"))[:predictions]
    predict_images(Predictor(cfg, model), images, p["predictions"], "cityscapes_ft_instance_val")
    print(f"Wrote {len(images)} pictures and JSON files to {p['predictions']}")
    _summary(p, time.time() - start)


def _summary(p, seconds):
    with open(os.path.join(p["finetune"], "transfer.json")) as f:
        transfer = json.load(f)
    with open(os.path.join(p["finetune"], "inference", "cityscapes_instance_results.json")) as f:
        metrics = json.load(f)["metrics"]
    started = ", ".join(f"{t} <- {s}" if s else f"{t} fresh" for t, s in transfer["class_map"].items())
    _banner("Summary (synthetic data and a stand-in COCO checkpoint: not Cityscapes results)")
    print(f"Head transfer from the stand-in COCO checkpoint: {started}")
    print(f"Cityscapes mask AP on the synthetic val split: {metrics['AP']:.1f} (AP50 {metrics['AP50']:.1f})")
    print(f"Outputs: {os.path.dirname(p['finetune'])} (logs, checkpoints, transfer.json, plots/, "
          "inference/, predictions/)")
    print(f"Demo finished in {seconds:.0f} s.")
