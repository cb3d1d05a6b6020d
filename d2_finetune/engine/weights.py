"""Which weights a model gets: the checkpointer a config describes, and the weights an evaluation
or a prediction runs with."""

from ..checkpoint import FinetuneCheckpointer, fresh_tensors
from ..errors import CheckpointError
from ..export.runtime import is_exported_model, load_exported
from ..modeling import build_model
from .resolve import training_metadata

__all__ = ["build_checkpointer", "load_for_inference"]


def build_checkpointer(cfg, model, record_name="transfer.json", **checkpointables):
    """A :class:`FinetuneCheckpointer` for ``model`` with the config's transfer settings
    (``train.class_map``, ``train.class_init``, ``train.strict_transfer``), the training data's
    class names and synonyms and the images' channel order, saving into ``train.output_dir``."""
    metadata = training_metadata(cfg)
    classes = metadata.get("thing_classes") if metadata is not None else None
    return FinetuneCheckpointer(
        model,
        cfg.train.output_dir,
        target_classes=list(classes) if classes is not None else None,
        class_map=cfg.train.get("class_map", "auto"),
        class_synonyms=metadata.get("class_synonyms") if metadata is not None else None,
        class_init=cfg.train.get("class_init"),
        image_format=cfg.dataloader.train.mapper.get("image_format"),
        strict=cfg.train.get("strict_transfer", True),
        record_name=record_name,
        **checkpointables,
    )


def load_for_inference(cfg):
    """The model of a resolved config with the weights of ``train.init_checkpoint``, refusing
    weights that leave any of its tensors at their random initialisation (e.g. a COCO checkpoint
    on an 8-class model: rider has no source), since it would predict with a partly random head.
    An exported model (``model.ts``, ``model.onnx`` with its ``export.json``) runs as exported,
    once it is checked to fit the config's test data.
    The load is recorded in ``<output_dir>/inference_weights.json``, apart from ``transfer.json``
    (which tells how a training run in the same folder started)."""
    if not cfg.train.init_checkpoint:
        raise CheckpointError(
            "No weights to predict with: set train.init_checkpoint=<output_dir>/model_final.pth."
        )
    if is_exported_model(cfg.train.init_checkpoint):
        return load_exported(cfg)
    model = build_model(cfg)
    report = build_checkpointer(cfg, model, record_name="inference_weights.json").load(
        cfg.train.init_checkpoint
    )
    fresh = fresh_tensors(report)
    if fresh:
        classes = [t for t, s in report["class_map"].items() if s is None]
        which = f" (classes without a source: {', '.join(classes)})" if classes else ""
        raise CheckpointError(
            f"{cfg.train.init_checkpoint} does not fit this model's classes: "
            f"{', '.join(fresh)} would keep their random initialisation{which}, so its "
            "predictions and scores would come from a random head. Use a checkpoint "
            "fine-tuned with this config (e.g. <output_dir>/model_final.pth)."
        )
    return model
