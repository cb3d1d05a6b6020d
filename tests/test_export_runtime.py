"""d2_finetune.export.runtime and scripts/predict.py --model: running an exported model with its
export.json, and the inputs refused."""

import glob
import json
import os
import shutil
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from export_support import (
    PREDICT,
    assert_parity,
    compare,
    confident_init,
    eager_model,
    export_cfg,
    exported,
    run_script,
)

from detectron2.structures import Boxes, Instances

from d2_finetune.export import (
    ExportedModel,
    ExportedPredictor,
    ExportError,
    evaluate_exported,
    summarize,
)
from d2_finetune.predict import list_images, predict_images


@pytest.fixture(scope="session")
def init(tmp_path_factory, tiny_init):
    return confident_init(tmp_path_factory, tiny_init)


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory, cityscapes_root, init):
    return exported("onnx", tmp_path_factory, cityscapes_root, init)


@pytest.fixture(scope="session")
def eager(tmp_path_factory, cityscapes_root, init):
    return eager_model(tmp_path_factory, cityscapes_root, init)


def _beside(model_path, folder, edit=None, manifest=True):
    """``model_path`` linked into ``folder`` with a copy of its export.json, edited by ``edit``
    (or none with ``manifest=False``)."""
    folder.mkdir()
    link = folder / os.path.basename(model_path)
    os.symlink(model_path, link)
    if manifest:
        with open(os.path.join(os.path.dirname(model_path), "export.json")) as f:
            data = json.load(f)
        if edit:
            edit(data)
        (folder / "export.json").write_text(json.dumps(data))
    return str(link)


def _records(folder):
    out = {}
    for path in sorted(glob.glob(f"{folder}/**/*.json", recursive=True)):
        with open(path) as f:
            out[os.path.relpath(path, folder)] = json.load(f)
    return out


def _instances(record):
    """The instances of one of predict.py's JSON files, back as detectron2 Instances."""
    found = record["instances"]
    instances = Instances((record["height"], record["width"]))
    instances.pred_boxes = Boxes(torch.tensor([i["bbox_xyxy"] for i in found]).reshape(-1, 4))
    instances.scores = torch.tensor([i["score"] for i in found])
    instances.pred_classes = torch.tensor([i["class_id"] for i in found])
    instances.pred_masks = torch.from_numpy(
        np.stack([mask_util.decode(i["segmentation"]) for i in found]).astype(bool)
    )
    return instances


def test_predict_script_with_an_exported_model_writes_what_eager_prediction_writes(
    onnx_model, eager, cityscapes_root, tmp_path
):
    images = f"{cityscapes_root}/cityscapes/leftImg8bit/val"
    code, _, err = run_script(
        PREDICT,
        "--model",
        onnx_model,
        "--input",
        images,
        "--output",
        tmp_path / "exported",
        "--confidence",
        "0",
    )
    assert code == 0, err[-3000:]
    predict_images(
        eager[1],
        list_images(images),
        str(tmp_path / "eager"),
        "cityscapes_ft_instance_val",
        confidence=0,
        input_root=images,
    )
    ours, theirs = _records(tmp_path / "exported"), _records(tmp_path / "eager")
    assert sorted(ours) == sorted(theirs) and len(ours) == 3
    results = []
    for name, record in theirs.items():
        assert os.path.isfile(tmp_path / "exported" / name.replace(".json", ".png"))
        exported_record = ours[name]
        assert {k: exported_record[k] for k in ("file_name", "height", "width")} == {
            k: record[k] for k in ("file_name", "height", "width")
        }
        assert len(exported_record["instances"]) == len(record["instances"]) == 20
        results.append(compare(_instances(record), _instances(exported_record), min_score=0.3))
    assert_parity(summarize(results), min_compared=10)


def test_predict_with_an_exported_model_takes_no_config(onnx_model, cityscapes_root, tmp_path):
    code, _, err = run_script(
        PREDICT,
        "--model",
        onnx_model,
        "--config-file",
        "configs/x.py",
        "--input",
        f"{cityscapes_root}/cityscapes/leftImg8bit/val",
        "--output",
        tmp_path / "out",
    )
    assert code == 2
    assert err.strip().splitlines()[-1] == (
        f"ERROR: --model {onnx_model} takes its classes, resize and thresholds from its "
        "export.json: drop --config-file."
    )


def test_predict_with_an_exported_model_without_its_export_json(
    onnx_model, cityscapes_root, tmp_path
):
    alone = _beside(onnx_model, tmp_path / "alone", manifest=False)
    code, _, err = run_script(
        PREDICT,
        "--model",
        alone,
        "--input",
        f"{cityscapes_root}/cityscapes/leftImg8bit/val",
        "--output",
        tmp_path / "out",
    )
    assert code == 2
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith(
            f"ERROR: {tmp_path}/alone/export.json is missing: an exported model needs the "
            "export.json written beside it by scripts/export_model.py"
        )
    )
    assert not (tmp_path / "out").exists()


def test_an_input_not_resized_as_the_export_records_is_refused(onnx_model):
    model = ExportedModel(onnx_model)
    image = torch.zeros(3, 100, 200, dtype=torch.uint8)
    with pytest.raises(ExportError) as e:
        model([{"image": image, "height": 128, "width": 256}])
    assert str(e.value) == (
        f"An image of 128x256 reached the exported model as 3x100x200, but {onnx_model} was "
        "exported for 3x128x256 (export.json input.resize: ResizeShortestEdge(128, "
        "max_size=256)): evaluate with the test resize of the config it was exported from, or "
        "export again with this one."
    )
    # What the test mapper makes of that image is taken, with predictions on the original size.
    out = model(
        [{"image": torch.zeros(3, 128, 256, dtype=torch.uint8), "height": 64, "width": 128}]
    )
    assert out[0]["instances"].image_size == (64, 128)


def test_images_the_export_cannot_take_are_refused(onnx_model):
    predictor = ExportedPredictor(ExportedModel(onnx_model))
    with pytest.raises(
        ExportError,
        match=r"Exported models take \(H, W, 3\) BGR images, got "
        r"\(128, 256\).",
    ):
        predictor(np.zeros((128, 256), dtype=np.uint8))
    with pytest.raises(
        ExportError,
        match=r"Exported models take \(H, W, 3\) BGR images, got "
        r"\(128, 256, 4\).",
    ):
        predictor(np.zeros((128, 256, 4), dtype=np.uint8))
    # 1x1000: the shortest edge to 128 would make the longest 128000, so both shrink to fit 256.
    with pytest.raises(
        ExportError,
        match=r"An image of 1x1000 cannot be predicted: the export's "
        r"resize \(ResizeShortestEdge\(128, max_size=256\)\) makes it 0x256.",
    ):
        predictor(np.zeros((1, 1000, 3), dtype=np.uint8))
    # Any other size is resized as the config's test mapper does and predicted on.
    instances = predictor(np.full((300, 40, 3), 128, dtype=np.uint8))
    assert instances.image_size == (300, 40)
    assert instances.pred_masks.shape[1:] == (300, 40)


def test_evaluating_with_a_config_the_export_does_not_fit_is_refused(
    onnx_model, cityscapes_root, init, tmp_path
):
    other_size = export_cfg(
        cityscapes_root,
        init,
        str(tmp_path / "a"),
        **{"dataloader.test.mapper.augmentations.0.short_edge_length": 160},
    )
    with pytest.raises(
        ExportError,
        match=r"The config's test resize \(ResizeShortestEdge\(160, "
        r"max_size=256\)\) is not the one .*model.onnx was exported with "
        r"\(ResizeShortestEdge\(128, max_size=256\), export.json input.resize\)",
    ):
        evaluate_exported(other_size, onnx_model)
    rgb = export_cfg(
        cityscapes_root, init, str(tmp_path / "b"), **{"dataloader.test.mapper.image_format": "RGB"}
    )
    with pytest.raises(
        ExportError,
        match=r"dataloader.test.mapper.image_format=RGB, but .* takes "
        r"BGR images \(export.json input.format\).",
    ):
        evaluate_exported(rgb, onnx_model)

    def rename(manifest):
        manifest["classes"] = ["car", "van"]

    other_classes = _beside(onnx_model, tmp_path / "renamed", edit=rename)
    cfg = export_cfg(
        cityscapes_root, init, str(tmp_path / "c"), **{"train.init_checkpoint": other_classes}
    )
    with pytest.raises(
        ExportError,
        match=r"model.onnx predicts the classes \['car', 'van'\] "
        r"\(export.json\), but the test dataset cityscapes_ft_instance_val has "
        r"\['person', 'rider'",
    ):
        evaluate_exported(cfg)  # the model from train.init_checkpoint, as --eval-only does


def test_onnx_model_without_onnxruntime_says_what_to_install(onnx_model, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(
        ExportError,
        match=r"Running .*model.onnx needs onnxruntime: pip install "
        r"'d2_finetune\[export\]' \(onnx and onnxruntime\).",
    ):
        ExportedModel(onnx_model)


def test_a_graph_that_onnxruntime_cannot_load(onnx_model, tmp_path):
    from d2_finetune.checkpoint.files import sha256 as sha256_file

    (tmp_path / "deploy").mkdir()
    broken = tmp_path / "deploy" / "model.onnx"
    with open(onnx_model, "rb") as f:
        broken.write_bytes(f.read(1000))  # truncated, with an export.json that describes it
    shutil.copy(os.path.join(os.path.dirname(onnx_model), "export.json"), tmp_path / "deploy")
    manifest = json.loads((tmp_path / "deploy" / "export.json").read_text())
    manifest["model_sha256"] = sha256_file(str(broken))
    (tmp_path / "deploy" / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match=f"onnxruntime cannot load {broken}: "):
        ExportedModel(str(broken))


def test_a_torchscript_file_that_cannot_be_loaded(onnx_model, tmp_path):
    from d2_finetune.checkpoint.files import sha256 as sha256_file

    (tmp_path / "deploy").mkdir()
    broken = tmp_path / "deploy" / "model.ts"
    broken.write_bytes(b"not a TorchScript archive")
    manifest = json.loads(open(os.path.join(os.path.dirname(onnx_model), "export.json")).read())
    manifest.update(
        format="torchscript", model_file="model.ts", model_sha256=sha256_file(str(broken))
    )
    (tmp_path / "deploy" / "export.json").write_text(json.dumps(manifest))
    with pytest.raises(ExportError, match=f"TorchScript cannot load {broken}: "):
        ExportedModel(str(broken))


def test_train_net_eval_only_evaluates_an_exported_model(
    onnx_model, init, cityscapes_root, tmp_path
):
    """scripts/train_net.py --eval-only train.init_checkpoint=DIR/model.onnx runs the exported
    model over the config's test loader and evaluators: the same predictions and metrics as
    --eval-only of the weights it was exported from (with the export's detection settings)."""
    from export_support import DETECTIONS

    from conftest import DEMO_CONFIG, run_script, tiny_overrides

    results = {}
    for name, weights in (("eager", init), ("onnx", onnx_model)):
        out = tmp_path / name
        overrides = tiny_overrides(
            cityscapes_root, str(out), **{"train.init_checkpoint": weights, **DETECTIONS}
        )
        proc = run_script("train_net", ["--config-file", DEMO_CONFIG, "--eval-only", *overrides])
        with open(out / "inference" / "coco_instances_results.json") as f:
            predictions = json.load(f)
        metrics = [
            line.split("copypaste: ")[1]
            for line in proc.stdout.splitlines()
            if "copypaste: " in line
        ]
        results[name] = predictions, metrics
    assert "Running the exported model" in proc.stdout
    (eager_predictions, eager_metrics), (onnx_predictions, onnx_metrics) = results.values()
    assert len(onnx_predictions) == len(eager_predictions) > 0
    for a, b in zip(eager_predictions, onnx_predictions):
        assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
        assert np.allclose(a["bbox"], b["bbox"], atol=1e-2) and abs(a["score"] - b["score"]) < 1e-4
    assert onnx_metrics == eager_metrics
