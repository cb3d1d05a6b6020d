"""d2_finetune.export.manifest: export.json, and the test resize it records."""

import json

import numpy as np
import pytest

from detectron2.config import LazyCall as L
from detectron2.data import transforms as T

from d2_finetune.checkpoint.files import sha256 as sha256_file
from d2_finetune.config import load_config
from d2_finetune.export import ExportError
from d2_finetune.export.manifest import (
    read_manifest,
    resize_augmentations,
    resize_policy,
    resized_shape,
    write_manifest,
)

from conftest import DEMO_CONFIG

DEMO_RESIZE = [
    {"type": "ResizeShortestEdge", "short_edge_length": 256, "max_size": 512, "interp": 2}
]


def test_the_demo_configs_test_resize_is_recorded():
    assert resize_policy(load_config(DEMO_CONFIG)) == DEMO_RESIZE


def test_a_fixed_resize_is_recorded():
    cfg = load_config(DEMO_CONFIG)
    cfg.dataloader.test.mapper.augmentations = [L(T.Resize)(shape=(96, 160))]
    assert resize_policy(cfg) == [{"type": "Resize", "shape": [96, 160], "interp": 2}]
    assert resized_shape(resize_policy(cfg), 1024, 2048) == (96, 160)


@pytest.mark.parametrize("height,width", [(128, 256), (1024, 2048), (300, 200), (77, 1000), (5, 5)])
def test_the_recorded_resize_gives_the_test_mappers_sizes(height, width):
    augs = resize_augmentations(DEMO_RESIZE)
    aug_input = T.AugInput(np.zeros((height, width, 3), dtype=np.uint8))
    augs(aug_input)
    assert resized_shape(DEMO_RESIZE, height, width) == aug_input.image.shape[:2]


def test_a_random_test_size_is_refused():
    cfg = load_config(DEMO_CONFIG)
    cfg.dataloader.test.mapper.augmentations[0].short_edge_length = (224, 256)
    with pytest.raises(
        ExportError,
        match=r"dataloader.test.mapper.augmentations\[0\] is "
        r"ResizeShortestEdge\(short_edge_length=\[224, 256\]\), which picks a random "
        r"size per image: an export records one test size",
    ):
        resize_policy(cfg)


def test_a_test_augmentation_other_than_a_resize_is_refused():
    cfg = load_config(DEMO_CONFIG)
    cfg.dataloader.test.mapper.augmentations.append(L(T.RandomFlip)(horizontal=True))
    with pytest.raises(
        ExportError,
        match=r"augmentations\[1\] is RandomFlip: an export records "
        "only a deterministic test-time resize",
    ):
        resize_policy(cfg)


def _fake_export(folder, fmt="onnx", **changes):
    """A model file and an export.json that describes it (the graph is not read here)."""
    folder.mkdir(exist_ok=True)
    model = folder / ("model.onnx" if fmt == "onnx" else "model.ts")
    model.write_bytes(b"not really a graph")
    manifest = {
        "format_version": 1,
        "format": fmt,
        "model_file": model.name,
        "model_sha256": sha256_file(str(model)),
        "classes": ["a", "b"],
        "input": {"format": "BGR", "resize": DEMO_RESIZE, "dynamic_size": True},
        "outputs": ["pred_boxes", "pred_classes", "scores", "image_size"],
    }
    manifest.update(changes)
    write_manifest(str(folder), manifest)
    return str(model)


def test_a_manifest_that_describes_its_model_is_read(tmp_path):
    path = _fake_export(tmp_path, colors=[[220, 20, 60], [0, 0, 142]], note=None)
    manifest = read_manifest(path)
    assert manifest["classes"] == ["a", "b"] and manifest["input"]["resize"] == DEMO_RESIZE
    assert manifest["colors"] == [[220, 20, 60], [0, 0, 142]] and manifest["note"] is None
    assert not (tmp_path / "export.json.tmp").exists()
    # Written to be read by people too: a key per line, lists of numbers on one.
    text = (tmp_path / "export.json").read_text()
    assert '\n "classes": [\n  "a",\n  "b"\n ],' in text and "[220, 20, 60]" in text


def test_a_missing_model_file(tmp_path):
    with pytest.raises(
        ExportError,
        match=f"{tmp_path}/model.onnx: no such file. Export a model with scripts/export_model.py",
    ):
        read_manifest(str(tmp_path / "model.onnx"))


def test_a_file_that_is_not_an_exported_model(tmp_path):
    (tmp_path / "model_final.pth").write_bytes(b"x")
    with pytest.raises(
        ExportError,
        match=r"model_final.pth: not an exported model \(a TorchScript "
        r"\.ts or an ONNX \.onnx file",
    ):
        read_manifest(str(tmp_path / "model_final.pth"))


def test_a_missing_export_json(tmp_path):
    path = _fake_export(tmp_path)
    (tmp_path / "export.json").unlink()
    with pytest.raises(
        ExportError,
        match=f"{tmp_path}/export.json is missing: an exported model "
        "needs the export.json written beside it",
    ):
        read_manifest(path)


def test_an_export_json_that_is_not_json(tmp_path):
    path = _fake_export(tmp_path)
    (tmp_path / "export.json").write_text("{ not json")
    with pytest.raises(ExportError, match="export.json cannot be read as JSON"):
        read_manifest(path)


def test_an_export_json_without_its_keys(tmp_path):
    path = _fake_export(tmp_path)
    data = json.loads((tmp_path / "export.json").read_text())
    del data["classes"]
    del data["input"]["resize"]
    (tmp_path / "export.json").write_text(json.dumps(data))
    with pytest.raises(
        ExportError,
        match="export.json lacks classes, input.resize: it was not "
        "written by scripts/export_model.py",
    ):
        read_manifest(path)


def test_an_export_json_from_a_newer_version(tmp_path):
    path = _fake_export(tmp_path, format_version=2)
    with pytest.raises(
        ExportError,
        match="has format_version 2, newer than this d2_finetune "
        r"reads \(1\): update d2_finetune",
    ):
        read_manifest(path)


def test_an_export_json_of_the_other_format(tmp_path):
    _fake_export(tmp_path, "torchscript")
    (tmp_path / "model.onnx").write_bytes(b"an onnx file")
    with pytest.raises(
        ExportError,
        match=r"export.json describes a torchscript export \(model.ts\), "
        "not the onnx model model.onnx",
    ):
        read_manifest(str(tmp_path / "model.onnx"))


def test_a_model_that_is_not_the_one_its_export_json_describes(tmp_path):
    path = _fake_export(tmp_path)
    recorded = sha256_file(path)
    (tmp_path / "model.onnx").write_bytes(b"another graph")
    with pytest.raises(ExportError) as e:
        read_manifest(path)
    assert str(e.value) == (
        f"{path} is not the model {tmp_path}/export.json was written for (sha256 "
        f"{sha256_file(path)[:12]}... where export.json records {recorded[:12]}...): keep each "
        "model with its own export.json, or export again."
    )
