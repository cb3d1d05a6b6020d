"""d2_finetune.export.exporter and scripts/export_model.py: TorchScript and ONNX exports of the
demo model, their export.json, prediction and evaluation parity with the eager model, and the
inputs refused."""

import glob
import json
import os
import sys

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from export_support import (
    EXPORT,
    assert_parity,
    compare,
    confident_init,
    eager_model,
    export_cfg,
    exported,
    run_script,
)

import detectron2
from detectron2.config import LazyCall as L
from detectron2.data.detection_utils import read_image

from d2_finetune.checkpoint.files import sha256 as sha256_file
from d2_finetune.data import CITYSCAPES_THING_CLASSES
from d2_finetune.export import (
    ExportedModel,
    ExportedPredictor,
    ExportError,
    evaluate_exported,
    export_model,
    summarize,
)

from conftest import DEMO_CONFIG


@pytest.fixture(scope="session")
def init(tmp_path_factory, tiny_init):
    return confident_init(tmp_path_factory, tiny_init)


@pytest.fixture(scope="session")
def ts_model(tmp_path_factory, cityscapes_root, init):
    return exported("torchscript", tmp_path_factory, cityscapes_root, init)


@pytest.fixture(scope="session")
def onnx_model(tmp_path_factory, cityscapes_root, init):
    return exported("onnx", tmp_path_factory, cityscapes_root, init)


@pytest.fixture
def cfg(cityscapes_root, init, tmp_path):
    return export_cfg(cityscapes_root, init, str(tmp_path / "run"))


@pytest.fixture(scope="session")
def eager(tmp_path_factory, cityscapes_root, init):
    return eager_model(tmp_path_factory, cityscapes_root, init)


def _images(root):
    """The 3 synthetic val images (256x128) and crops of other aspect ratios, which the test
    resize turns into inputs of 128x256, 128x180 and 256x128: the graphs must take any size."""
    paths = sorted(glob.glob(f"{root}/cityscapes/leftImg8bit/val/*/*.png"))
    images = [read_image(p, format="BGR") for p in paths]
    return images + [
        np.ascontiguousarray(images[0][:, :180]),
        np.ascontiguousarray(images[1][:, 60:160].repeat(2, axis=0)),
    ]


def test_export_json_records_what_the_graph_needs(ts_model, onnx_model, init):
    for path, fmt in ((ts_model, "torchscript"), (onnx_model, "onnx")):
        with open(os.path.join(os.path.dirname(path), "export.json")) as f:
            manifest = json.load(f)
        assert manifest["format"] == fmt and manifest["model_file"] == os.path.basename(path)
        assert manifest["model_sha256"] == sha256_file(path)
        assert manifest["classes"] == CITYSCAPES_THING_CLASSES
        assert manifest["thing_colors"][0] == [220, 20, 60]
        assert manifest["input"]["format"] == "BGR"
        assert manifest["input"]["resize"] == [
            {"type": "ResizeShortestEdge", "short_edge_length": 128, "max_size": 256, "interp": 2}
        ]
        assert manifest["input"]["dynamic_size"] is True
        assert manifest["input"]["size_divisibility"] == 32
        assert manifest["input"]["pixel_mean"] == pytest.approx([103.53, 116.28, 123.675])
        assert manifest["input"]["pixel_std"] == [1.0, 1.0, 1.0]
        # Checked against the eager model at the trace size and another.
        assert manifest["input"]["checked_sizes"] == [[128, 256], [101, 195]]
        check = manifest["verification"]
        assert check["compared"] == check["matched"] >= 30 and check["extra"] == 0
        assert manifest["outputs"] == [
            "pred_boxes",
            "pred_classes",
            "pred_masks",
            "scores",
            "image_size",
        ]
        assert manifest["postprocess"] == {
            "score_threshold": 0.05,
            "nms_threshold": 0.5,
            "detections_per_image": 20,
            "mask_threshold": 0.5,
        }
        assert manifest["source"]["checkpoint"] == init
        assert manifest["source"]["checkpoint_sha256"] == sha256_file(init)
        assert manifest["versions"]["torch"] == torch.__version__
        assert manifest["versions"]["detectron2"] == detectron2.__version__
    onnx_manifest = json.load(open(os.path.join(os.path.dirname(onnx_model), "export.json")))
    import onnx
    import onnxruntime

    assert onnx_manifest["onnx_opset"] == 17
    assert onnx_manifest["versions"]["onnx"] == onnx.__version__
    assert onnx_manifest["versions"]["onnxruntime"] == onnxruntime.__version__
    assert onnx_manifest["source"]["config_file"] == DEMO_CONFIG
    graph = onnx.load(onnx_model)
    roi_aligns = [n for n in graph.graph.node if n.op_type == "RoiAlign"]
    assert roi_aligns and all(
        onnx.helper.get_attribute_value(a) == b"half_pixel"
        for n in roi_aligns
        for a in n.attribute
        if a.name == "coordinate_transformation_mode"
    )


def test_eager_torchscript_and_onnxruntime_predictions_agree(
    eager, ts_model, onnx_model, cityscapes_root
):
    images = _images(cityscapes_root)
    reference = [eager[1](image) for image in images]
    for path in (ts_model, onnx_model):
        predictor = ExportedPredictor(ExportedModel(path))
        predictions = [predictor(image) for image in images]
        for image, ours in zip(images, predictions):
            assert ours.image_size == image.shape[:2]
        summary = summarize([compare(r, p, min_score=0.3) for r, p in zip(reference, predictions)])
        assert_parity(summary, min_compared=5 * len(images))


def _pseudo_ground_truth(eager, images_dir, json_file):
    """A COCO json of the val images whose annotations are the eager model's 5 best
    predictions per image, boxes shifted by a pixel or two: a random-init model scores 0 AP
    against real annotations, but a fair, non-trivial AP against these."""
    rng = np.random.default_rng(0)
    paths = sorted(glob.glob(f"{images_dir}/*/*.png"))
    images, annotations = [], []
    classes = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]
    for image_id, path in enumerate(paths, 1):
        image = read_image(path, format="BGR")
        predicted = eager(image)
        predicted = predicted[torch.argsort(predicted.scores, descending=True)[:5]]
        images.append(
            {
                "id": image_id,
                "file_name": os.path.relpath(path, images_dir),
                "height": image.shape[0],
                "width": image.shape[1],
            }
        )
        for box, cls, mask in zip(
            predicted.pred_boxes.tensor.tolist(),
            predicted.pred_classes.tolist(),
            predicted.pred_masks.numpy(),
        ):
            x0, y0, x1, y1 = (v + float(rng.uniform(-2, 2)) for v in box)
            rle = mask_util.encode(np.asfortranarray(mask.astype(np.uint8)))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": cls + 1,
                    "iscrowd": 0,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": float(mask.sum()),
                    "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                }
            )
    with open(json_file, "w") as f:
        json.dump(
            {
                "images": images,
                "annotations": annotations,
                "categories": [{"id": i, "name": c} for i, c in enumerate(classes, 1)],
            },
            f,
        )


def test_evaluating_the_exported_models_gives_the_eager_AP(
    eager, ts_model, onnx_model, cfg, cityscapes_root, tmp_path
):
    from detectron2.evaluation import COCOEvaluator

    from d2_finetune.data import register_coco_dataset
    from d2_finetune.engine import evaluate

    images_dir = f"{cityscapes_root}/cityscapes/leftImg8bit/val"
    _pseudo_ground_truth(eager[1], images_dir, str(tmp_path / "gt.json"))
    register_coco_dataset("export_test_pseudo_gt", str(tmp_path / "gt.json"), images_dir)
    cfg.dataloader.test.dataset.names = "export_test_pseudo_gt"
    cfg.dataloader.evaluator = L(COCOEvaluator)(
        dataset_name="export_test_pseudo_gt",
        tasks=("bbox", "segm"),
        output_dir=str(tmp_path / "eval"),
    )
    reference = evaluate(cfg, eager[0])
    assert 30 < reference["bbox"]["AP"] < 99 and reference["segm"]["AP"] > 30, reference
    for path in (ts_model, onnx_model):
        results = evaluate_exported(cfg, path)
        for task in ("bbox", "segm"):
            for metric, value in reference[task].items():
                if not np.isnan(value):
                    assert abs(results[task][metric] - value) <= 0.1, (path, task, metric)


def test_a_box_only_model_exports_and_predicts_like_its_eager_model(
    cfg, init, cityscapes_root, tmp_path
):
    """Faster R-CNN (configs/voc_ft.py, configs/kitti_ft.py): no mask head, no masks."""
    from d2_finetune.engine import load_for_inference
    from d2_finetune.predict import Predictor

    state = torch.load(init, weights_only=True)["model"]
    torch.save(
        {"model": {k: v for k, v in state.items() if "mask_head" not in k}}, tmp_path / "boxes.pth"
    )
    cfg.train.init_checkpoint = str(tmp_path / "boxes.pth")
    heads = cfg.model.roi_heads
    heads.mask_in_features = heads.mask_pooler = heads.mask_head = None
    manifest = export_model(cfg, str(tmp_path / "deploy"), "onnx")
    assert manifest["outputs"] == ["pred_boxes", "pred_classes", "scores", "image_size"]
    exported_predictor = ExportedPredictor(ExportedModel(str(tmp_path / "deploy" / "model.onnx")))
    eager_predictor = Predictor(cfg, load_for_inference(cfg).eval())
    images = _images(cityscapes_root)[:2]
    summary = summarize(
        [compare(eager_predictor(i), exported_predictor(i), min_score=0.3) for i in images]
    )
    assert_parity(summary, min_compared=5)
    assert summary["min_mask_iou"] is None


def test_onnx_needs_opset_16_for_aligned_roialign(cfg, tmp_path):
    with pytest.raises(
        ExportError,
        match="--opset 11: ONNX export needs opset 16 to 20. Before "
        "16, RoiAlign has no coordinate_transformation_mode",
    ):
        export_model(cfg, str(tmp_path / "deploy"), "onnx", opset=11)
    assert not (tmp_path / "deploy").exists()


def test_an_unknown_format_is_refused(cfg, tmp_path):
    with pytest.raises(ExportError, match="--format caffe2: choose torchscript or onnx."):
        export_model(cfg, str(tmp_path / "deploy"), "caffe2")


def test_onnx_without_onnx_installed_says_what_to_install(cfg, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(
        ExportError,
        match=r"ONNX export needs onnx and onnxruntime \(onnxruntime "
        r"is missing\): pip install 'd2_finetune\[export\]'",
    ):
        export_model(cfg, str(tmp_path / "deploy"), "onnx")


def test_a_folder_holding_the_other_format_is_refused(cfg, tmp_path):
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "model.ts").write_bytes(b"x")
    with pytest.raises(
        ExportError,
        match=r"holds a torchscript export \(model.ts\), whose "
        "export.json this onnx export would replace: export into another folder",
    ):
        export_model(cfg, str(tmp_path / "deploy"), "onnx")


def test_a_model_other_than_an_rcnn_is_refused(cfg, tmp_path):
    from detectron2 import model_zoo

    cfg.model = model_zoo.get_config("common/models/retinanet.py").model
    with pytest.raises(
        ExportError,
        match="The config's model is RetinaNet: the export traces "
        r"detectron2's GeneralizedRCNN \(Faster / Mask R-CNN\)",
    ):
        export_model(cfg, str(tmp_path / "deploy"), "torchscript")
    assert not (tmp_path / "deploy").exists()


def test_a_model_whose_traced_graph_freezes_the_image_size_is_refused(
    eager, cfg, tmp_path, monkeypatch
):
    model = eager[0]
    backbone_forward = model.backbone.forward

    def frozen(x):  # int(): a Python number, which tracing records as a constant
        size = (int(x.shape[-2]), int(x.shape[-1]))
        return backbone_forward(torch.nn.functional.interpolate(x, size=size))

    monkeypatch.setattr(model.backbone, "forward", frozen)
    with pytest.raises(
        ExportError,
        match=r"The traced graph does not generalise from the 128x256 "
        r"input it was traced with to 101x195 \(.*\): the config's model turns an "
        "image size into a constant when traced",
    ):
        export_model(cfg, str(tmp_path / "deploy"), "torchscript", model=model)
    assert not (tmp_path / "deploy").exists()


def test_a_model_whose_outputs_cannot_be_traced_is_refused(eager, cfg, tmp_path, monkeypatch):
    model = eager[0]
    inference = model.inference

    def with_text(*args, **kwargs):
        results = inference(*args, **kwargs)
        for r in results:
            r.note = ["not a tensor"] * len(r)
        return results

    monkeypatch.setattr(model, "inference", with_text)
    with pytest.raises(
        ExportError,
        match="The config's GeneralizedRCNN cannot be traced for "
        "export: ValueError: Model cannot be traced because some model outputs "
        "cannot flatten to tensors.",
    ):
        export_model(cfg, str(tmp_path / "deploy"), "torchscript", model=model)


def test_a_prediction_the_post_processing_cannot_map_is_refused(eager, cfg, tmp_path, monkeypatch):
    model = eager[0]
    inference = model.inference

    def with_keypoints(*args, **kwargs):
        results = inference(*args, **kwargs)
        for r in results:
            r.pred_keypoints = torch.zeros(len(r), 17, 3)
        return results

    monkeypatch.setattr(model, "inference", with_keypoints)
    with pytest.raises(
        ExportError,
        match="The config's model predicts pred_keypoints, which "
        "exported models do not post-process",
    ):
        export_model(cfg, str(tmp_path / "deploy"), "torchscript", model=model)


def test_an_output_that_is_a_file_is_refused(cfg, tmp_path):
    (tmp_path / "deploy").write_text("x")
    with pytest.raises(ExportError, match=f"--output {tmp_path}/deploy is a file: give a folder."):
        export_model(cfg, str(tmp_path / "deploy"), "torchscript")


def test_a_test_dataset_without_class_names_is_refused(cfg, tmp_path):
    from detectron2.data import DatasetCatalog

    if "export_test_nameless" not in DatasetCatalog.list():
        DatasetCatalog.register("export_test_nameless", lambda: [])
    cfg.dataloader.test.dataset.names = "export_test_nameless"
    with pytest.raises(
        ExportError,
        match="The test dataset export_test_nameless has no "
        "thing_classes to name the exported model's classes.",
    ):
        export_model(cfg, str(tmp_path / "deploy"), "torchscript")


def test_a_sample_image_that_cannot_be_read_is_refused(eager, cfg, tmp_path):
    with pytest.raises(
        ExportError, match=f"--sample-image {tmp_path}/nope.png cannot be read as an image"
    ):
        export_model(
            cfg,
            str(tmp_path / "deploy"),
            "torchscript",
            model=eager[0],
            sample_image=str(tmp_path / "nope.png"),
        )
    assert not (tmp_path / "deploy").exists()


def test_a_model_without_a_proposal_generator_is_refused(eager, cfg, tmp_path):
    model = eager[0]
    proposal_generator = model.proposal_generator  # (monkeypatch deletes a submodule on undo)
    model.proposal_generator = None
    try:
        with pytest.raises(
            ExportError,
            match=r"takes precomputed proposals "
            r"\(model.proposal_generator=None\), which an exported graph cannot.",
        ):
            export_model(cfg, str(tmp_path / "deploy"), "torchscript", model=model)
    finally:
        model.proposal_generator = proposal_generator


def test_a_model_returning_something_else_than_instances_is_refused(
    eager, cfg, tmp_path, monkeypatch
):
    monkeypatch.setattr(
        eager[0], "inference", lambda *args, **kwargs: [(torch.zeros(2, 4), torch.zeros(2))]
    )
    with pytest.raises(
        ExportError,
        match="GeneralizedRCNN does not return one Instances per image, which the export needs.",
    ):
        export_model(cfg, str(tmp_path / "deploy"), "torchscript", model=eager[0])


def test_a_graph_that_does_not_reproduce_the_eager_model_is_not_written(
    eager, cfg, tmp_path, monkeypatch
):
    """A graph that computes something else than the eager model (as an export to opset 11
    would), simulated: the graph's scores raised by 0.01."""
    from d2_finetune.export import exporter

    load_graph = exporter.load_graph

    def shifted(*args, **kwargs):
        graph = load_graph(*args, **kwargs)

        def run(image):
            outputs = graph(image)
            outputs["scores"] = outputs["scores"] + 0.01
            return outputs

        return run

    monkeypatch.setattr(exporter, "load_graph", shifted)
    (tmp_path / "deploy").mkdir()
    (tmp_path / "deploy" / "model.ts").write_bytes(b"an earlier export")
    with pytest.raises(
        ExportError,
        match="The exported graph does not reproduce the eager model "
        "on the image it was traced with: scores differ by up to 0.01.",
    ):
        export_model(cfg, str(tmp_path / "deploy"), "torchscript", model=eager[0])
    # The earlier export is left as it was, and nothing else.
    assert sorted(os.listdir(tmp_path / "deploy")) == ["model.ts"]
    assert (tmp_path / "deploy" / "model.ts").read_bytes() == b"an earlier export"


def test_export_script_reports_bad_input_in_one_line_before_loading_anything(tmp_path):
    # The demo config's data root does not exist here: the opset is refused first.
    code, _, err = run_script(
        EXPORT,
        "--config-file",
        DEMO_CONFIG,
        "--format",
        "onnx",
        "--opset",
        "11",
        "--output",
        tmp_path / "deploy",
    )
    assert code == 2
    assert (
        err.strip()
        .splitlines()[-1]
        .startswith("ERROR: --opset 11: ONNX export needs opset 16 to 20.")
    )
    assert not (tmp_path / "deploy").exists()
