"""The plan of a load: each tensor's fate, decided from shapes and class names, touching nothing.

:func:`make_plan` compares a checkpoint's state dict with a model: which tensors load as saved,
which class-dependent layers get rows transplanted (and which rows), which start fresh, which
checkpoint tensors are ignored, and what does not fit. The checkpointer then checks the plan,
applies it and records it (:mod:`.report`).
"""

from dataclasses import dataclass, field

from ..errors import CheckpointError, ConfigError
from .classes import check_class_count, coco_thing_classes, match_classes
from .layers import (
    class_layers,
    generic_class_dependent,
    layer_of,
    model_num_classes,
    source_num_classes,
)

__all__ = ["CLASS_NAMES_KEY", "TransferPlan", "make_plan"]

# Where a checkpoint keeps the names of the classes its head predicts, in head order. Our own
# checkpoints carry the training data's thing_classes here.
CLASS_NAMES_KEY = "thing_classes"

# Model tensors that checkpoints may lack or carry: detectron2 sets them from the config.
CONFIG_BUFFERS = ("pixel_mean", "pixel_std")


@dataclass
class TransferPlan:
    """What a load will do. Entries are dicts with ``key`` and shapes (as recorded in
    ``transfer.json``); ``problems`` lists what does not fit, by kind."""

    num_classes: int = None  # the model's
    source_num_classes: int = None  # the checkpoint's, from its class-dependent layers
    source_classes: list = None
    source_classes_from: str = None
    mapping: list = None  # per model class: the checkpoint class index it starts from, or None
    mapping_note: str = ""
    loaded: list = field(default_factory=list)
    transplanted: list = field(default_factory=list)
    reinitialized: list = field(default_factory=list)
    ignored: list = field(default_factory=list)
    from_config: list = field(default_factory=list)
    problems: dict = field(default_factory=lambda: {"shape": [], "missing": [], "unexpected": []})
    normalisation: list = field(default_factory=list)  # (buffer, checkpoint's, config's values)


def make_plan(
    model, state, names, *, target_classes, class_map, synonyms, filename, class_init=None
):
    """The plan of loading ``state`` (with class names ``names``, or None) into ``model``.

    Args:
        target_classes: the model's class names in head order, or None when unknown.
        class_map, synonyms, class_init: see :func:`.classes.match_classes`.
        filename: the checkpoint, for messages.
    """
    layers = class_layers(model)
    k_tgt = model_num_classes(model) if layers else None
    if target_classes is not None and k_tgt is not None:
        key = "model.roi_heads.num_classes" if hasattr(model, "roi_heads") else "model.num_classes"
        check_class_count(target_classes, k_tgt, key)
    if k_tgt is None and target_classes is not None:
        k_tgt = len(target_classes)
    source, source_from, k_src = _source_classes(state, names, layers, filename)
    mapping, note = _mapping(target_classes, source, k_tgt, k_src, class_map, synonyms, class_init)
    plan = TransferPlan(
        num_classes=k_tgt,
        source_num_classes=k_src,
        source_classes=source,
        source_classes_from=source_from,
        mapping=mapping,
        mapping_note=note,
    )

    model_state = model.state_dict()
    for key, target_tensor in model_state.items():
        shape = tuple(target_tensor.shape)
        layer = layer_of(key, layers)
        if key not in state:
            if key.rsplit(".", 1)[-1] in CONFIG_BUFFERS:
                plan.from_config.append({"key": key, "shape": list(shape)})
                continue
            if layer is None:
                plan.problems["missing"].append((key, shape))
            plan.reinitialized.append(
                {
                    "key": key,
                    "source_shape": None,
                    "shape": list(shape),
                    "reason": "not in the checkpoint",
                }
            )
            continue
        src_shape = tuple(state[key].shape)
        if layer is not None:
            _plan_class_layer(plan, key, layer, src_shape, shape)
        elif src_shape == shape:
            plan.loaded.append({"key": key, "shape": list(shape)})
        elif generic_class_dependent(key, src_shape, shape, k_src, k_tgt):
            plan.reinitialized.append(
                {
                    "key": key,
                    "source_shape": list(src_shape),
                    "shape": list(shape),
                    "reason": "class-dependent by shape; row layout unknown",
                }
            )
        else:
            plan.problems["shape"].append((key, src_shape, shape))
    for key, tensor in state.items():
        if key not in model_state:
            plan.ignored.append(
                {
                    "key": key,
                    "source_shape": list(tensor.shape),
                    "reason": _ignored_reason(plan, model, key, tensor),
                }
            )
    return plan


def _ignored_reason(plan, model, key, tensor):
    """Why a checkpoint tensor the model has no parameter for is left out; what does not fit is
    also listed in ``plan.problems`` or ``plan.normalisation``."""
    if "anchor_generator.cell_anchors" in key:
        return "obsolete anchor buffer (recomputed from the config)"
    config_value = _config_buffer(model, key)
    if config_value is None:
        plan.problems["unexpected"].append((key, tuple(tensor.shape)))
        return "not in the model"
    # Input normalisation, saved by detectron2 versions that kept it with the weights (and by
    # converters); the model takes it from the config.
    saved = [round(float(v), 4) for v in tensor.flatten()]
    config = [round(float(v), 4) for v in config_value.flatten()]
    name = key.rsplit(".", 1)[-1]
    if len(saved) == len(config) and all(
        abs(a - b) <= 1e-3 * max(1.0, abs(b)) for a, b in zip(saved, config)
    ):
        return f"the same as the config's model.{name}"
    plan.normalisation.append((name, saved, config))
    return f"differs from the config's model.{name}={config}"


def _config_buffer(model, key):
    """The model's value of an input-normalisation buffer named ``key`` (not saved with its
    weights: detectron2 sets it from the config), or None for any other key."""
    if key.rsplit(".", 1)[-1] not in CONFIG_BUFFERS:
        return None
    try:
        return model.get_buffer(key)
    except AttributeError:
        return None


def _source_classes(state, names, layers, filename):
    """(class names, where they come from, class count) of the checkpoint."""
    k_src = source_num_classes(state, layers)
    if names is not None:
        if not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
            raise CheckpointError(
                f"{filename}: its '{CLASS_NAMES_KEY}' entry must be a list of class names, "
                f"got {type(names).__name__}."
            )
        if k_src is not None and len(names) != k_src:
            raise CheckpointError(
                f"{filename}: its '{CLASS_NAMES_KEY}' lists {len(names)} classes but its "
                f"class-dependent layers have {k_src}: the file is inconsistent."
            )
        return list(names), "checkpoint", len(names)
    if k_src == 80:
        return coco_thing_classes(), "COCO (80-class head)", k_src
    return None, None, k_src


def _mapping(target, source, k_tgt, k_src, class_map, synonyms, class_init):
    """Source class index for each target class (None: fresh), and a note."""
    if class_map is None:
        return None, "class transplant disabled (class_map=None)"
    if k_tgt is None:
        return None, "the model has no class-dependent layers"
    if target is not None and source is not None:
        return match_classes(target, source, class_map, synonyms, class_init), "by name"
    named = {"train.class_map": class_map, "train.class_init": class_init}
    named = {key: value for key, value in named.items() if isinstance(value, dict)}
    if named:
        key, value = next(iter(named.items()))
        missing = "the model's classes" if target is None else "the checkpoint's classes"
        raise ConfigError(
            f"{key}={value} names classes, but {missing} are unknown "
            "(the checkpoint has no thing_classes and its head is not COCO's 80 classes, "
            "or no training dataset gives the model's). Use train.class_map=auto or None."
        )
    unknown = (
        "the model's class names are unknown"
        if target is None
        else "the checkpoint names no classes and its head is not COCO's"
    )
    if k_src == k_tgt:
        return list(range(k_tgt)), unknown + "; same number of classes: loaded as saved"
    return [None] * k_tgt, unknown + ": no class matched"


def _plan_class_layer(plan, key, layer, src_shape, shape):
    k_tgt, k_src, mapping = plan.num_classes, plan.source_num_classes, plan.mapping
    entry = {"key": key, "source_shape": list(src_shape), "shape": list(shape)}
    if src_shape[1:] != shape[1:] or k_src is None:
        if src_shape == shape:
            plan.loaded.append({"key": key, "shape": list(shape)})
        else:
            plan.problems["shape"].append((key, src_shape, shape))
        return
    rows = src_shape[0] if src_shape else 0
    src_agnostic = rows == layer.unit and layer.num_rows(k_src) != layer.unit
    if not src_agnostic and rows != layer.num_rows(k_src):
        plan.problems["shape"].append((key, src_shape, shape))
        return
    if mapping is None or layer.agnostic:
        if src_shape == shape and (mapping is None or src_agnostic):
            plan.loaded.append({"key": key, "shape": list(shape)})
        else:
            reason = (
                "the model's layer is class-agnostic, the checkpoint's is not"
                if layer.agnostic
                else "class transplant disabled"
            )
            plan.reinitialized.append(dict(entry, reason=reason))
        return
    pairs = []
    for t, s in enumerate(mapping):
        if s is not None:
            pairs += [
                (layer.row(t, j, k_tgt), j if src_agnostic else layer.row(s, j, k_src))
                for j in range(layer.unit)
            ]
    if layer.background and not src_agnostic:
        pairs += [
            (layer.row(k_tgt, j, k_tgt), layer.row(k_src, j, k_src)) for j in range(layer.unit)
        ]
    if src_shape == shape and len(pairs) == shape[0] and all(t == s for t, s in pairs):
        plan.loaded.append({"key": key, "shape": list(shape)})
        return
    if not pairs:
        plan.reinitialized.append(dict(entry, reason="no class of the model matched"))
        return
    covered = {t for t, _ in pairs}
    entry.update(
        rows=[list(p) for p in sorted(pairs)],
        fresh_rows=[r for r in range(shape[0]) if r not in covered],
    )
    plan.transplanted.append(entry)
