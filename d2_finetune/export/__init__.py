"""Deploying a fine-tuned model: TorchScript and ONNX export of a config's model, and running
the exported model for prediction and evaluation (docs/export.md).

    from d2_finetune.export import export_model, ExportedModel, ExportedPredictor

    export_model(cfg, "deploy/", "onnx")                  # deploy/model.onnx + export.json
    model = ExportedModel("deploy/model.onnx")            # called like a detectron2 model
    instances = ExportedPredictor(model)(image_bgr)       # one image, as predict.py does

Each name is imported when first used: running an exported model does not load the exporter.
"""

from ..lazy import lazy_exports

_EXPORTS = {
    "DEFAULT_OPSET": ".exporter",
    "FORMATS": ".exporter",
    "MANIFEST": ".manifest",
    "MODEL_FILES": ".manifest",
    "ExportError": ".errors",
    "ExportedModel": ".runtime",
    "ExportedPredictor": ".runtime",
    "evaluate_exported": ".runtime",
    "export_config": ".exporter",
    "export_model": ".exporter",
    "is_exported_model": ".runtime",
    "load_exported": ".runtime",
    "match_instances": ".compare",
    "read_manifest": ".manifest",
    "summarize": ".compare",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
