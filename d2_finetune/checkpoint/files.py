"""Reading checkpoint files without executing anything in them, from a path or a URL.

``.pth`` files load through ``torch.load(weights_only=True)``; other pickles (Detectron2's
model-zoo ``.pkl``) through an unpickler that admits only numpy arrays, numbers, strings and
containers. A refused or unreadable file is a :class:`CheckpointError` naming it.
"""

import _compat_pickle
import collections
import hashlib
import os
import pickle
import re
import struct
import zipfile
from collections.abc import Mapping
from urllib.parse import urlparse

import numpy as np
import torch

from detectron2.utils.file_io import Detectron2Handler

from ..errors import CheckpointError
from ..fileio import atomic_write
from .convert import CONVERTED_FROM_KEY, convert_if_foreign
from .plan import CLASS_NAMES_KEY

__all__ = [
    "local_checkpoint_file",
    "read_checkpoint",
    "read_object",
    "sha256",
    "write_model_zoo_pkl",
]


# (module, name) of everything a pickle of numpy arrays, numbers, strings and containers needs.
_PICKLE_GLOBALS = frozenset(
    {
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
    }
)

# What a corrupt or foreign file makes the unpicklers raise.
_UNREADABLE = (
    pickle.UnpicklingError,
    EOFError,
    ValueError,
    TypeError,
    KeyError,
    IndexError,
    AttributeError,
    OverflowError,
    RuntimeError,
    MemoryError,
    struct.error,
    zipfile.BadZipFile,
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
        "Nothing was executed. Load only checkpoints from a source you trust. A training "
        "checkpoint may hold optimizer or logging objects: keep only its weights (MMDetection's "
        "tools/model_converters/publish_model.py keeps 'meta' and 'state_dict'; in torchvision, "
        "save model.state_dict())."
    )


def _unreadable(filename, error):
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return CheckpointError(
        f"{filename} is not a readable checkpoint (truncated, corrupt, or not a PyTorch / "
        f"Detectron2 file): {detail[:200]}. Check the file, or download it again."
    )


def read_object(filename):
    """The object in ``filename`` and how it was stored (``"torch"`` or ``"pickle"``): a PyTorch
    file through ``torch.load(weights_only=True)``, any other pickle through
    :class:`_ArrayUnpickler`. Nothing in the file is executed."""
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
        isinstance(obj, Mapping)
        and len(obj) > 0
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
        ``"detectron2 model-zoo pkl"``, ``"caffe2 pkl"``, ``"detectron2 pth"``, ``"state dict"``,
        or, for torchvision and MMDetection checkpoints, converted to Detectron2's names and
        class rows (:mod:`.convert`), theirs (the conversion's record under
        ``"converted_from"``).
    """
    obj, kind = read_object(filename)
    if not isinstance(obj, Mapping):
        raise CheckpointError(
            f"{filename} is not a model checkpoint: it holds a {type(obj).__name__}, not a dict "
            "of weights."
        )
    converted = convert_if_foreign(obj, filename)
    if converted is not None:  # torchvision or MMDetection weights, in Detectron2's names
        state, info = converted
        checkpoint = {
            "model": state,
            CLASS_NAMES_KEY: info["thing_classes"],
            CONVERTED_FROM_KEY: info,
        }
        fmt = info["format"]
    elif "model" in obj:
        checkpoint, state = dict(obj), obj["model"]
        fmt = "detectron2 model-zoo pkl" if kind == "pickle" else "detectron2 pth"
    elif kind == "pickle" and ("blobs" in obj or (obj and not any("." in str(k) for k in obj))):
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
            what = (
                "an empty 'model' entry"
                if isinstance(state, Mapping)
                else (f"a 'model' entry of type {type(state).__name__}")
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


def sha256(filename):
    """The file's SHA-256, in hex."""
    digest = hashlib.sha256()
    with open(filename, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _download_url(path):
    if path.startswith(Detectron2Handler.PREFIX):
        return Detectron2Handler.S3_DETECTRON2_PREFIX + path[len(Detectron2Handler.PREFIX) :]
    return path


def local_checkpoint_file(path, path_manager):
    """A local file for ``path``: the file itself, or a ``detectron2://`` / ``https://`` URL
    downloaded (and cached) by ``path_manager``. Offline, the error says where to get it."""
    if os.path.isfile(path):
        return path
    if "://" not in path:
        raise CheckpointError(
            f"Checkpoint not found: {path}. Set train.init_checkpoint to an existing file or "
            "to a detectron2:// or https:// URL."
        )
    url = _download_url(path)
    try:
        return path_manager.get_local_path(path)
    except OSError as e:
        name = os.path.basename(urlparse(url).path) or "checkpoint.pkl"
        raise CheckpointError(
            f"Cannot download {url} ({getattr(e, 'reason', e)}). Without internet access, "
            "download it on a machine that has it, copy it here and set "
            f"train.init_checkpoint=/path/to/{name}."
        ) from e


def write_model_zoo_pkl(path, state, author, **entries):
    """Write ``state`` (``{name: tensor}``) in Detectron2's model-zoo format,
    ``{"model": {name: numpy array}, "__author__": author, **entries}``, atomically. Detectron2's
    own checkpointer loads it as any model-zoo file (it ignores extra entries such as
    ``thing_classes``)."""
    checkpoint = {
        "model": {k: v.detach().cpu().contiguous().numpy() for k, v in state.items()},
        "__author__": author,
        **entries,
    }
    atomic_write(path, lambda f: pickle.dump(checkpoint, f, protocol=4))
    return checkpoint
