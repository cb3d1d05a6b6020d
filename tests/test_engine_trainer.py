import json
import os

import pytest
import torch

from d2_finetune.data.loaders import build_train_loader
from d2_finetune.engine import FinetuneTrainer, evaluate, load_for_inference
from d2_finetune.errors import CheckpointError

from conftest import DEMO_CONFIG


def test_a_few_iterations_train_and_checkpoint(tiny_cfg, tmp_path):
    cfg = tiny_cfg(output_dir=str(tmp_path / "run"))
    trainer = FinetuneTrainer(cfg)
    assert trainer.model.roi_heads.box_predictor.cls_score.out_features == 9
    trainer.resume_or_load(resume=False)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.train()
    assert trainer.iter == cfg.train.max_iter  # TrainerBase leaves iter one past the last step
    after = trainer.model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(k.startswith("roi_heads.box_predictor") for k in changed)
    # freeze_at=2: the stem and res2 do not train.
    assert not [
        k for k in changed if k.startswith(("backbone.bottom_up.stem", "backbone.bottom_up.res2"))
    ]
    out = tmp_path / "run"
    assert {"model_0000001.pth", "model_0000003.pth", "model_final.pth", "last_checkpoint"} <= set(
        os.listdir(out)
    )
    with open(out / "metrics.json") as f:
        rows = [json.loads(line) for line in f]
    assert [r["iteration"] for r in rows if "total_loss" in r] == [0, 1, 2, 3]
    assert all(torch.isfinite(torch.tensor(r["total_loss"])) for r in rows if "total_loss" in r)
    # The LR follows lr_multiplier: warmup 1 iteration, step at 3.
    lrs = {r["iteration"]: r["lr"] for r in rows if "lr" in r}
    base = cfg.optimizer.lr
    assert lrs[0] == pytest.approx(base * cfg.lr_multiplier.warmup_factor)
    assert lrs[1] == pytest.approx(base)
    assert lrs[3] == pytest.approx(base * 0.1)


def test_resume_continues_at_the_next_iteration(tiny_cfg, tmp_path):
    out = str(tmp_path / "run")
    cfg = tiny_cfg(output_dir=out, **{"train.max_iter": 2, "lr_multiplier.steps": [1]})
    trainer = FinetuneTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    saved = {k: v.clone() for k, v in trainer.model.state_dict().items()}

    cfg = tiny_cfg(output_dir=out, **{"train.max_iter": 4, "lr_multiplier.steps": [1]})
    resumed = FinetuneTrainer(cfg)
    resumed.resume_or_load(resume=True)
    assert resumed.start_iter == 2
    for k, v in resumed.model.state_dict().items():
        assert torch.equal(v, saved[k]), k
    assert resumed.scheduler.last_epoch == 2
    resumed.train()
    assert resumed.iter == 4


def test_without_resume_a_run_starts_from_init_checkpoint(tiny_cfg, tmp_path):
    """A second run in the same folder without --resume starts from train.init_checkpoint's
    weights at iteration 0, not from the first run's checkpoints."""
    out = str(tmp_path / "run")
    cfg = tiny_cfg(output_dir=out, **{"train.max_iter": 2, "lr_multiplier.steps": [1]})
    first = FinetuneTrainer(cfg)
    first.resume_or_load(resume=False)
    first.train()
    trained = torch.load(os.path.join(out, "model_final.pth"), weights_only=True)["model"]
    init = torch.load(cfg.train.init_checkpoint, weights_only=True)["model"]
    again = FinetuneTrainer(cfg)
    again.resume_or_load(resume=False)
    assert again.start_iter == 0
    state = again.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in init.items())
    assert any(not torch.equal(state[k], v) for k, v in trained.items())


def test_eval_only_evaluates_a_fine_tuned_checkpoint(tiny_cfg, tmp_path):
    """--eval-only of model_final.pth gives the results of the evaluation that ended training
    (the same weights), metric by metric."""
    out = str(tmp_path / "run")
    cfg = tiny_cfg(output_dir=out, **{"train.max_iter": 2, "lr_multiplier.steps": [1]})
    trainer = FinetuneTrainer(cfg)
    trainer.resume_or_load(resume=False)
    at_end = trainer.train()
    cfg = tiny_cfg(
        output_dir=str(tmp_path / "eval"),
        **{"train.init_checkpoint": os.path.join(out, "model_final.pth")},
    )
    results = evaluate(cfg, load_for_inference(cfg))
    assert set(results) == {"cityscapes", "coco/bbox", "coco/segm"}
    assert json.dumps(results, sort_keys=True) == json.dumps(at_end, sort_keys=True)
    with open(os.path.join(out, "inference", "coco_instances_results.json")) as f:
        predictions = json.load(f)
    with open(tmp_path / "eval" / "inference" / "coco_instances_results.json") as f:
        assert json.load(f) == predictions and predictions


def test_evaluating_in_a_training_output_dir_keeps_its_transfer_record(tiny_cfg, tmp_path):
    out = str(tmp_path / "run")
    cfg = tiny_cfg(
        output_dir=out,
        **{"train.max_iter": 1, "lr_multiplier.steps": [], "lr_multiplier.warmup_iters": 0},
    )
    trainer = FinetuneTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    with open(os.path.join(out, "transfer.json")) as f:
        started = f.read()
    final = os.path.join(out, "model_final.pth")
    load_for_inference(tiny_cfg(output_dir=out, **{"train.init_checkpoint": final}))
    with open(os.path.join(out, "transfer.json")) as f:
        assert f.read() == started
    with open(os.path.join(out, "inference_weights.json")) as f:
        assert json.load(f)["source"] == final


def test_eval_only_refuses_a_checkpoint_whose_head_does_not_fit(tiny_cfg, tmp_path):
    from detectron2.config import instantiate

    from d2_finetune.config import load_config

    out = str(tmp_path / "coco")
    model = instantiate(load_config(DEMO_CONFIG, ["model.roi_heads.num_classes=80"]).model)
    os.makedirs(out)
    torch.save({"model": model.state_dict()}, os.path.join(out, "coco.pth"))
    cfg = tiny_cfg(
        output_dir=str(tmp_path / "eval"),
        **{"train.init_checkpoint": os.path.join(out, "coco.pth")},
    )
    with pytest.raises(CheckpointError, match=r"does not fit this model's classes.*cls_score"):
        evaluate(cfg, load_for_inference(cfg))


class CapturePredictions:
    """A DatasetEvaluator that keeps the raw predictions."""

    def __init__(self):
        self.seen = {}

    def reset(self):
        self.seen = {}

    def process(self, inputs, outputs):
        for x, y in zip(inputs, outputs):
            inst = y["instances"].to("cpu")
            self.seen[x["file_name"]] = (
                inst.pred_boxes.tensor,
                inst.scores,
                inst.pred_classes,
                inst.pred_masks,
            )

    def evaluate(self):
        return {}


def test_batched_evaluation_gives_the_same_predictions(tiny_cfg):
    one, batched = CapturePredictions(), CapturePredictions()
    cfg = tiny_cfg(**{"dataloader.test.batch_size": 1})
    model = load_for_inference(cfg)
    evaluate(cfg, model, evaluators=one)
    cfg = tiny_cfg(**{"dataloader.test.batch_size": 3})
    assert len(FinetuneTrainer.build_test_loader(cfg)) == 1  # the 3 val images in one forward
    evaluate(cfg, model, evaluators=batched)
    assert one.seen.keys() == batched.seen.keys() and len(one.seen) == 3
    detections = 0
    for name, (boxes, scores, classes, masks) in one.seen.items():
        b_boxes, b_scores, b_classes, b_masks = batched.seen[name]
        assert torch.equal(classes, b_classes)
        assert torch.allclose(boxes, b_boxes, atol=1e-3)
        assert torch.allclose(scores, b_scores, atol=1e-5)
        assert (masks != b_masks).float().mean() < 1e-3
        detections += len(classes)
    assert detections > 0


def _losses_and_grads(model, batch):
    from detectron2.utils.events import EventStorage

    model.train()
    model.zero_grad()
    torch.manual_seed(1)  # the proposal and anchor samplers draw random numbers
    with EventStorage(0):
        losses = model(batch)
    sum(losses.values()).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return {k: v.item() for k, v in losses.items()}, grads


def test_channels_last_gives_the_same_losses_and_gradients(tiny_cfg):
    cfg = tiny_cfg(**{"train.channels_last": False})
    plain = load_for_inference(cfg)  # the calibrated init, in both layouts
    nhwc = load_for_inference(tiny_cfg(**{"train.channels_last": True}))
    convs = [p for n, p in nhwc.named_parameters() if p.dim() == 4]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    assert not any(
        p.is_contiguous(memory_format=torch.channels_last) and not p.is_contiguous()
        for p in plain.parameters()
    )
    batch = next(iter(build_train_loader(cfg)[0]))
    losses, grads = _losses_and_grads(plain, batch)
    nhwc_losses, nhwc_grads = _losses_and_grads(nhwc, batch)
    assert losses.keys() == nhwc_losses.keys() and len(losses) == 5
    for name, value in losses.items():
        assert nhwc_losses[name] == pytest.approx(value, rel=1e-4, abs=1e-6), name
    # Float32 sums in another order: the gradients agree as a whole and layer by layer.
    assert grads.keys() == nhwc_grads.keys()
    flat = torch.cat([g.flatten() for g in grads.values()])
    nhwc_flat = torch.cat([nhwc_grads[n].flatten() for n in grads])
    assert torch.nn.functional.cosine_similarity(flat, nhwc_flat, dim=0) > 0.9999
    for name, grad in grads.items():
        diff = (nhwc_grads[name] - grad).norm() / (grad.norm() + 1e-12)
        assert diff < 1e-2, name


def test_images_to_device_moves_the_images_only():
    from d2_finetune.data.loaders import ImagesToDevice

    image = torch.zeros(3, 4, 5, dtype=torch.uint8)
    other = torch.ones(2)
    sample = {"image": image, "instances": other, "file_name": "a.png"}
    batches = [[sample, {"file_name": "no image"}]]
    (moved,) = list(ImagesToDevice(batches, torch.device("meta")))
    assert moved[0]["image"].device.type == "meta"
    assert moved[0]["image"].shape == image.shape and moved[0]["image"].dtype == torch.uint8
    assert moved[0]["instances"] is other and moved[0]["file_name"] == "a.png"
    assert moved[1] == {"file_name": "no image"}
    assert sample["image"] is image  # the loader's own sample is left as it was


def test_training_batches_are_neither_pinned_nor_moved_on_a_cpu(tiny_cfg):
    from detectron2.data.common import AspectRatioGroupedDataset

    from d2_finetune.config import load_config

    assert load_config(DEMO_CONFIG).dataloader.train.pin_memory is True
    cfg = tiny_cfg(**{"dataloader.train.num_workers": 1})
    assert cfg.dataloader.train.pin_memory is False  # resolved: page-locking is for a GPU
    loader, _ = build_train_loader(cfg)
    assert isinstance(loader, AspectRatioGroupedDataset)  # no ImagesToDevice wrapper
    assert loader.dataset.pin_memory is False
