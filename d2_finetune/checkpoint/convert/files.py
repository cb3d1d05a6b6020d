"""Converting a torchvision or MMDetection checkpoint file into Detectron2's model-zoo format
(``scripts/convert_checkpoint.py``).

The written ``.pkl`` is ``{"model": {name: numpy array}, "__author__": ..., "thing_classes":
[...], "converted_from": info}``: Detectron2's ``DetectionCheckpointer`` loads it as any
model-zoo file (it ignores the extra entries), and ``FinetuneCheckpointer`` reads the class
names for its class-aware transfer and checks the model against the recorded requirements;
``converted_from`` (the conversion's ``info`` plus the source file's name and sha256) holds only
strings, numbers, lists and dicts.
"""

import os

from ...errors import CheckpointError
from ..files import read_object, sha256, write_model_zoo_pkl
from . import CONVERTED_FROM_KEY, convert

__all__ = ["convert_file", "summary"]


def convert_file(src, dst):
    """Convert the checkpoint file ``src`` (read without executing anything in it) and write
    ``dst`` (a ``.pkl``); returns ``info`` with the source file's name and sha256 added."""
    if not dst.endswith(".pkl"):
        raise CheckpointError(f"{dst}: the output is Detectron2's model-zoo format; name it .pkl.")
    if not os.path.isfile(src):
        raise CheckpointError(f"Checkpoint not found: {src}.")
    obj, _ = read_object(src)
    state, info = convert(obj, source=src)
    if info["source"] == "detectron2":
        raise CheckpointError(
            f"{src} is already a Detectron2 checkpoint: nothing to convert (set "
            "train.init_checkpoint to it)."
        )
    info = dict(info, file=os.path.basename(src), sha256=sha256(src))
    entries = {CONVERTED_FROM_KEY: info}
    if info.get("thing_classes") is not None:
        entries["thing_classes"] = list(info["thing_classes"])
    write_model_zoo_pkl(dst, state, f"d2_finetune convert_checkpoint ({info['format']})", **entries)
    return info


def summary(info, dst):
    """What :func:`convert_file` did and the config the weights need, as printed text."""
    lines = [
        f"Converted {info['file']} ({info['format']}, sha256 {info['sha256'][:12]}…) to {dst}",
        f"Class rows: {info['class_rows']}",
    ]
    for layer, rows in info["dropped_rows"].items():
        lines.append(f"  dropped from {layer}: {', '.join(rows)}")
    if info["thing_classes"] is None:
        lines.append("Class names: unknown (the checkpoint names none)")
    lines.append(f"Use {info['config']}, or these overrides on configs/cityscapes_ft.py:")
    lines += [f"  {delta}" for delta in info["config_deltas"]] or ["  (none)"]
    lines += [f"Note: {note}" for note in info["notes"]]
    return "\n".join(lines)
