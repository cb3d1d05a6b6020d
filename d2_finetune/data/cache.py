"""On-disk cache of parsed dataset records (Detectron2 dataset dicts with RLE masks).

A cache file holds one split's records and the fingerprint of the files they were parsed from
(paths, sizes and modification times, plus the parser's settings and :data:`FORMAT_VERSION`).
It is used only while the fingerprint still matches; otherwise the records are parsed again and
the file is replaced atomically.

Format: an ``.npz`` of plain numeric and string arrays, read with ``allow_pickle=False``. A
cache may sit in a shared dataset folder, so its format must not be able to run code when
loaded (as a pickle could): a tampered or corrupt file can at worst give wrong records or be
rebuilt, never execute anything.

Concurrency: the process that finds the cache stale takes a file lock next to it, parses and
writes; every other process on the machine (DDP ranks, launch workers) blocks on the same lock
and then reads the fresh file. Readers that find a valid cache take no lock.
"""

import contextlib
import gc
import hashlib
import json
import logging
import os
import zipfile

import numpy as np
from filelock import FileLock

from detectron2.structures import BoxMode

from ..fileio import atomic_write

__all__ = [
    "FORMAT_VERSION",
    "ENV_CACHE_DIR",
    "CACHE_FOLDER",
    "fingerprint",
    "find_cache_dir",
    "save_records",
    "load_records",
    "load_or_build",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
ENV_CACHE_DIR = "D2FT_CACHE_DIR"
CACHE_FOLDER = "d2_finetune_cache"


def fingerprint(paths, base, **settings):
    """Hash of the files' paths (relative to ``base``), sizes and mtimes, and ``settings``.

    Raises ``FileNotFoundError`` for a path that does not exist.
    """
    digest = hashlib.sha256()
    digest.update(json.dumps([FORMAT_VERSION, settings], sort_keys=True).encode())
    prefix = os.path.join(base, "")
    for path in paths:
        st = os.stat(path)
        rel = path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, base)
        digest.update(f"\n{rel}\t{st.st_size}\t{st.st_mtime_ns}".encode())
    return digest.hexdigest()


def _usable_dir(path):
    try:
        os.makedirs(path, exist_ok=True)
    except OSError:
        return False
    return os.path.isdir(path) and os.access(path, os.W_OK | os.X_OK)


def _user_cache_root():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "d2_finetune")


def find_cache_dir(dataset_dir, cache_dir=None):
    """Where a dataset's cache files go, or None when no candidate folder is writable.

    In order: ``cache_dir`` or ``$D2FT_CACHE_DIR`` if given; else
    ``<dataset_dir>/d2_finetune_cache`` next to the data (shared by everyone using that copy);
    else the user's cache folder (``$XDG_CACHE_HOME`` or ``~/.cache``, then ``d2_finetune``).
    Outside the dataset folder each dataset gets its own subfolder, named after its absolute
    path.
    """
    dataset_dir = os.path.abspath(dataset_dir)
    tag = os.path.basename(dataset_dir) + "-" + hashlib.sha1(dataset_dir.encode()).hexdigest()[:12]
    explicit = cache_dir or os.environ.get(ENV_CACHE_DIR)
    if explicit:
        candidates = [os.path.join(explicit, tag)]
    else:
        candidates = [
            os.path.join(dataset_dir, CACHE_FOLDER),
            os.path.join(_user_cache_root(), tag),
        ]
    for candidate in candidates:
        if _usable_dir(candidate):
            return candidate
    return None


def _blob(strings):
    """Concatenate strings into one uint8 array and their start offsets."""
    encoded = [s.encode() for s in strings]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(b) for b in encoded], out=offsets[1:])
    return np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets


def _unblob(data, offsets):
    raw = data.tobytes()
    bounds = offsets.tolist()
    return [raw[a:b].decode() for a, b in zip(bounds[:-1], bounds[1:])]


@contextlib.contextmanager
def _gc_paused():
    """Pause the cyclic garbage collector: building ~10^5 small dicts otherwise triggers a
    rescan of the growing structure at every allocation threshold, which takes ~90% of the
    time. The objects built hold no reference cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def save_records(path, key, records, image_dir, meta=None):
    """Write ``records`` under ``key`` to ``path`` (atomically: readers see old or new file).

    Every record's ``file_name`` must lie under ``image_dir`` and every annotation must have
    ``iscrowd``, ``category_id``, an XYXY_ABS ``bbox`` and an RLE ``segmentation`` whose size is
    the image's.
    """
    anns = [a for r in records for a in r["annotations"]]
    starts = np.zeros(len(records) + 1, dtype=np.int64)
    np.cumsum([len(r["annotations"]) for r in records], out=starts[1:])
    names, name_offsets = _blob(os.path.relpath(r["file_name"], image_dir) for r in records)
    ids, id_offsets = _blob(str(r["image_id"]) for r in records)
    counts, count_offsets = _blob(a["segmentation"]["counts"] for a in anns)
    arrays = {
        "version": np.array(FORMAT_VERSION),
        "key": np.array(key),
        "meta": np.array(json.dumps(meta or {})),
        "file_name": names,
        "file_name_offsets": name_offsets,
        "image_id": ids,
        "image_id_offsets": id_offsets,
        "height": np.array([r["height"] for r in records], dtype=np.int32),
        "width": np.array([r["width"] for r in records], dtype=np.int32),
        "ann_start": starts,
        "category_id": np.array([a["category_id"] for a in anns], dtype=np.int32),
        "iscrowd": np.array([a["iscrowd"] for a in anns], dtype=np.uint8),
        "bbox": np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(-1, 4),
        "rle": counts,
        "rle_offsets": count_offsets,
    }
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_records(path, key, image_dir):
    """(records, meta) from the cache at ``path`` if it exists and was written under ``key``,
    else None. A cache that cannot be read counts as stale."""
    if not os.path.isfile(path):
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if int(data["version"]) != FORMAT_VERSION or str(data["key"]) != key:
                return None
            arrays = {name: data[name] for name in data.files}
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as e:
        logger.warning(
            f"Ignoring unreadable cache {path} ({type(e).__name__}: {e}); rebuilding it."
        )
        return None
    names = _unblob(arrays["file_name"], arrays["file_name_offsets"])
    ids = _unblob(arrays["image_id"], arrays["image_id_offsets"])
    counts = _unblob(arrays["rle"], arrays["rle_offsets"])
    starts = arrays["ann_start"].tolist()
    image_of = np.repeat(np.arange(len(names)), np.diff(starts)).tolist()
    heights, widths = arrays["height"].tolist(), arrays["width"].tolist()
    sizes = [[h, w] for h, w in zip(heights, widths)]
    xyxy = BoxMode.XYXY_ABS
    prefix = os.path.join(image_dir, "")
    with _gc_paused():
        annotations = [
            {
                "iscrowd": crowd,
                "category_id": category,
                "bbox": box,
                "bbox_mode": xyxy,
                "segmentation": {"size": sizes[i], "counts": rle},
            }
            for crowd, category, box, rle, i in zip(
                arrays["iscrowd"].tolist(),
                arrays["category_id"].tolist(),
                arrays["bbox"].tolist(),
                counts,
                image_of,
            )
        ]
        records = [
            {
                "file_name": prefix + name,
                "image_id": image_id,
                "height": h,
                "width": w,
                "annotations": annotations[a:b],
            }
            for name, image_id, h, w, a, b in zip(
                names, ids, heights, widths, starts[:-1], starts[1:]
            )
        ]
    return records, json.loads(str(arrays["meta"]))


def load_or_build(path, key, build, image_dir):
    """Records from the cache at ``path``, or from ``build()`` (then cached).

    ``build`` returns ``(records, meta)``; ``meta`` is a small json-able dict kept with them.
    Only one process at a time builds: the others wait on ``<path>.lock`` and read its result.
    ``path=None`` (no writable cache folder) just builds.

    Returns:
        (records, meta, built): ``built`` is True when this call ran ``build``.
    """
    if path is None:
        return (*build(), True)
    cached = load_records(path, key, image_dir)
    if cached is not None:
        return (*cached, False)
    with FileLock(path + ".lock"):
        cached = load_records(path, key, image_dir)
        if cached is not None:
            return (*cached, False)
        records, meta = build()
        save_records(path, key, records, image_dir, meta)
    logger.info(f"Cached {len(records)} records in {path}")
    return records, meta, True
