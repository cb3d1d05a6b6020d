"""``export.json``: what an exported graph needs around it, written beside ``model.ts`` or
``model.onnx``.

The graph takes one preprocessed image and returns raw predictions; the class names, the
test-time resize that makes its input, the channel order and the thresholds it was built with
are here, with the sha256 of the model file it describes (a model and a manifest that do not
belong together are refused). See docs/export.md for every key.
"""

import datetime
import json
import os

import torch

import detectron2
from detectron2.config import instantiate
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.utils.file_io import PathManager

from .. import __version__
from ..checkpoint.files import sha256
from .errors import ExportError

__all__ = [
    "FORMAT_VERSION",
    "MANIFEST",
    "MODEL_FILES",
    "build_manifest",
    "dataset_classes",
    "eval_dataset",
    "format_of",
    "read_manifest",
    "resize_augmentations",
    "resize_policy",
    "resized_shape",
    "thresholds",
    "write_manifest",
]

FORMAT_VERSION = 1
MANIFEST = "export.json"
MODEL_FILES = {"torchscript": "model.ts", "onnx": "model.onnx"}
_SUFFIXES = {".ts": "torchscript", ".pt": "torchscript", ".onnx": "onnx"}
_REQUIRED = ("format_version", "format", "model_sha256", "classes", "input", "outputs")
_REQUIRED_INPUT = ("format", "resize", "dynamic_size")


def resize_policy(cfg):
    """The config's test-time resize (``dataloader.test.mapper.augmentations``) as JSON.

    Only deterministic resizes can be recorded and replayed outside the config:
    ``ResizeShortestEdge`` with one ``short_edge_length`` and ``Resize`` to a fixed shape.
    """
    augmentations = cfg.dataloader.test.mapper.get("augmentations") or []
    recorded = []
    for i, spec in enumerate(augmentations):
        aug = instantiate(spec)
        where = f"dataloader.test.mapper.augmentations[{i}]"
        if isinstance(aug, T.ResizeShortestEdge):
            lengths = sorted({int(v) for v in aug.short_edge_length})
            if len(lengths) != 1:
                raise ExportError(
                    f"{where} is ResizeShortestEdge("
                    f"short_edge_length={list(aug.short_edge_length)}), "
                    "which picks a random size per image: an export records one test size. Set "
                    f"{where}.short_edge_length to one length."
                )
            recorded.append(
                {
                    "type": "ResizeShortestEdge",
                    "short_edge_length": lengths[0],
                    "max_size": int(aug.max_size),
                    "interp": int(aug.interp),
                }
            )
        elif isinstance(aug, T.Resize):
            recorded.append(
                {"type": "Resize", "shape": [int(v) for v in aug.shape], "interp": int(aug.interp)}
            )
        else:
            raise ExportError(
                f"{where} is {type(aug).__name__}: an export records only a deterministic "
                "test-time resize (ResizeShortestEdge with one short_edge_length, or Resize), "
                "which exported models replay without the config."
            )
    return recorded


def resize_augmentations(resize):
    """The recorded resize as detectron2 augmentations (those of the config's test mapper)."""
    augs = []
    for step in resize:
        if step["type"] == "ResizeShortestEdge":
            augs.append(
                T.ResizeShortestEdge(
                    step["short_edge_length"], step["max_size"], interp=step["interp"]
                )
            )
        else:
            augs.append(T.Resize(tuple(step["shape"]), interp=step["interp"]))
    return T.AugmentationList(augs)


def resized_shape(resize, height, width):
    """The (height, width) that the recorded resize gives an image of ``height`` x ``width``."""
    for step in resize:
        if step["type"] == "Resize":
            height, width = step["shape"]
        elif step["short_edge_length"] > 0:  # 0: detectron2's "no resize"
            height, width = T.ResizeShortestEdge.get_output_shape(
                height, width, step["short_edge_length"], step["max_size"]
            )
    return int(height), int(width)


def format_of(model_path):
    """``"torchscript"`` or ``"onnx"``, from the model file's suffix."""
    suffix = os.path.splitext(model_path)[1].lower()
    if suffix not in _SUFFIXES:
        raise ExportError(
            f"{model_path}: not an exported model (a TorchScript .ts or an ONNX .onnx file "
            "written by scripts/export_model.py)."
        )
    return _SUFFIXES[suffix]


def write_manifest(folder, manifest):
    """Write ``folder/export.json`` atomically (a temporary file, then a rename)."""
    path = os.path.join(folder, MANIFEST)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(_dumps(manifest) + "\n")
    os.replace(tmp, path)
    return path


def _dumps(value, indent=""):
    """JSON with one key per line and lists of numbers (sizes, colours, means) on one."""
    inner = indent + " "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {_dumps(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + "\n" + indent + "}"
    if (
        isinstance(value, list)
        and value
        and not all(isinstance(v, (int, float)) or v is None for v in value)
    ):
        items = [inner + _dumps(v, inner) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + indent + "]"
    return json.dumps(value)


def read_manifest(model_path, check_hash=True):
    """The ``export.json`` beside ``model_path``, checked to describe that very file."""
    if not os.path.isfile(model_path):
        raise ExportError(
            f"{model_path}: no such file. Export a model with "
            "scripts/export_model.py, which writes model.ts or model.onnx."
        )
    fmt = format_of(model_path)
    path = os.path.join(os.path.dirname(os.path.abspath(model_path)), MANIFEST)
    if not os.path.isfile(path):
        raise ExportError(
            f"{path} is missing: an exported model needs the export.json written beside it by "
            f"scripts/export_model.py (class names, input resize and channel order); keep it "
            f"with {os.path.basename(model_path)}, or export again."
        )
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as e:
        raise ExportError(f"{path} cannot be read as JSON ({e}); export again.") from e
    if not isinstance(manifest, dict):
        raise ExportError(f"{path} is not an export.json (a JSON object); export again.")
    missing = [k for k in _REQUIRED if k not in manifest]
    missing += [
        f"input.{k}"
        for k in _REQUIRED_INPUT
        if k not in (manifest.get("input") or {}) and "input" not in missing
    ]
    if missing:
        raise ExportError(
            f"{path} lacks {', '.join(missing)}: it was not written by "
            "scripts/export_model.py, or was edited. Export again."
        )
    if manifest["format_version"] > FORMAT_VERSION:
        raise ExportError(
            f"{path} has format_version {manifest['format_version']}, newer than this "
            f"d2_finetune reads ({FORMAT_VERSION}): update d2_finetune."
        )
    if manifest["format"] != fmt:
        raise ExportError(
            f"{path} describes a {manifest['format']} export "
            f"({manifest.get('model_file', MODEL_FILES.get(manifest['format']))}), not the "
            f"{fmt} model {os.path.basename(model_path)}: keep each model with its own "
            "export.json."
        )
    if check_hash:
        actual = sha256(model_path)
        if actual != manifest["model_sha256"]:
            raise ExportError(
                f"{model_path} is not the model {path} was written for (sha256 {actual[:12]}... "
                f"where export.json records {str(manifest['model_sha256'])[:12]}...): keep each "
                "model with its own export.json, or export again."
            )
    return manifest


def build_manifest(
    cfg,
    model,
    *,
    fmt,
    model_file,
    model_sha256,
    classes,
    resize,
    fixed_size,
    outputs,
    verification,
    traced_with,
    opset,
    source,
):
    """The content of ``export.json`` for an export of ``cfg``'s ``model`` (docs/export.md)."""
    verification = dict(verification)
    checkpoint = cfg.train.get("init_checkpoint") or None
    return {
        "format_version": FORMAT_VERSION,
        "format": fmt,
        "model_file": model_file,
        "model_sha256": model_sha256,
        "classes": classes,
        "thing_colors": _thing_colors(cfg),
        "dataset": eval_dataset(cfg),
        "input": {
            "format": cfg.model.get("input_format", "BGR"),
            "layout": "one (3, H, W) float32 image, 0-255, resized as 'resize' says",
            "resize": resize,
            "dynamic_size": fixed_size is None,
            "fixed_size": fixed_size,
            "size_divisibility": int(model.backbone.size_divisibility),
            "pixel_mean": [float(v) for v in model.pixel_mean.flatten()],
            "pixel_std": [float(v) for v in model.pixel_std.flatten()],
            "checked_sizes": verification.pop("sizes"),
            "traced_with": traced_with,
        },
        "outputs": outputs,
        "postprocess": thresholds(model),
        "verification": verification,
        "source": {
            **(source or {}),
            "checkpoint": checkpoint,
            "checkpoint_sha256": _checkpoint_sha256(checkpoint),
        },
        "onnx_opset": opset if fmt == "onnx" else None,
        "versions": _versions(fmt),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def eval_dataset(cfg):
    """The config's (first) test dataset: it names the exported model's classes."""
    names = cfg.dataloader.test.dataset.names
    return names if isinstance(names, str) else list(names)[0]


def dataset_classes(cfg):
    """The class names of the config's test dataset (index = predicted class)."""
    classes = MetadataCatalog.get(eval_dataset(cfg)).get("thing_classes")
    if not classes:
        raise ExportError(
            f"The test dataset {eval_dataset(cfg)} has no thing_classes to name "
            "the exported model's classes."
        )
    return list(classes)


def _thing_colors(cfg):
    colors = MetadataCatalog.get(eval_dataset(cfg)).get("thing_colors")
    return [list(map(int, c)) for c in colors] if colors else None


def thresholds(model):
    """The box predictor's test-time thresholds, fixed in the graph at export."""
    predictor = model.roi_heads.box_predictor
    return {
        "score_threshold": float(predictor.test_score_thresh),
        "nms_threshold": float(predictor.test_nms_thresh),
        "detections_per_image": int(predictor.test_topk_per_image),
        "mask_threshold": 0.5,
    }


def _checkpoint_sha256(path):
    if not path:
        return None
    try:
        return sha256(PathManager.get_local_path(path))
    except Exception:  # a URL not in the local cache
        return None


def _versions(fmt):
    import torchvision

    versions = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "detectron2": detectron2.__version__,
        "d2_finetune": __version__,
    }
    if fmt == "onnx":
        import onnx
        import onnxruntime

        versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return versions
