"""d2_finetune.checkpoint.files: reading checkpoint files without executing anything in them
(malicious pickles), unreadable or foreign files, a missing local file, a URL offline, and
pickles written by numpy 2."""

import os
import pickle
import socket
import urllib.error
import urllib.request

import numpy as np
import pytest
import torch
from checkpoint_support import CITY, build, coco_checkpoints
from torch import nn

from d2_finetune.checkpoint import FinetuneCheckpointer
from d2_finetune.errors import CheckpointError


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return coco_checkpoints(tmp_path_factory)


def _evil(kind, marker, weight):
    """A checkpoint whose unpickling would create ``marker``."""
    if kind == "system":
        call = (os.system, (f"touch {marker}",))
    else:
        call = (eval, (f"open({str(marker)!r}, 'w').close()",))

    class Payload:
        def __reduce__(self):
            return call

    return {"model": {"w": weight}, "__author__": Payload()}


@pytest.mark.parametrize(
    "kind,ext,refused",
    [
        ("system", "pkl", "posix.system"),
        ("eval", "pkl", "builtins.eval"),
        ("system", "pth", "posix.system"),
        ("eval", "pth", "eval"),  # as torch names it
    ],
)
def test_malicious_pickle_runs_nothing(tmp_path, kind, ext, refused):
    marker = tmp_path / "executed"
    path = tmp_path / f"evil.{ext}"
    if ext == "pkl":
        with open(path, "wb") as f:
            pickle.dump(_evil(kind, marker, np.zeros(2, np.float32)), f)
    else:
        torch.save(_evil(kind, marker, torch.zeros(2)), path)
    with pytest.raises(CheckpointError) as error:
        FinetuneCheckpointer(nn.Linear(2, 2)).load(str(path))
    assert not marker.exists()
    text = str(error.value)
    assert text.startswith(f"{path}: refused to load") and f"'{refused}'" in text
    assert "Nothing was executed" in text


def _small_pth(path):
    torch.save({"model": {"weight": torch.ones(2, 2), "bias": torch.ones(2)}}, path)
    return path


@pytest.mark.parametrize(
    "name,make,message",
    [
        (
            "truncated.pth",
            lambda p: p.write_bytes(_small_pth(p).read_bytes()[:300]),
            "is not a readable checkpoint",
        ),
        (
            "truncated.pkl",
            lambda p: p.write_bytes(pickle.dumps({"model": {"w": np.ones(99)}})[:200]),
            "is not a readable checkpoint",
        ),
        (
            "random.pth",
            lambda p: p.write_bytes(np.random.default_rng(0).bytes(4096)),
            "is not a readable checkpoint",
        ),
        (
            "random.pkl",
            lambda p: p.write_bytes(b"\x80\x04" + np.random.default_rng(1).bytes(4096)),
            "is not a readable checkpoint",
        ),
        ("empty.pth", lambda p: p.write_bytes(b""), "is empty"),
        ("notes.txt", lambda p: p.write_text("not weights\n"), "is not a readable checkpoint"),
        ("list.pkl", lambda p: p.write_bytes(pickle.dumps([1, 2])), "holds a list, not a dict"),
        (
            "strings.pkl",
            lambda p: p.write_bytes(pickle.dumps({"name": "x"})),
            "not a model checkpoint: it has the entry 'name', a str",
        ),
        (
            "strings.pth",
            lambda p: torch.save({"model": {"a": "b"}}, p),
            "not a model checkpoint: it has the entry 'a', a str",
        ),
        (
            "objects.pkl",
            lambda p: p.write_bytes(pickle.dumps({"model": {"w": np.array(["x"], object)}})),
            "not a model checkpoint: it has the entry 'w', a ndarray",
        ),
    ],
)
def test_unreadable_or_foreign_files(tmp_path, name, make, message):
    path = tmp_path / name
    make(path)
    with pytest.raises(CheckpointError) as error:
        FinetuneCheckpointer(nn.Linear(2, 2)).load(str(path))
    assert str(path) in str(error.value) and message in str(error.value)


def test_missing_local_file():
    with pytest.raises(CheckpointError, match=r"Checkpoint not found: /no/such/model.pth\. Set"):
        FinetuneCheckpointer(nn.Linear(2, 2)).load("/no/such/model.pth")


ZOO = "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"


@pytest.mark.parametrize(
    "url", [f"detectron2://{ZOO}", f"https://dl.fbaipublicfiles.com/detectron2/{ZOO}"]
)
def test_url_offline_says_where_to_download(monkeypatch, tmp_path, url):
    requested = []

    def offline(request, *args, **kwargs):
        requested.append(getattr(request, "full_url", request))
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))

    monkeypatch.setenv("FVCORE_CACHE", str(tmp_path))
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(CheckpointError) as error:
        FinetuneCheckpointer(nn.Linear(2, 2)).load(url)
    real = f"https://dl.fbaipublicfiles.com/detectron2/{ZOO}"
    assert requested == [real]
    text = str(error.value)
    assert text.startswith(f"Cannot download {real} (")
    assert "Name or service not known" in text
    assert "train.init_checkpoint=/path/to/model_final_f10217.pkl" in text


def test_numpy2_pickles_load(coco, tmp_path):
    state = {k: coco["state"][k] for k in list(coco["state"])[:3]}
    data = pickle.dumps(
        {"model": {k: v.numpy() for k, v in state.items()}, "__author__": "np2"}, protocol=2
    )
    assert b"cnumpy.core.multiarray\n_reconstruct" in data
    path = tmp_path / "numpy2.pkl"
    path.write_bytes(data.replace(b"cnumpy.core.multiarray\n", b"cnumpy._core.multiarray\n"))
    model = build()
    report = FinetuneCheckpointer(model, target_classes=CITY, strict=False).load(str(path))
    assert [e["key"] for e in report["loaded"]] == list(state)
    for key, value in state.items():
        assert torch.equal(model.state_dict()[key], value)
