"""Evaluation during training, best checkpoint, early stopping, validation loss, plots."""

import json
import math
import os
import zlib

import pytest
import torch
from PIL import Image

from detectron2.utils.env import seed_all_rng
from detectron2.utils.events import EventStorage

from d2_finetune.checkpoint import FinetuneCheckpointer
from d2_finetune.data.loaders import build_val_loss_loader
from d2_finetune.engine import FinetuneTrainer
from d2_finetune.engine.hooks import ValidationLoss
from d2_finetune.modeling import build_model


@pytest.fixture
def scripted_metric(monkeypatch):
    """Make evaluation return the next value of a script instead of running the evaluator."""
    values = []

    def fake_test(cls, cfg, model, evaluators=None):
        return {"cityscapes": {"AP": values.pop(0), "AP50": 0.0}}

    monkeypatch.setattr(FinetuneTrainer, "test", classmethod(fake_test))
    return values


def state(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def test_best_checkpoint_holds_the_best_evaluations_weights(tiny_cfg, tmp_path, scripted_metric):
    scripted_metric += [10.0, 30.0, 20.0, 5.0]
    out = tmp_path / "run"
    cfg = tiny_cfg(output_dir=str(out), **{"train.eval_period": 1, "train.checkpointer.period": 1})
    trainer = FinetuneTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    best = state(out / "model_best.pth")
    at_best = state(out / "model_0000001.pth")  # the 2nd evaluation (30.0) ran after iteration 1
    assert best["iteration"] == 1
    assert best["best_metric"] == {"cityscapes/AP": 30.0}
    for k, v in at_best["model"].items():
        assert torch.equal(best["model"][k], v), k
    final = state(out / "model_final.pth")
    assert any(not torch.equal(final["model"][k], v) for k, v in at_best["model"].items())
    with open(out / "model_best.json") as f:
        assert json.load(f) == {
            "metric": "cityscapes/AP",
            "value": 30.0,
            "iteration": 1,
            "evals_without_improvement": 2,
        }


def test_resume_point_stays_the_latest_checkpoint_not_the_best(tiny_cfg, tmp_path, scripted_metric):
    scripted_metric += [10.0]
    out = tmp_path / "run"
    cfg = tiny_cfg(output_dir=str(out), **{"train.max_iter": 2, "lr_multiplier.steps": [1]})
    trainer = FinetuneTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    assert os.path.isfile(out / "model_best.pth")
    with open(out / "last_checkpoint") as f:
        assert f.read().strip() == "model_final.pth"


def test_early_stopping_stops_and_says_so(tiny_cfg, tmp_path, scripted_metric, caplog):
    scripted_metric += [10.0, 9.0, 8.0, 7.0]
    out = tmp_path / "run"
    cfg = tiny_cfg(output_dir=str(out), **{"train.eval_period": 1, "train.patience": 2})
    trainer = FinetuneTrainer(cfg)
    trainer.resume_or_load(resume=False)
    with caplog.at_level("INFO", logger="d2_finetune"):
        trainer.train()
    assert trainer.iter == 2  # evaluations after iterations 0, 1, 2; the last two did not improve
    assert scripted_metric == [7.0]
    assert (
        "Early stopping at iteration 2: cityscapes/AP has not improved for 2 evaluations"
        in caplog.text
    )
    assert state(out / "model_final.pth")["iteration"] == 2
    assert state(out / "model_best.pth")["iteration"] == 0


def test_validation_loss_is_logged_and_matches_a_manual_computation(tiny_cfg, tmp_path):
    out = tmp_path / "run"
    cfg = tiny_cfg(
        output_dir=str(out),
        **{
            "train.val_loss_period": 2,
            "train.max_iter": 2,
            "lr_multiplier.steps": [1],
            "train.val_loss_images": 2,
        },
    )
    trainer = FinetuneTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    with open(out / "metrics.json") as f:
        rows = [json.loads(line) for line in f]
    logged = [r for r in rows if "val_total_loss" in r]
    assert len(logged) == 1 and logged[0]["iteration"] == 1
    assert {"val_loss_cls", "val_loss_box_reg", "val_loss_mask", "val_loss_rpn_cls"} <= set(
        logged[0]
    )

    model = build_model(cfg)
    FinetuneCheckpointer(model).load(str(out / "model_final.pth"))
    model.train()
    loader = build_val_loss_loader(cfg)
    images = sum(len(b) for b in loader)
    assert images == 2
    sums = {}
    with torch.no_grad(), EventStorage():
        for batch in loader:
            torch.manual_seed(zlib.crc32(batch[0]["file_name"].encode()))  # seeded per image
            for k, v in model(batch).items():
                sums[k] = sums.get(k, 0.0) + float(v) * len(batch)
    manual = {"val_" + k: v / images for k, v in sums.items()}
    for k, v in manual.items():
        assert logged[0][k] == pytest.approx(v, rel=1e-5), k
    assert logged[0]["val_total_loss"] == pytest.approx(sum(manual.values()), rel=1e-5)
    # The hook seeds its own RNG stream and leaves training's untouched.
    hook = ValidationLoss(1, model, loader, seed=0)
    with EventStorage():
        rng = torch.get_rng_state()
        a, b = hook.compute(), hook.compute()
        assert torch.equal(rng, torch.get_rng_state())
    assert a == b


def test_frozen_parameters_do_not_change(tiny_cfg, tmp_path):
    cfg = tiny_cfg(
        output_dir=str(tmp_path / "run"),
        **{"train.freeze": ["roi_heads.box_head.*", "backbone.fpn_output2.*"]},
    )
    trainer = FinetuneTrainer(cfg)
    trainer.resume_or_load(resume=False)
    before = {k: v.clone() for k, v in trainer.model.named_parameters()}
    trainer.train()
    after = dict(trainer.model.named_parameters())
    frozen = [k for k in before if k.startswith(("roi_heads.box_head.", "backbone.fpn_output2."))]
    assert frozen and all(torch.equal(before[k], after[k]) for k in frozen)
    assert not torch.equal(
        before["roi_heads.box_predictor.cls_score.weight"],
        after["roi_heads.box_predictor.cls_score.weight"],
    )


def test_a_freeze_pattern_that_matches_nothing_is_an_error(tiny_cfg):
    from d2_finetune.errors import ConfigError

    with pytest.raises(
        ConfigError, match=r"train\.freeze pattern 'backbone\.nothing\*' matches no parameter"
    ):
        FinetuneTrainer(tiny_cfg(**{"train.freeze": ["backbone.nothing*"]}))


def _first_losses(tiny_cfg, out, **overrides):
    """The losses of iteration 0 and the dtype of the convolutions' outputs during training and
    during the evaluation at the end."""
    cfg = tiny_cfg(
        output_dir=str(out),
        **{"train.max_iter": 2, "lr_multiplier.steps": [1], "train.eval_period": 2, **overrides},
    )
    seed_all_rng(0)  # as train_net.py does: both runs sample the same RoIs from the same state
    trainer = FinetuneTrainer(cfg)
    trainer.resume_or_load(resume=False)
    seen = {}

    def record_dtype(module, inputs, output):
        seen.setdefault("train" if module.training else "eval", output.dtype)

    handle = trainer.model.backbone.fpn_output2.register_forward_hook(record_dtype)
    results = trainer.train()
    handle.remove()
    with open(out / "metrics.json") as f:
        rows = [json.loads(line) for line in f if "total_loss" in line]
    return trainer, rows, seen, results


def test_bf16_autocast_trains_and_evaluates_on_cpu(tiny_cfg, tmp_path):
    """bfloat16 autocast on the CPU: the convolutions run in bfloat16 in training and in the
    evaluation; the first iteration's losses (same weights, same batch) agree with float32's to
    bfloat16's precision, and all are finite."""
    trainer, bf16, seen, results = _first_losses(
        tiny_cfg, tmp_path / "bf16", **{"train.amp.enabled": True, "train.amp.dtype": "bfloat16"}
    )
    assert type(trainer._trainer).__name__ == "AutocastTrainer"
    assert trainer._trainer.precision == torch.bfloat16
    assert not trainer._trainer.grad_scaler.is_enabled()
    assert seen == {"train": torch.bfloat16, "eval": torch.bfloat16}
    _, fp32, seen32, _ = _first_losses(tiny_cfg, tmp_path / "fp32", **{"train.amp.enabled": False})
    assert seen32 == {"train": torch.float32, "eval": torch.float32}
    assert [r["iteration"] for r in bf16] == [0, 1]
    for name in ("loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"):
        assert all(math.isfinite(r[name]) for r in bf16), name
        assert bf16[0][name] == pytest.approx(fp32[0][name], rel=0.05, abs=2e-3), name
    assert math.isfinite(results["cityscapes"]["AP"])


def test_plots_are_written_as_png(tiny_cfg, tmp_path, scripted_metric):
    """The plots hold one point per logged iteration, with the logged values: every loss and
    the LR at iterations 0-3, the metric at each evaluation (after iteration 1, and at the
    end, logged at max_iter as detectron2 does)."""
    from d2_finetune.engine.hooks import plot_metrics

    scripted_metric += [1.0, 2.0, 3.0, 4.0]
    out = tmp_path / "run"
    cfg = tiny_cfg(output_dir=str(out), **{"train.eval_period": 2})
    trainer = FinetuneTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    for name in ("losses.png", "lr.png", "metrics.png"):
        with Image.open(out / "plots" / name) as im:
            im.verify()
            assert im.size[0] > 400 and im.size[1] > 200
    drawn = plot_metrics(
        str(out / "metrics.json"), str(tmp_path / "replot"), trainer.evaluation_metrics
    )
    assert trainer.evaluation_metrics == ["cityscapes/AP", "cityscapes/AP50"]
    with open(out / "metrics.json") as f:
        rows = [json.loads(line) for line in f]
    losses = {k for r in rows for k in r if "loss" in k}
    assert losses == set(drawn["losses.png"]) and "total_loss" in losses
    for key in losses:
        xs, ys = drawn["losses.png"][key]
        assert xs == [0, 1, 2, 3], key
        assert ys == [r[key] for r in rows if key in r], key
    assert drawn["lr.png"]["lr"][0] == [0, 1, 2, 3]
    assert drawn["metrics.png"] == {
        "cityscapes/AP": ([1, 4], [1.0, 2.0]),
        "cityscapes/AP50": ([1, 4], [0.0, 0.0]),
    }


def train_run(tiny_cfg, out, resume=False, **overrides):
    cfg = tiny_cfg(
        output_dir=str(out), **{"train.eval_period": 1, "train.checkpointer.period": 1, **overrides}
    )
    trainer = FinetuneTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    trainer.train()


def best_record(out):
    with open(out / "model_best.json") as f:
        return json.load(f)


def test_the_best_survives_resume(tiny_cfg, tmp_path, scripted_metric):
    out = tmp_path / "run"
    scripted_metric += [30.0, 10.0]
    train_run(tiny_cfg, out, **{"train.max_iter": 2, "lr_multiplier.steps": [1]})
    scripted_metric += [20.0, 25.0]
    train_run(tiny_cfg, out, resume=True, **{"train.max_iter": 4, "lr_multiplier.steps": [3]})
    assert scripted_metric == []
    assert state(out / "model_best.pth")["best_metric"] == {"cityscapes/AP": 30.0}
    assert best_record(out) == {
        "metric": "cityscapes/AP",
        "value": 30.0,
        "iteration": 0,
        "evals_without_improvement": 3,
    }


def test_a_new_run_in_the_same_folder_keeps_its_own_best(tiny_cfg, tmp_path, scripted_metric):
    out = tmp_path / "run"
    scripted_metric += [30.0, 10.0]
    train_run(tiny_cfg, out, **{"train.max_iter": 2, "lr_multiplier.steps": [1]})
    scripted_metric += [5.0, 1.0]
    train_run(tiny_cfg, out, **{"train.max_iter": 2, "lr_multiplier.steps": [1]})
    assert state(out / "model_best.pth")["best_metric"] == {"cityscapes/AP": 5.0}
    assert best_record(out)["value"] == 5.0


def test_an_unreadable_best_record_stops_resume_and_names_it(tiny_cfg, tmp_path, scripted_metric):
    from d2_finetune.errors import CheckpointError

    out = tmp_path / "run"
    scripted_metric += [30.0, 10.0]
    train_run(tiny_cfg, out, **{"train.max_iter": 2, "lr_multiplier.steps": [1]})
    (out / "model_best.json").write_text('{"metric": "cityscapes/AP", "val')
    with pytest.raises(
        CheckpointError,
        match=rf"Cannot read the best-checkpoint record "
        rf"{out}/model_best.json \(JSONDecodeError: .*\)\. "
        r"Restore it, or delete it together with model_best.pth",
    ):
        train_run(tiny_cfg, out, resume=True, **{"train.max_iter": 4, "lr_multiplier.steps": [3]})


def test_early_stopping_without_any_valid_value(tiny_cfg, tmp_path, scripted_metric, caplog):
    scripted_metric += [float("nan"), float("nan"), 1.0]
    out = tmp_path / "run"
    with caplog.at_level("INFO", logger="d2_finetune"):
        train_run(tiny_cfg, out, **{"train.patience": 2})
    assert "has not improved for 2 evaluations (patience 2); no valid value yet." in caplog.text
    assert scripted_metric == [1.0]
    assert not (out / "model_best.pth").exists()
    assert best_record(out)["value"] is None
    assert state(out / "model_final.pth")["iteration"] == 1
