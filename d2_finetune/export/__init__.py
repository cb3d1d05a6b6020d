"""Deploying a fine-tuned model: TorchScript and ONNX export of a config's model, and running
the exported model for prediction and evaluation (docs/export.md).

    from d2_finetune.export import export_model, ExportedModel, ExportedPredictor

    export_model(cfg, "deploy/", "onnx")                  # deploy/model.onnx + export.json
    model = ExportedModel("deploy/model.onnx")            # called like a detectron2 model
    instances = ExportedPredictor(model)(image_bgr)       # one image, as predict.py does
"""
from .compare import match_instances, summarize
from .errors import ExportError
from .exporter import DEFAULT_OPSET, FORMATS, export_model
from .manifest import MANIFEST, MODEL_FILES, read_manifest
from .runtime import ExportedModel, ExportedPredictor, evaluate_exported, is_exported_model

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "MANIFEST",
    "MODEL_FILES",
    "ExportError",
    "ExportedModel",
    "ExportedPredictor",
    "evaluate_exported",
    "export_model",
    "is_exported_model",
    "match_instances",
    "read_manifest",
    "summarize",
]
