"""Exports of the tiny demo model shared by the export tests: each format is exported once per
session (the ONNX one through scripts/export_model.py), whichever test module asks first."""

import contextlib
import io
import os
import runpy
import sys

from conftest import DEMO_CONFIG, REPO, tiny_overrides

EXPORT = os.path.join(REPO, "scripts", "export_model.py")
PREDICT = os.path.join(REPO, "scripts", "predict.py")
_EXPORTS = {}
# 20 detections per image instead of 100: a random-init head detects the maximum everywhere, and
# the mask head and mask pasting are most of a prediction's time on the CPU.
DETECTIONS = {"model.roi_heads.box_predictor.test_topk_per_image": 20}


def run_script(script, *args):
    """Run a script's main() in this process (no interpreter start-up, which costs seconds per
    run on a busy CPU). Returns (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = [script, *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            runpy.run_path(script, run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


def confident_init(tmp_path_factory, tiny_init):
    """``tiny_init`` with a confident head: class logits scaled by 10 and mask logits by 300.

    Still a random model, but one whose scores spread over 0-1 and whose mask probabilities lie
    near 0 or 1, as a trained model's do. tiny_init's scores all lie within a few hundredths of
    0.15 and 94% of its mask probabilities within 0.01 of the 0.5 threshold: comparisons of its
    predictions measure rounding, not the export.
    """
    if "init" not in _EXPORTS:
        import torch

        state = torch.load(tiny_init, map_location="cpu", weights_only=True)["model"]
        for layer, scale in (
            ("roi_heads.box_predictor.cls_score", 10),
            ("roi_heads.mask_head.predictor", 300),
        ):
            for name in ("weight", "bias"):
                state[f"{layer}.{name}"] *= scale
        path = str(tmp_path_factory.mktemp("confident_init") / "init.pth")
        torch.save({"model": state}, path)
        _EXPORTS["init"] = path
    return _EXPORTS["init"]


def compare(reference, other, min_score):
    """:func:`match_instances` of the predictions above ``min_score``, and above the lowest
    score kept when the model kept its maximum of instances (the cut between kept and dropped
    is a threshold too)."""
    from d2_finetune.export import match_instances

    if len(reference) == DETECTIONS["model.roi_heads.box_predictor.test_topk_per_image"]:
        min_score = max(min_score, float(reference.scores.min()) + 1e-3)
    return match_instances(reference, other, min_score=min_score)


def assert_parity(summary, min_compared):
    """The tolerances of the export's parity: every instance above the score found and none
    extra, boxes within 1 px, scores within 1e-3, mask IoU >= 0.98 (masks differing in a
    single pixel aside: one pixel at the 0.5 threshold decides a small mask's IoU alone)."""
    assert summary["compared"] >= min_compared, summary
    assert summary["matched"] == summary["compared"] and summary["extra"] == 0, summary
    assert summary["max_box_diff"] <= 1.0 and summary["max_score_diff"] <= 1e-3, summary
    if summary["min_mask_iou"] is not None:
        assert (summary["min_mask_iou_beyond_1px"] or 1.0) >= 0.98, summary
        assert summary["mean_mask_iou"] >= 0.99, summary


def export_cfg(root, init, output_dir, **extra):
    """The tiny demo config as scripts/export_model.py loads it (CPU, datasets registered)."""
    from d2_finetune.export.exporter import export_config

    extra.setdefault("train.init_checkpoint", init)
    extra = {**DETECTIONS, **extra}
    return export_config(DEMO_CONFIG, tiny_overrides(root, output_dir, **extra))


def exported(fmt, tmp_path_factory, root, init):
    """The path of the tiny model exported to ``fmt``, with its export.json beside it."""
    if fmt not in _EXPORTS:
        folder = str(tmp_path_factory.mktemp(f"export_{fmt}"))
        deploy = os.path.join(folder, "deploy")
        overrides = tiny_overrides(
            root, os.path.join(folder, "run"), **{"train.init_checkpoint": init, **DETECTIONS}
        )
        if fmt == "onnx":
            code, out, err = run_script(
                EXPORT,
                "--config-file",
                DEMO_CONFIG,
                "--format",
                "onnx",
                "--output",
                deploy,
                *overrides,
            )
            assert code == 0, err[-3000:]
            assert f"Wrote {deploy}/model.onnx and {deploy}/export.json" in out
        else:
            from d2_finetune.export import export_model

            export_model(export_cfg(root, init, os.path.join(folder, "run")), deploy, fmt)
        _EXPORTS[fmt] = os.path.join(deploy, "model.onnx" if fmt == "onnx" else "model.ts")
    return _EXPORTS[fmt]


def eager_model(tmp_path_factory, root, init):
    """The eager demo model (as exported) and its Predictor, scripts/predict.py's."""
    if "eager" not in _EXPORTS:
        from d2_finetune.engine import load_for_inference
        from d2_finetune.predict import Predictor

        cfg = export_cfg(root, init, str(tmp_path_factory.mktemp("eager")))
        model = load_for_inference(cfg).eval()
        _EXPORTS["eager"] = model, Predictor(cfg, model)
    return _EXPORTS["eager"]
