"""Loading pretrained detectors into models with a different set of classes."""
import logging

from detectron2.checkpoint import DetectionCheckpointer

from .errors import CheckpointError

__all__ = ["FinetuneCheckpointer", "CLASS_DEPENDENT_PREFIXES"]

logger = logging.getLogger(__name__)

# Layers whose output size depends on the number of classes.
CLASS_DEPENDENT_PREFIXES = (
    "roi_heads.box_predictor.cls_score.",
    "roi_heads.box_predictor.bbox_pred.",
    "roi_heads.mask_head.predictor.",
)


def is_class_dependent(key):
    return key.startswith(CLASS_DEPENDENT_PREFIXES)


class FinetuneCheckpointer(DetectionCheckpointer):
    """A DetectionCheckpointer that skips exactly the class-dependent layers whose shapes differ.

    Any other difference between the checkpoint and the model (a shape mismatch elsewhere, a
    missing or unexpected key) is an error listing the keys, unless ``strict=False``, which
    logs them instead.
    """

    def __init__(self, model, save_dir="", *, target_classes=None, class_map="auto",
                 strict=True, **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.target_classes = target_classes
        self.class_map = class_map
        self.strict = strict
        self.skipped = []

    def _load_model(self, checkpoint):
        if checkpoint.get("matching_heuristics", False):
            return super()._load_model(checkpoint)
        self._convert_ndarray_to_tensor(checkpoint["model"])
        model_state = self.model.state_dict()
        source = checkpoint["model"]
        self.skipped = []
        for key in list(source):
            if key in model_state and is_class_dependent(key):
                if tuple(source[key].shape) != tuple(model_state[key].shape):
                    self.skipped.append((key, tuple(source[key].shape), tuple(model_state[key].shape)))
                    del source[key]
        incompatible = super()._load_model(checkpoint)
        problems = []
        if incompatible.incorrect_shapes:
            problems.append(
                "shape mismatch: "
                + ", ".join(f"{k} {tuple(a)} vs model {tuple(b)}" for k, a, b in incompatible.incorrect_shapes)
            )
        missing = [k for k in incompatible.missing_keys if not is_class_dependent(k)]
        if missing:
            problems.append("missing in the checkpoint: " + ", ".join(missing))
        if incompatible.unexpected_keys:
            problems.append("not in the model: " + ", ".join(incompatible.unexpected_keys))
        if problems:
            message = "Checkpoint does not fit the model outside the class-dependent layers; " + "; ".join(problems)
            if self.strict:
                raise CheckpointError(message + " (set train.strict_transfer=False to load anyway).")
            logger.warning(message)
        for key, src, dst in self.skipped:
            logger.info(f"Re-initialised class-dependent {key}: checkpoint {src} vs model {dst}")
        incompatible.missing_keys[:] = []
        incompatible.unexpected_keys[:] = []
        incompatible.incorrect_shapes[:] = []
        return incompatible
