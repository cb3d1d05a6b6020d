"""Reading a torchvision or MMDetection checkpoint file safely, and writing the converted
weights in Detectron2's model-zoo format.

The written ``.pkl`` is ``{"model": {name: numpy array}, "__author__": ..., "thing_classes":
[...], "converted_from": info}``: Detectron2's ``DetectionCheckpointer`` loads it as any
model-zoo file (it ignores the extra entries), and ``FinetuneCheckpointer`` reads the class
names for its class-aware transfer; ``converted_from`` (the conversion's ``info`` plus the
source file's name and sha256) holds only strings, numbers, lists and dicts.
"""
import hashlib
import os
import pickle
import zipfile

import torch

from ..errors import CheckpointError
from . import CONVERTED_FROM_KEY, convert

__all__ = ["convert_file", "read_source", "sha256_of", "summary", "write_model_zoo_pkl"]


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_source(path):
    """The object in a PyTorch checkpoint file, read with ``torch.load(weights_only=True)``:
    tensors, numbers, strings and containers only; nothing in the file is executed."""
    if not os.path.isfile(path):
        raise CheckpointError(f"Checkpoint not found: {path}.")
    if not zipfile.is_zipfile(path) and not _legacy_torch_file(path):
        raise CheckpointError(
            f"{path} is not a PyTorch checkpoint but a plain pickle: a Detectron2 model-zoo "
            ".pkl needs no conversion (set train.init_checkpoint to it)."
        )
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        if "GLOBAL" in str(e) or "global" in str(e):
            raise CheckpointError(
                f"{path}: refused to load: it asks for Python objects other than tensors, "
                f"numbers, strings and containers ({detail}). Nothing was executed. Training "
                "checkpoints may hold optimizer or logging objects: keep only 'meta' and "
                "'state_dict' (MMDetection's tools/model_converters/publish_model.py does) "
                "or save model.state_dict() alone."
            ) from e
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint: {detail}.") from e
    except (RuntimeError, EOFError, ValueError, OSError) as e:
        detail = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} is not a readable PyTorch checkpoint (truncated, corrupt, or a "
            f"Detectron2 .pkl, which needs no conversion): {detail}."
        ) from e


class _NothingUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"global {module}.{name}")


def _legacy_torch_file(path):
    """Whether ``path`` is in PyTorch's pre-1.6 format: a pickled magic number comes first."""
    try:
        with open(path, "rb") as f:
            return _NothingUnpickler(f).load() == torch.serialization.MAGIC_NUMBER
    except Exception:  # anything else: not that format
        return False


def write_model_zoo_pkl(path, state, info):
    """Write ``state`` (Detectron2 names) and ``info`` as a model-zoo ``.pkl`` (see the module
    docstring), through a temporary file renamed when complete."""
    checkpoint = {
        "model": {k: v.detach().cpu().contiguous().numpy() for k, v in state.items()},
        "__author__": f"d2_finetune convert_checkpoint ({info['format']})",
        CONVERTED_FROM_KEY: info,
    }
    if info.get("thing_classes") is not None:
        checkpoint["thing_classes"] = list(info["thing_classes"])
    partial = path + ".tmp"
    with open(partial, "wb") as f:
        pickle.dump(checkpoint, f, protocol=4)
    os.replace(partial, path)
    return checkpoint


def convert_file(src, dst):
    """Convert the checkpoint file ``src`` and write ``dst`` (a ``.pkl``); returns ``info``
    with the source file's name and sha256 added."""
    if not dst.endswith(".pkl"):
        raise CheckpointError(f"{dst}: the output is Detectron2's model-zoo format; name it .pkl.")
    obj = read_source(src)
    state, info = convert(obj, source=src)
    if info["source"] == "detectron2":
        raise CheckpointError(f"{src} is already a Detectron2 checkpoint: nothing to convert.")
    info = dict(info, file=os.path.basename(src), sha256=sha256_of(src))
    write_model_zoo_pkl(dst, state, info)
    return info


def summary(info, dst):
    """What :func:`convert_file` did and the config the weights need, as printed text."""
    lines = [f"Converted {info['file']} ({info['format']}, sha256 {info['sha256'][:12]}…) "
             f"to {dst}",
             f"Class rows: {info['class_rows']}"]
    for layer, rows in info["dropped_rows"].items():
        lines.append(f"  dropped from {layer}: {', '.join(rows)}")
    if info["thing_classes"] is None:
        lines.append("Class names: unknown (the checkpoint names none)")
    lines.append(f"Use {info['config']}, or these overrides on configs/cityscapes_ft.py:")
    lines += [f"  {delta}" for delta in info["config_deltas"]] or ["  (none)"]
    lines += [f"Note: {note}" for note in info["notes"]]
    return "\n".join(lines)
