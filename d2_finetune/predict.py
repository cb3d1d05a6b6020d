"""Predictions as pictures and JSON, for single images or folders."""

import json
import logging
import os

import numpy as np
import pycocotools.mask as mask_util
import torch

from detectron2.config import instantiate
from detectron2.data import Metadata, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import GeneralizedRCNN
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import ColorMode, Visualizer

from .engine.resolve import prepare_config
from .engine.weights import load_for_inference
from .errors import UserError
from .postprocess import postprocess

__all__ = ["Predictor", "predict_images", "list_images", "instances_to_json", "run_predict"]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")


class Predictor:
    """Run a config's model on single images, with the config's test-time resizing.

    Args:
        cfg: the LazyConfig (``model``, ``dataloader.test``, ``train.device``).
        model: a model with weights already loaded.
    """

    def __init__(self, cfg, model):
        self.model = model.eval()
        self.augmentations = T.AugmentationList(
            [instantiate(a) for a in cfg.dataloader.test.mapper.augmentations]
        )
        self.input_format = cfg.model.get("input_format", "BGR")
        self.device = torch.device(cfg.train.device)

    @torch.no_grad()
    def __call__(self, image_bgr):
        height, width = image_bgr.shape[:2]
        image = image_bgr[:, :, ::-1] if self.input_format == "RGB" else image_bgr
        aug_input = T.AugInput(image)
        self.augmentations(aug_input)
        tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
        inputs = {"image": tensor.to(self.device), "height": height, "width": width}
        if isinstance(self.model, GeneralizedRCNN):
            # The network, then the post-processing that exported models share.
            raw = self.model.inference([inputs], do_postprocess=False)[0]
            return postprocess(raw, height, width).to("cpu")
        return self.model([inputs])[0]["instances"].to("cpu")


def list_images(path):
    """The image files at ``path`` (a file, or a folder searched recursively), sorted."""
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise UserError(f"--input {path}: no such file or folder.")
    found = []
    for folder, _, files in os.walk(path):
        found.extend(os.path.join(folder, f) for f in files if f.lower().endswith(IMAGE_EXTENSIONS))
    if not found:
        raise UserError(
            f"--input {path}: no images ({', '.join(IMAGE_EXTENSIONS)}) in this folder."
        )
    return sorted(found)


def instances_to_json(instances, class_names):
    records = []
    masks = instances.pred_masks.numpy() if instances.has("pred_masks") else None
    for i in range(len(instances)):
        record = {
            "class": class_names[int(instances.pred_classes[i])],
            "class_id": int(instances.pred_classes[i]),
            "score": round(float(instances.scores[i]), 5),
            "bbox_xyxy": [round(float(v), 2) for v in instances.pred_boxes.tensor[i]],
        }
        if masks is not None:
            rle = mask_util.encode(np.asfortranarray(masks[i].astype(np.uint8)))
            record["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
        records.append(record)
    return records


def predict_images(predictor, paths, output_dir, metadata_name, confidence=0.5, input_root=None):
    """Write ``<name>.png`` (visualised) and ``<name>.json`` for each image into ``output_dir``.

    ``metadata_name`` names a registered dataset whose classes (and colours) the pictures and
    JSON use, or is that ``Metadata`` itself.

    Output names mirror the inputs' paths relative to ``input_root`` and never leave
    ``output_dir``.

    Returns:
        list[str]: the JSON files written.
    """
    metadata = (
        metadata_name if isinstance(metadata_name, Metadata) else MetadataCatalog.get(metadata_name)
    )
    class_names = metadata.get("thing_classes")
    output_root = os.path.realpath(output_dir)
    os.makedirs(output_root, exist_ok=True)
    written = []
    for path in paths:
        rel = os.path.relpath(path, input_root) if input_root else os.path.basename(path)
        stem = os.path.splitext(rel)[0]
        target = os.path.realpath(os.path.join(output_root, stem))
        if os.path.commonpath([target, output_root]) != output_root:
            raise UserError(f"Refusing to write {target}: outside the output folder {output_root}.")
        os.makedirs(os.path.dirname(target), exist_ok=True)
        image = read_image(path, format="BGR")
        instances = predictor(image)
        instances = instances[instances.scores >= confidence]
        visualizer = Visualizer(image[:, :, ::-1], metadata, instance_mode=ColorMode.SEGMENTATION)
        visualizer.draw_instance_predictions(instances).save(target + ".png")
        with open(target + ".json", "w") as f:
            json.dump(
                {
                    "file_name": os.path.abspath(path),
                    "height": int(image.shape[0]),
                    "width": int(image.shape[1]),
                    "instances": instances_to_json(instances, class_names),
                },
                f,
                indent=1,
            )
        written.append(target + ".json")
    logger.info(f"Wrote {len(written)} predictions to {output_root}")
    return written


def run_predict(args):
    """``scripts/predict.py``: load the config and weights (``train.init_checkpoint``), predict."""
    setup_logger(name="d2_finetune")
    if not 0 <= args.confidence <= 1:
        raise UserError(f"--confidence must be between 0 and 1, got {args.confidence}.")
    paths = list_images(args.input)
    if getattr(args, "model", None):
        return _predict_exported(args, paths)
    # The record of the weights loaded (inference_weights.json) goes beside the predictions.
    cfg = prepare_config(
        args.config_file, args.opts, training=False, settings={"train.output_dir": args.output}
    )
    model = load_for_inference(cfg)
    dataset = cfg.dataloader.test.dataset.names
    dataset = dataset if isinstance(dataset, str) else dataset[0]
    root = args.input if os.path.isdir(args.input) else None
    return predict_images(
        Predictor(cfg, model),
        paths,
        args.output,
        dataset,
        confidence=args.confidence,
        input_root=root,
    )


def _predict_exported(args, paths):
    """``--model DIR/model.onnx|model.ts``: an exported model with its export.json, no config."""
    from .export import ExportedModel, ExportedPredictor

    if args.config_file or args.opts:
        given = "--config-file" if args.config_file else f"the overrides {' '.join(args.opts)}"
        raise UserError(
            f"--model {args.model} takes its classes, resize and thresholds from its "
            f"export.json: drop {given}."
        )
    model = ExportedModel(args.model)
    root = args.input if os.path.isdir(args.input) else None
    return predict_images(
        ExportedPredictor(model),
        paths,
        args.output,
        model.metadata(),
        confidence=args.confidence,
        input_root=root,
    )
