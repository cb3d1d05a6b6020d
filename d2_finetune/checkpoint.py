"""Loading pretrained detectors into models with another set of classes: strict, class-aware,
recorded and safe.

:class:`FinetuneCheckpointer` is detectron2's ``DetectionCheckpointer`` with a load that

* reads Detectron2 model-zoo ``.pkl`` files, our own ``.pth`` checkpoints and bare state dicts,
  from local paths or ``detectron2://`` / ``https://`` URLs, without ever executing code from
  the file (``torch.load(weights_only=True)``; a restricted unpickler for pickles);
* lets only the class-dependent layers differ from the model (see :func:`class_layers`): any
  other mismatch, missing or unexpected tensor stops the load before the model is touched
  (``strict=True``) or is logged (``strict=False``);
* starts each target class that matches a source class by name from that class's rows of the
  class-dependent layers (the transplant of the Mask R-CNN paper's COCO -> Cityscapes recipe);
* returns what it did as a report, logs it as a table and saves it as ``transfer.json``.
"""
import collections
import hashlib
import json
import logging
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlparse

import _compat_pickle
import numpy as np
import torch
from tabulate import tabulate

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES
from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.mask_head import BaseMaskRCNNHead
from detectron2.utils.file_io import Detectron2Handler
from fvcore.common.checkpoint import Checkpointer, _IncompatibleKeys, _strip_prefix_if_present

from .errors import CheckpointError, ConfigError

__all__ = [
    "CLASS_SYNONYMS",
    "ClassLayer",
    "FinetuneCheckpointer",
    "class_layers",
    "coco_thing_classes",
    "fresh_tensors",
    "match_classes",
    "model_num_classes",
    "normalize_class_name",
    "read_checkpoint",
]

logger = logging.getLogger(__name__)

# Target class name -> the COCO class whose weights it starts from when no class has its exact
# name. Keys and values are compared after normalize_class_name. Pascal VOC spells six COCO
# classes differently; KITTI's classes are matched to the COCO class that looks the same in a
# box: a van is a car to COCO, a tram runs on rails like a train, a sitting person is a person.
# A KITTI "Cyclist" box covers the rider and the bicycle; it starts from COCO's bicycle, the
# part that tells a cyclist from a pedestrian (which starts from person), so the two classes
# start apart; its boxes also cover the rider, which fine-tuning of the 4 box rows learns.
# Cityscapes' "rider" is deliberately absent: as in the Mask R-CNN paper it starts fresh,
# unless a class map names a source for it (e.g. {"rider": "person"}).
CLASS_SYNONYMS = {
    "aeroplane": "airplane",
    "motorbike": "motorcycle",
    "sofa": "couch",
    "tvmonitor": "tv",
    "diningtable": "dining table",
    "pottedplant": "potted plant",
    "pedestrian": "person",
    "person sitting": "person",
    "van": "car",
    "cyclist": "bicycle",
    "tram": "train",
}

# Where a checkpoint keeps the names of the classes its head predicts, in head order. Our own
# checkpoints carry the training data's thing_classes here.
CLASS_NAMES_KEY = "thing_classes"

# Model tensors that checkpoints may lack: detectron2 sets them from the config.
_CONFIG_BUFFERS = ("pixel_mean", "pixel_std")


def normalize_class_name(name):
    """Lower case, ``_`` read as a space, surrounding and repeated spaces dropped."""
    return " ".join(str(name).replace("_", " ").lower().split())


def coco_thing_classes():
    """COCO's 80 thing class names in category-id order: the order of a COCO model's head."""
    things = sorted((c for c in COCO_CATEGORIES if c["isthing"]), key=lambda c: c["id"])
    return [c["name"] for c in things]


def _canonical(name):
    name = normalize_class_name(name)
    return normalize_class_name(CLASS_SYNONYMS.get(name, name))


def match_classes(target_classes, source_classes, class_map="auto"):
    """For each target class, the index of the source class it starts from, or None.

    Args:
        target_classes (list[str]): the model's classes, in head order.
        source_classes (list[str]): the checkpoint's classes, in head order.
        class_map: ``"auto"`` matches names: the source class of the same (normalised) name,
            else one that :data:`CLASS_SYNONYMS` makes the same. A dict ``{target: source}``
            overrides the automatic match for the classes it names (a ``None`` source keeps a
            class fresh); the other classes are matched automatically. ``None``: no class.

    Returns:
        list[int or None]: one entry per target class.
    """
    if class_map is None:
        return [None] * len(target_classes)
    norm_source = [normalize_class_name(s) for s in source_classes]
    canon_source = [_canonical(s) for s in source_classes]
    result = []
    for name in target_classes:
        norm = normalize_class_name(name)
        if norm in norm_source:
            result.append(norm_source.index(norm))
        elif _canonical(name) in canon_source:
            result.append(canon_source.index(_canonical(name)))
        else:
            result.append(None)
    if isinstance(class_map, Mapping):
        norm_target = [normalize_class_name(t) for t in target_classes]
        bad_targets = [t for t in class_map if normalize_class_name(t) not in norm_target]
        bad_sources = [
            s for s in class_map.values()
            if s is not None and normalize_class_name(s) not in norm_source
        ]
        if bad_targets or bad_sources:
            problems = []
            if bad_targets:
                problems.append(
                    f"{bad_targets} are not classes of the model {list(target_classes)}"
                )
            if bad_sources:
                problems.append(
                    f"{bad_sources} are not classes of the checkpoint {list(source_classes)}"
                )
            raise ConfigError(
                f"train.class_map={dict(class_map)}: " + "; ".join(problems)
                + ". Map {target class: checkpoint class}, names as in those lists."
            )
        for target, source in class_map.items():
            index = norm_target.index(normalize_class_name(target))
            if source is not None:
                source = norm_source.index(normalize_class_name(source))
            result[index] = source
    return result


def _check_class_map(class_map):
    if class_map is None or (isinstance(class_map, str) and class_map.lower() == "none"):
        return None
    if class_map == "auto":
        return class_map
    if isinstance(class_map, Mapping):
        if all(isinstance(k, str) and (v is None or isinstance(v, str))
               for k, v in class_map.items()):
            return dict(class_map)
    raise ConfigError(
        f"train.class_map must be 'auto', None or a dict {{target class: checkpoint class}}, "
        f"got {class_map!r}."
    )


# ----------------------------------------------------------------------------------------------
# Which layers depend on the number of classes, and how their rows are laid out.


@dataclass(frozen=True)
class ClassLayer:
    """The row layout of a layer whose output size depends on the number of classes.

    Dimension 0 of its weight and bias holds ``unit`` rows per class and, with ``background``,
    ``unit`` more for background after the classes. ``class_major``: the rows of class ``c`` are
    ``c * unit ... c * unit + unit - 1`` (box deltas); else row ``j * (K + background) + c``
    (one block of classes per anchor). ``agnostic``: the model shares one block of ``unit``
    rows among all classes.
    """

    num_classes: int
    unit: int = 1
    background: bool = False
    class_major: bool = True
    agnostic: bool = False

    def num_rows(self, num_classes):
        return self.unit * (num_classes + self.background)

    def row(self, cls, j, num_classes):
        if self.class_major:
            return cls * self.unit + j
        return j * (num_classes + self.background) + cls


def model_num_classes(model):
    """The number of classes the model predicts (``roi_heads.num_classes`` or ``num_classes``)."""
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None and hasattr(roi_heads, "num_classes"):
        return int(roi_heads.num_classes)
    value = getattr(model, "num_classes", None)
    return int(value) if value is not None else None


def class_layers(model):
    """The class-dependent layers of ``model``: {module name: :class:`ClassLayer`}.

    Found by module type, so cascade stages and rotated boxes are included:

    * ``FastRCNNOutputLayers``: ``cls_score`` has K+1 rows, background last; ``bbox_pred`` has
      box_dim rows per class, or box_dim rows in all when class-agnostic;
    * mask heads (``BaseMaskRCNNHead``): ``predictor`` has one channel per class, or 1 when
      class-agnostic;
    * ``RetinaNetHead`` (RetinaNet, FCOS): ``cls_score`` has K channels per anchor.

    Other layers are recognised by shape when loading (see :class:`FinetuneCheckpointer`).
    """
    num_classes = model_num_classes(model)
    layers = {}
    for name, module in model.named_modules():
        prefix = name + "." if name else ""
        if isinstance(module, FastRCNNOutputLayers):
            k = module.num_classes
            box_dim = len(module.box2box_transform.weights)
            layers[prefix + "cls_score"] = ClassLayer(k, background=True)
            layers[prefix + "bbox_pred"] = ClassLayer(
                k, unit=box_dim, agnostic=module.bbox_pred.out_features == box_dim and k != 1
            )
        elif isinstance(module, BaseMaskRCNNHead) and num_classes and hasattr(module, "predictor"):
            channels = module.predictor.out_channels
            layers[prefix + "predictor"] = ClassLayer(
                num_classes, agnostic=channels == 1 and num_classes != 1
            )
        elif isinstance(module, RetinaNetHead) and num_classes:
            anchors = module.cls_score.out_channels // num_classes
            layers[prefix + "cls_score"] = ClassLayer(num_classes, unit=anchors, class_major=False)
    return layers


def _layer_of(key, layers):
    return layers.get(key.rsplit(".", 1)[0]) if "." in key else None


def _source_num_classes(state, layers):
    """The checkpoint's class count, read from its class-dependent layers (background layout
    first, as a class-agnostic layer cannot tell)."""
    ordered = sorted(layers.items(), key=lambda item: not item[1].background)
    for module, layer in ordered:
        tensor = state.get(module + ".weight")
        if tensor is None or tensor.ndim == 0:
            continue
        rows = tensor.shape[0]
        if layer.background:
            return rows // layer.unit - 1
        if rows != layer.unit and rows % layer.unit == 0:
            return rows // layer.unit
    return None


def _generic_class_dependent(key, source_shape, target_shape, k_src, k_tgt):
    """Shape rule for layers outside :func:`class_layers`: outside the backbone, dimension 0 is
    u * (K + b) in the model and u * (K_checkpoint + b) in the checkpoint for one u >= 1 and
    b in {0, 1}, the other dimensions equal."""
    if key.startswith("backbone.") or k_src is None or k_tgt is None or k_src == k_tgt:
        return False
    if len(source_shape) != len(target_shape) or not source_shape:
        return False
    if source_shape[1:] != target_shape[1:]:
        return False
    for b in (0, 1):
        s, t = source_shape[0], target_shape[0]
        if s % (k_src + b) == 0 and t % (k_tgt + b) == 0 and s // (k_src + b) == t // (k_tgt + b):
            return True
    return False


# ----------------------------------------------------------------------------------------------
# Reading checkpoint files without executing them.

# (module, name) of everything a pickle of numpy arrays, numbers, strings and containers needs.
_PICKLE_GLOBALS = frozenset({
    ("numpy.core.multiarray", "_reconstruct"),  # ndarray (numpy < 2 names)
    ("numpy._core.multiarray", "_reconstruct"),  # ndarray (numpy >= 2 names)
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),  # ndarray in pickle protocol 5
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("collections", "OrderedDict"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "complex"),
    ("builtins", "bytearray"),
    ("_codecs", "encode"),  # bytes in protocol <= 2 pickles written by Python 3
})

# What a corrupt or foreign file makes the unpicklers raise.
_UNREADABLE = (
    pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
    AttributeError, OverflowError, RuntimeError, MemoryError, struct.error, zipfile.BadZipFile,
)


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays, numbers, strings and containers; refuses every other global."""

    def __init__(self, file, filename):
        super().__init__(file, encoding="latin1")
        self.filename = filename

    def find_class(self, module, name):
        key = _compat_pickle.NAME_MAPPING.get(
            (module, name), (_compat_pickle.IMPORT_MAPPING.get(module, module), name)
        )
        if key not in _PICKLE_GLOBALS:
            raise CheckpointError(
                f"{self.filename}: refused to load: the pickle asks for the Python object "
                f"'{module}.{name}', and a checkpoint may contain only numpy arrays, numbers, "
                "strings and containers. Nothing was executed. Load only checkpoints from a "
                "source you trust; re-save a trusted one as {'model': {name: array}}."
            )
        return super().find_class(module, name)


def _torch_refusal(filename, error):
    match = re.search(r"GLOBAL ([\w.]+)", str(error))
    what = f"the Python object '{match.group(1)}'" if match else "objects other than tensors"
    return CheckpointError(
        f"{filename}: refused to load: the file asks for {what}, which a checkpoint never "
        "needs (torch.load(weights_only=True) admits tensors, numbers, strings and containers). "
        "Nothing was executed. Load only checkpoints from a source you trust."
    )


def _unreadable(filename, error):
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return CheckpointError(
        f"{filename} is not a readable checkpoint (truncated, corrupt, or not a PyTorch / "
        f"Detectron2 file): {detail[:200]}. Check the file, or download it again."
    )


def _read_objects(filename):
    """The object in ``filename``: a PyTorch file through ``torch.load(weights_only=True)``,
    any other pickle through :class:`_ArrayUnpickler`."""
    if os.path.getsize(filename) == 0:
        raise CheckpointError(f"{filename} is empty: download or copy the checkpoint again.")
    if zipfile.is_zipfile(filename):
        kind = "torch"
    else:
        try:
            with open(filename, "rb") as f:
                first = _ArrayUnpickler(f, filename).load()
        except _UNREADABLE as e:
            raise _unreadable(filename, e) from e
        if not (isinstance(first, int) and first == torch.serialization.MAGIC_NUMBER):
            return first, "pickle"
        kind = "torch"  # PyTorch's legacy (non-zip) format starts with this magic number
    try:
        return torch.load(filename, map_location="cpu", weights_only=True), kind
    except pickle.UnpicklingError as e:
        if "GLOBAL" in str(e) or "global" in str(e):
            raise _torch_refusal(filename, e) from e
        raise _unreadable(filename, e) from e
    except _UNREADABLE as e:
        raise _unreadable(filename, e) from e


def _is_weight(value):
    return isinstance(value, torch.Tensor) or (
        isinstance(value, np.ndarray) and value.dtype.kind in "biuf"
    )


def _looks_like_state(obj):
    return (
        isinstance(obj, Mapping) and len(obj) > 0
        and all(isinstance(k, str) and _is_weight(v) for k, v in obj.items())
    )


def _to_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    array = np.asarray(value, dtype=value.dtype.newbyteorder("="))
    if not array.flags.writeable:
        array = array.copy()
    return torch.from_numpy(array)


def read_checkpoint(filename):
    """Read a checkpoint file without executing anything in it.

    Returns:
        (dict, str): the checkpoint -- ``{"model": {name: tensor}, ...}`` plus the file's other
        entries, and ``"matching_heuristics": True`` for Caffe2 names -- and its format:
        ``"detectron2 model-zoo pkl"``, ``"caffe2 pkl"``, ``"detectron2 pth"`` or
        ``"state dict"``.
    """
    obj, kind = _read_objects(filename)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{filename} is not a model checkpoint: it holds a {type(obj).__name__}, not a dict "
            "of weights."
        )
    if "model" in obj:
        checkpoint, state = dict(obj), obj["model"]
        fmt = "detectron2 model-zoo pkl" if kind == "pickle" else "detectron2 pth"
    elif kind == "pickle" and (
        "blobs" in obj or (obj and not any("." in str(k) for k in obj))
    ):
        # Caffe2 / Detectron1 names ("res2_0_branch2a_w"): detectron2 renames them by heuristics.
        state = obj.get("blobs", obj)
        state = {k: v for k, v in state.items() if not str(k).endswith("_momentum")}
        checkpoint = {"model": state, "matching_heuristics": True, "__author__": "Caffe2"}
        fmt = "caffe2 pkl"
    else:
        checkpoint, state = {"model": obj}, obj
        fmt = "state dict"
    if not _looks_like_state(state):
        if not isinstance(state, Mapping) or not state:
            what = "an empty 'model' entry" if isinstance(state, Mapping) else (
                f"a 'model' entry of type {type(state).__name__}"
            )
        else:
            bad = next(k for k, v in state.items() if not (isinstance(k, str) and _is_weight(v)))
            what = f"the entry {bad!r}, a {type(state[bad]).__name__}, which is no weight tensor"
        keys = ", ".join(map(str, list(obj)[:8]))
        raise CheckpointError(
            f"{filename} is not a model checkpoint: it has {what} (top-level keys: {keys}). "
            "Expected {'model': {name: tensor or array}} or a state dict."
        )
    checkpoint["model"] = collections.OrderedDict((k, _to_tensor(v)) for k, v in state.items())
    if hasattr(state, "_metadata"):
        checkpoint["model"]._metadata = state._metadata
    return checkpoint, fmt


def _sha256(filename):
    digest = hashlib.sha256()
    with open(filename, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_url(path):
    if path.startswith(Detectron2Handler.PREFIX):
        return Detectron2Handler.S3_DETECTRON2_PREFIX + path[len(Detectron2Handler.PREFIX):]
    return path


def fresh_tensors(report):
    """Model tensors that a load left (partly) at their fresh initialisation."""
    keys = [e["key"] for e in report.get("reinitialized", [])]
    keys += [e["key"] for e in report.get("transplanted", []) if e["fresh_rows"]]
    return keys


# ----------------------------------------------------------------------------------------------


_PARTIAL_SUFFIX = ".tmp"


def atomic_write(path, write):
    """Write ``path`` through ``write(file)`` (a binary file) into ``path.tmp``, flush it to
    disk, then rename: a crash leaves the earlier ``path`` or the new one, never half of it."""
    partial = path + _PARTIAL_SUFFIX
    with open(partial, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(partial, path)
    folder = os.open(os.path.dirname(path) or ".", os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class FinetuneCheckpointer(DetectionCheckpointer):
    """A DetectionCheckpointer for fine-tuning: strict, class-aware, recorded and safe.

    ``load(path)`` loads every tensor of the checkpoint into the model. Only the
    class-dependent layers may differ in shape: those of :func:`class_layers`, and any other
    tensor outside the backbone whose first dimension is u * (K + b) in the model and
    u * (K_checkpoint + b) in the checkpoint (b in {0, 1}, the other dimensions equal; these
    are re-initialised, as their row layout is unknown). Any other shape mismatch, missing or
    unexpected tensor is an error listing them, raised before the model is changed; with
    ``strict=False`` it is logged and the tensors that fit are loaded.

    With a ``class_map`` (see :func:`match_classes`), each target class matched to a source
    class gets that class's rows of the class-dependent layers (``cls_score`` row, its box_dim
    ``bbox_pred`` rows, its mask channel) and the background row is carried over; unmatched
    classes keep their fresh initialisation. A class-agnostic layer of the checkpoint gives
    its rows to every matched class; a class-agnostic layer of the model loads only from a
    class-agnostic one. Source class names come from the checkpoint's ``thing_classes`` entry,
    else are COCO's 80 names when the head has 80 classes. With ``class_map=None`` a
    class-dependent layer loads as-is when its shape fits and is re-initialised otherwise.

    Each load returns a report (format, sha256, class map, and the tensors loaded, transplanted
    with their row mapping, re-initialised and ignored, with shapes), logs it as a table and
    saves it as ``transfer.json`` in ``save_dir`` (``transfer_resume.json`` when resuming, which
    keeps the record of how the run started). Resuming must load everything as saved.
    Checkpoints saved by this checkpointer carry ``target_classes`` as ``thing_classes``.
    """

    def __init__(self, model, save_dir="", *, target_classes=None, class_map="auto",
                 strict=True, record_name="transfer.json", **checkpointables):
        super().__init__(model, save_dir, **checkpointables)
        self.record_name = record_name
        self.target_classes = list(target_classes) if target_classes is not None else None
        self.class_map = _check_class_map(class_map)
        self.strict = strict
        self.report = None
        self._resuming = False
        self._source = None
        self._file_info = None

    # -- saving ---------------------------------------------------------------------------------

    def save(self, name, *, tag_last=True, **kwargs):
        """Save as detectron2 does, plus the class names (so a later load knows them), and
        atomically: the file is written under a temporary name and renamed when complete, and
        only then named in ``last_checkpoint`` (unless ``tag_last=False``). A crash mid-write
        leaves the previous checkpoints and ``last_checkpoint`` as they were.

        In a multi-process run every process calls it (checkpointables may gather the state of
        each process, e.g. their random generators); only the main process writes.
        """
        if not self.save_dir:
            return
        states = {key: obj.state_dict() for key, obj in self.checkpointables.items()}
        if not self.save_to_disk:
            return
        if self.target_classes is not None:
            kwargs.setdefault(CLASS_NAMES_KEY, list(self.target_classes))
        data = {"model": self.model.state_dict(), **states}
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f))
        if tag_last:
            self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        atomic_write(os.path.join(self.save_dir, "last_checkpoint"),
                      lambda f: f.write(last_filename_basename.encode()))

    def remove_partial_files(self):
        """Delete what an interrupted save left behind (``*.pth.tmp``)."""
        if self.save_dir and os.path.isdir(self.save_dir):
            for name in os.listdir(self.save_dir):
                if name.endswith(_PARTIAL_SUFFIX):
                    os.remove(os.path.join(self.save_dir, name))

    # -- loading --------------------------------------------------------------------------------

    def resume_or_load(self, path, *, resume=True):
        """detectron2's resume_or_load; a resume must find the checkpoint to fit exactly."""
        self._resuming = bool(resume and self.has_checkpoint())
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._resuming = False

    def load(self, path, checkpointables=None):
        """Load ``path`` (a file, or a ``detectron2://`` / ``https://`` URL) into the model and
        the named checkpointables (all when None).

        Returns:
            dict: the transfer report; ``{}`` when ``path`` is empty (nothing loaded).
        """
        if not path:
            logger.info("No checkpoint given: the model keeps its initialisation.")
            return {}
        local = self._local_file(path)
        self._source = path
        self.report = None
        try:
            # fvcore's load: the URL is already resolved, which DetectionCheckpointer.load redoes.
            Checkpointer.load(self, local, checkpointables)
        finally:
            self._source = None
        return self.report

    def _local_file(self, path):
        if os.path.isfile(path):
            return path
        if "://" not in path:
            raise CheckpointError(
                f"Checkpoint not found: {path}. Set train.init_checkpoint to an existing file or "
                "to a detectron2:// or https:// URL."
            )
        url = _download_url(path)
        try:
            return self.path_manager.get_local_path(path)
        except OSError as e:
            name = os.path.basename(urlparse(url).path) or "checkpoint.pkl"
            raise CheckpointError(
                f"Cannot download {url} ({getattr(e, 'reason', e)}). Without internet access, "
                "download it on a machine that has it, copy it here and set "
                f"train.init_checkpoint=/path/to/{name}."
            ) from e

    def _load_file(self, filename):
        checkpoint, fmt = read_checkpoint(filename)
        self._file_info = {
            "local_path": os.path.abspath(filename),
            "sha256": _sha256(filename),
            "format": fmt,
            "author": checkpoint.get("__author__"),
        }
        return checkpoint

    def _load_model(self, checkpoint):
        state = checkpoint.pop("model")
        _strip_prefix_if_present(state, "module.")
        if checkpoint.pop("matching_heuristics", False):
            state = align_and_update_state_dicts(
                self.model.state_dict(), state,
                c2_conversion=checkpoint.get("__author__") == "Caffe2",
            )
        names = checkpoint.pop(CLASS_NAMES_KEY, None)
        plan = self._plan(state, names)
        self._check(plan)
        self._apply(plan, state)
        self.report = self._make_report(plan)
        self._record(self.report)
        return _IncompatibleKeys(missing_keys=[], unexpected_keys=[], incorrect_shapes=[])

    # -- planning: decide every tensor's fate from shapes and names, touching nothing ------------

    def _source_classes(self, state, names, layers):
        filename = self._file_info["local_path"]
        k_src = _source_num_classes(state, layers)
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

    def _mapping(self, target, source, k_tgt, k_src):
        """Source class index for each target class (None: fresh), and a note."""
        if self.class_map is None:
            return None, "class transplant disabled (class_map=None)"
        if k_tgt is None:
            return None, "the model has no class-dependent layers"
        if target is not None and source is not None:
            return match_classes(target, source, self.class_map), "by name"
        if isinstance(self.class_map, dict):
            missing = "the model's classes" if target is None else "the checkpoint's classes"
            raise ConfigError(
                f"train.class_map={self.class_map} names classes, but {missing} are unknown "
                "(the checkpoint has no thing_classes and its head is not COCO's 80 classes, "
                "or no training dataset gives the model's). Use train.class_map=auto or None."
            )
        unknown = (
            "the model's class names are unknown" if target is None
            else "the checkpoint names no classes and its head is not COCO's"
        )
        if k_src == k_tgt:
            return list(range(k_tgt)), unknown + "; same number of classes: loaded as saved"
        return [None] * k_tgt, unknown + ": no class matched"

    def _plan(self, state, names):
        model_state = self.model.state_dict()
        layers = class_layers(self.model)
        k_tgt = model_num_classes(self.model) if layers else None
        target = self.target_classes
        if target is not None and k_tgt is not None and len(target) != k_tgt:
            key = "model.num_classes"
            if hasattr(self.model, "roi_heads"):
                key = "model.roi_heads.num_classes"
            raise ConfigError(
                f"The training data has {len(target)} classes {target} but the model predicts "
                f"{k_tgt}: set {key}={len(target)}."
            )
        if k_tgt is None and target is not None:
            k_tgt = len(target)
        source, source_from, k_src = self._source_classes(state, names, layers)
        mapping, note = self._mapping(target, source, k_tgt, k_src)

        plan = {
            "k_tgt": k_tgt, "k_src": k_src, "source_classes": source,
            "source_classes_from": source_from, "mapping": mapping, "mapping_note": note,
            "loaded": [], "transplanted": [], "reinitialized": [], "ignored": [], "from_config": [],
            "problems": {"shape": [], "missing": [], "unexpected": []},
            "normalisation": [],  # (buffer name, checkpoint's values, config's values)
        }
        for key, target_tensor in model_state.items():
            shape = tuple(target_tensor.shape)
            layer = _layer_of(key, layers)
            if key not in state:
                if key.rsplit(".", 1)[-1] in _CONFIG_BUFFERS:
                    plan["from_config"].append({"key": key, "shape": list(shape)})
                    continue
                if layer is None:
                    plan["problems"]["missing"].append((key, shape))
                plan["reinitialized"].append(
                    {"key": key, "source_shape": None, "shape": list(shape),
                     "reason": "not in the checkpoint"}
                )
                continue
            src_shape = tuple(state[key].shape)
            if layer is not None:
                self._plan_class_layer(plan, key, layer, src_shape, shape)
            elif src_shape == shape:
                plan["loaded"].append({"key": key, "shape": list(shape)})
            elif _generic_class_dependent(key, src_shape, shape, k_src, k_tgt):
                plan["reinitialized"].append(
                    {"key": key, "source_shape": list(src_shape), "shape": list(shape),
                     "reason": "class-dependent by shape; row layout unknown"}
                )
            else:
                plan["problems"]["shape"].append((key, src_shape, shape))
        for key, tensor in state.items():
            if key in model_state:
                continue
            config_value = self._config_buffer(key)
            if "anchor_generator.cell_anchors" in key:
                reason = "obsolete anchor buffer (recomputed from the config)"
            elif config_value is not None:
                # Input normalisation, saved by detectron2 versions that kept it in the weights
                # (and by converters); the model takes it from the config.
                saved = [round(float(v), 4) for v in tensor.flatten()]
                config = [round(float(v), 4) for v in config_value.flatten()]
                name = key.rsplit(".", 1)[-1]
                if len(saved) == len(config) and all(
                    abs(a - b) <= 1e-3 * max(1.0, abs(b)) for a, b in zip(saved, config)
                ):
                    reason = f"the same as the config's model.{name}"
                else:
                    reason = f"differs from the config's model.{name}={config}"
                    plan["normalisation"].append((name, saved, config))
            else:
                reason = "not in the model"
                plan["problems"]["unexpected"].append((key, tuple(tensor.shape)))
            plan["ignored"].append(
                {"key": key, "source_shape": list(tensor.shape), "reason": reason}
            )
        return plan

    def _config_buffer(self, key):
        """The model's value of an input-normalisation buffer named ``key`` (not saved with its
        weights: detectron2 sets it from the config), or None for any other key."""
        if key.rsplit(".", 1)[-1] not in _CONFIG_BUFFERS:
            return None
        try:
            return self.model.get_buffer(key)
        except AttributeError:
            return None

    def _plan_class_layer(self, plan, key, layer, src_shape, shape):
        k_tgt, k_src, mapping = plan["k_tgt"], plan["k_src"], plan["mapping"]
        entry = {"key": key, "source_shape": list(src_shape), "shape": list(shape)}
        if src_shape[1:] != shape[1:] or k_src is None:
            if src_shape == shape:
                plan["loaded"].append({"key": key, "shape": list(shape)})
            else:
                plan["problems"]["shape"].append((key, src_shape, shape))
            return
        rows = src_shape[0] if src_shape else 0
        src_agnostic = rows == layer.unit and layer.num_rows(k_src) != layer.unit
        if not src_agnostic and rows != layer.num_rows(k_src):
            plan["problems"]["shape"].append((key, src_shape, shape))
            return
        if mapping is None or layer.agnostic:
            if src_shape == shape and (mapping is None or src_agnostic):
                plan["loaded"].append({"key": key, "shape": list(shape)})
            else:
                reason = (
                    "the model's layer is class-agnostic, the checkpoint's is not"
                    if layer.agnostic else "class transplant disabled"
                )
                plan["reinitialized"].append(dict(entry, reason=reason))
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
            plan["loaded"].append({"key": key, "shape": list(shape)})
            return
        if not pairs:
            plan["reinitialized"].append(dict(entry, reason="no class of the model matched"))
            return
        covered = {t for t, _ in pairs}
        entry.update(
            rows=[list(p) for p in sorted(pairs)],
            fresh_rows=[r for r in range(shape[0]) if r not in covered],
        )
        plan["transplanted"].append(entry)

    def _check(self, plan):
        """Raise, before the model is touched, when the checkpoint does not fit (see the class
        docstring); a resume must fit exactly."""
        source = self._file_info["local_path"]
        self._check_normalisation(source, plan["normalisation"])
        problems = _describe_problems(plan["problems"])
        if self._resuming:
            unfit = fresh_tensors(plan) + [e["key"] for e in plan["transplanted"]]
            if problems or unfit:
                detail = problems or "class-dependent layers differ: " + ", ".join(unfit)
                raise CheckpointError(
                    f"Cannot resume from {source}: it does not fit the model ({detail}). "
                    "Resuming needs a checkpoint written by this same config; to start from it "
                    f"instead, drop --resume and set train.init_checkpoint={source}."
                )
        if not problems:
            return
        log = logger.error if self.strict else logger.warning
        for name, items in plan["problems"].items():
            for item in items:
                log(f"Checkpoint {source}: {_PROBLEM_TITLES[name]}: {_describe_item(name, item)}")
        message = (
            f"{source} does not fit the model outside its class-dependent layers: {problems}. "
            "The checkpoint was most likely trained with another architecture (e.g. another "
            "ResNet depth or FPN width) than the config describes: use the config that matches "
            "it, or set train.strict_transfer=False to load the tensors that fit and start the "
            "others from scratch (all are listed in transfer.json)."
        )
        if self.strict:
            raise CheckpointError(message)
        log(message)

    def _check_normalisation(self, source, differences):
        """The checkpoint's saved pixel_mean/pixel_std must be the config's: a model fed inputs
        normalised otherwise than in its training starts from features it never saw, and
        nothing else fails. An error when ``strict``, else a warning (the config's values are
        kept)."""
        if not differences:
            return
        def overrides(index):
            return [f"model.{d[0]}=[{','.join(f'{v:g}' for v in d[index])}]" for d in differences]

        message = (
            f"{source} was trained on inputs normalised with {' '.join(overrides(1))}, but the "
            f"config has {' '.join(overrides(2))}: the model would see inputs normalised otherwise "
            f"than in its training. Set {' and '.join(overrides(1))} (with the model.input_format "
            "the weights were trained with), or set train.strict_transfer=False to keep the "
            "config's values."
        )
        if self.strict:
            raise CheckpointError(message)
        logger.warning(message)

    # -- applying -------------------------------------------------------------------------------

    def _apply(self, plan, state):
        model_state = self.model.state_dict()
        keep = {e["key"] for e in plan["loaded"]}
        for entry in plan["transplanted"]:
            key = entry["key"]
            rows = torch.tensor(entry["rows"], dtype=torch.long)
            value = model_state[key].detach().clone()
            value[rows[:, 0]] = state[key][rows[:, 1]].to(dtype=value.dtype)
            state[key] = value
            keep.add(key)
        for key in list(state):
            if key not in keep:
                del state[key]
        incompatible = self.model.load_state_dict(state, strict=False)
        assert not incompatible.unexpected_keys, incompatible.unexpected_keys

    # -- recording ------------------------------------------------------------------------------

    def _make_report(self, plan):
        target = self.target_classes or [f"class {i}" for i in range(plan["k_tgt"] or 0)]
        source = plan["source_classes"]
        mapping = plan["mapping"]
        class_map = {}
        if mapping is not None:
            for name, s in zip(target, mapping):
                if s is None:
                    class_map[name] = None
                else:
                    class_map[name] = source[s] if source is not None else f"class {s}"
        return {
            "source": self._source,
            **self._file_info,
            "resumed": self._resuming,
            "strict": self.strict,
            "class_map_setting": self.class_map,
            "target_classes": self.target_classes,
            "source_classes": source,
            "source_classes_from": plan["source_classes_from"],
            "class_map": class_map,
            "class_map_note": plan["mapping_note"],
            "loaded": plan["loaded"],
            "transplanted": plan["transplanted"],
            "reinitialized": plan["reinitialized"],
            "ignored": plan["ignored"],
            "from_config": plan["from_config"],
        }

    def _record(self, report):
        logger.info(_report_table(report))
        if not (self.save_dir and self.save_to_disk):
            return
        name = "transfer_resume.json" if report["resumed"] else self.record_name
        self.path_manager.mkdirs(self.save_dir)
        path = os.path.join(self.save_dir, name)
        atomic_write(path, lambda f: f.write(json.dumps(report, indent=1).encode()))
        logger.info(f"Transfer record written to {path}")


_PROBLEM_TITLES = {"shape": "shape differs", "missing": "missing from the checkpoint",
                   "unexpected": "not in the model"}


def _describe_item(name, item):
    if name == "shape":
        key, source, target = item
        return f"{key} (checkpoint {tuple(source)}, model {tuple(target)})"
    return item[0]


def _describe_problems(problems, limit=6):
    parts = []
    for name, items in problems.items():
        if not items:
            continue
        shown = [_describe_item(name, item) for item in items[:limit]]
        more = f" and {len(items) - limit} more (all in the log)" if len(items) > limit else ""
        parts.append(f"{_PROBLEM_TITLES[name]} ({len(items)}): " + ", ".join(shown) + more)
    return "; ".join(parts)


def _report_table(report):
    rows = []
    for e in report["transplanted"]:
        rows.append((e["key"], tuple(e["source_shape"]), tuple(e["shape"]),
                     f"transplanted {len(e['rows'])} rows, {len(e['fresh_rows'])} fresh"))
    for e in report["reinitialized"]:
        source = tuple(e["source_shape"]) if e["source_shape"] is not None else "-"
        rows.append((e["key"], source, tuple(e["shape"]), "re-initialised: " + e["reason"]))
    for e in report["ignored"]:
        rows.append((e["key"], tuple(e["source_shape"]), "-", "ignored: " + e["reason"]))
    rows.append((f"{len(report['loaded'])} other tensors", "", "", "loaded as saved"))
    table = tabulate(rows, headers=["tensor", "checkpoint", "model", "action"], tablefmt="pipe")
    text = (
        f"Loaded {report['source']} ({report['format']}, sha256 {report['sha256'][:12]}…)"
        f"{' to resume' if report['resumed'] else ''}\n{table}"
    )
    if report["class_map"]:
        pairs = [(t, s if s is not None else "(fresh)") for t, s in report["class_map"].items()]
        origin = report["source_classes_from"] or "unknown"
        text += "\n" + tabulate(
            pairs, headers=["class", f"starts from (classes: {origin})"], tablefmt="pipe"
        )
    return text
