"""The Cityscapes annotation cache: hits, invalidation, location, safety, one parser per
machine."""

import json
import logging
import multiprocessing as mp
import os
import time

import numpy as np
import pytest

from d2_finetune.data import cache
from d2_finetune.data import cityscapes as cs
from d2_finetune.demo.synthetic import make_cityscapes


@pytest.fixture
def root(tmp_path, monkeypatch):
    monkeypatch.delenv(cache.ENV_CACHE_DIR, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "user_cache"))
    path = str(tmp_path / "data")
    make_cityscapes(path, {"train": 4}, size=(128, 64), seed=1)
    return path


def _dirs(root):
    return (
        os.path.join(root, "cityscapes", "leftImg8bit", "train"),
        os.path.join(root, "cityscapes", "gtFine", "train"),
    )


@pytest.fixture
def parsed(monkeypatch):
    """Annotation files parsed in this process, in order."""
    files = []
    parse = cs._parse_file

    def counting(item):
        files.append(item[1])
        return parse(item)

    monkeypatch.setattr(cs, "_parse_file", counting)
    return files


def _load(root, **kwargs):
    return cs.load_cityscapes_instances(*_dirs(root), num_workers=0, **kwargs)


def _cache_path(root):
    return os.path.join(root, "cityscapes", cache.CACHE_FOLDER, "instances_train_polygons.npz")


def test_second_load_reads_the_cache(root, parsed):
    first = _load(root)
    assert len(parsed) == 4 and os.path.isfile(_cache_path(root))
    second = _load(root)
    assert len(parsed) == 4
    assert second == first == _load(root, cache=False)
    assert sum(len(r["annotations"]) for r in first) > 10


def test_changed_annotation_rebuilds_the_cache(root, parsed):
    before = _load(root)
    json_file = cs.cityscapes_files(*_dirs(root))[0][1]
    with open(json_file) as f:
        data = json.load(f)
    data["objects"] = [o for o in data["objects"] if o["label"] in ("sky", "building", "road")]
    with open(json_file, "w") as f:
        json.dump(data, f)
    after = _load(root)
    assert len(parsed) == 8
    assert before[0]["annotations"] and after[0]["annotations"] == []
    assert after[1:] == before[1:]


def test_touched_annotation_rebuilds_the_cache(root, parsed):
    _load(root)
    json_file = cs.cityscapes_files(*_dirs(root))[2][1]
    st = os.stat(json_file)
    os.utime(json_file, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _load(root)
    assert len(parsed) == 8


def test_added_image_rebuilds_the_cache(root, parsed):
    assert len(_load(root)) == 4
    make_cityscapes(root, {"train": 5}, size=(128, 64), seed=1)
    assert len(_load(root)) == 5
    assert len(parsed) == 4 + 5


def test_fingerprint_follows_paths_sizes_mtimes_and_settings(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text("{}")
    b.write_text("{}")
    key = cache.fingerprint([str(a), str(b)], str(tmp_path), source="polygons")
    assert cache.fingerprint([str(a), str(b)], str(tmp_path), source="polygons") == key
    assert cache.fingerprint([str(a), str(b)], str(tmp_path), source="png") != key
    assert cache.fingerprint([str(a)], str(tmp_path), source="polygons") != key
    st = os.stat(a)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    touched = cache.fingerprint([str(a), str(b)], str(tmp_path), source="polygons")
    assert touched != key
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    a.write_text("{ }")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.fingerprint([str(a), str(b)], str(tmp_path), source="polygons") not in (
        key,
        touched,
    )


def test_unreadable_cache_is_rebuilt(root, parsed, caplog):
    records = _load(root)
    with open(_cache_path(root), "wb") as f:
        f.write(b"not a zip file")
    with caplog.at_level(logging.WARNING, logger="d2_finetune"):
        assert _load(root) == records
    assert len(parsed) == 8
    assert any("Ignoring unreadable cache" in r.getMessage() for r in caplog.records)


class _Payload:
    """Unpickling this creates the file ``marker``."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_cache_never_unpickles(root, parsed, tmp_path):
    records = _load(root)
    path = _cache_path(root)
    with np.load(path, allow_pickle=False) as data:
        arrays = {name: data[name] for name in data.files}
    assert all(a.dtype != object for a in arrays.values())
    marker = tmp_path / "executed"
    arrays["meta"] = np.array([_Payload(str(marker))], dtype=object)
    with open(path, "wb") as f:
        np.savez(f, **arrays)
    assert _load(root) == records
    assert not marker.exists()
    assert len(parsed) == 8


def test_cache_false_neither_reads_nor_writes(root, parsed):
    _load(root, cache=False)
    _load(root, cache=False)
    assert len(parsed) == 8
    assert not os.path.exists(os.path.dirname(_cache_path(root)))


def test_cache_goes_next_to_the_dataset_else_to_the_user_folder(root, tmp_path, parsed):
    _load(root)
    assert os.path.isfile(_cache_path(root))

    blocked = str(tmp_path / "blocked")
    make_cityscapes(blocked, {"train": 2}, size=(128, 64), seed=2)
    with open(os.path.join(blocked, "cityscapes", cache.CACHE_FOLDER), "w") as f:
        f.write("a file where the cache folder would go")
    dataset_dir = os.path.join(blocked, "cityscapes")
    folder = cache.find_cache_dir(dataset_dir)
    assert os.path.dirname(folder) == str(tmp_path / "user_cache" / "d2_finetune")
    assert os.path.basename(folder).startswith("cityscapes-")
    _load(blocked)
    assert os.listdir(folder) and any(f.endswith(".npz") for f in os.listdir(folder))
    assert cache.find_cache_dir(os.path.join(str(tmp_path), "other", "cityscapes")) != folder


def test_environment_cache_dir_wins(root, tmp_path, monkeypatch):
    monkeypatch.setenv(cache.ENV_CACHE_DIR, str(tmp_path / "shared"))
    _load(root)
    (folder,) = os.listdir(tmp_path / "shared")
    assert os.listdir(tmp_path / "shared" / folder)
    assert not os.path.exists(os.path.dirname(_cache_path(root)))


def test_no_writable_cache_folder_parses_with_a_warning(
    root, tmp_path, monkeypatch, parsed, caplog
):
    (tmp_path / "file").write_text("")
    monkeypatch.setenv(cache.ENV_CACHE_DIR, str(tmp_path / "file" / "cache"))
    with caplog.at_level(logging.WARNING, logger="d2_finetune"):
        assert len(_load(root)) == 4
        assert len(_load(root)) == 4
    assert len(parsed) == 8
    assert any("No writable cache folder" in r.getMessage() for r in caplog.records)


def _rank(root, start, log_file, results, rank):
    """One process of a simulated 2-process job: load the split, logging what it parses."""
    parse = cs._parse_file

    def logged(item):
        with open(log_file, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(0.05)  # keep the other process waiting long enough to race
        return parse(item)

    cs._parse_file = logged
    start.wait(30)
    records = cs.load_cityscapes_instances(*_dirs(root), num_workers=0)
    results.put((rank, os.getpid(), records))


def test_only_one_process_parses(root, tmp_path):
    ctx = mp.get_context("fork")
    start = ctx.Barrier(2)
    results = ctx.Queue()
    log_file = str(tmp_path / "parsed.log")
    procs = [
        ctx.Process(target=_rank, args=(root, start, log_file, results, rank)) for rank in range(2)
    ]
    for p in procs:
        p.start()
    got = sorted(results.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    with open(log_file) as f:
        parsers = f.read().split()
    assert len(parsers) == 4 and len(set(parsers)) == 1
    assert parsers[0] in {str(pid) for _, pid, _ in got}
    assert got[0][2] == got[1][2] == _load(root, cache=False)
