import pytest
import torch

from detectron2.solver import LRMultiplier
from detectron2.solver.lr_scheduler import WarmupMultiStepLR

from d2_finetune.errors import ConfigError
from d2_finetune.solver import warmup_multistep


def lr_curves(max_iter, steps, warmup_iters, warmup_factor=0.001, gamma=0.1, method="linear"):
    ours = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    stock = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.01)
    ours_sched = LRMultiplier(
        ours,
        warmup_multistep(
            max_iter=max_iter,
            steps=steps,
            gamma=gamma,
            warmup_iters=warmup_iters,
            warmup_factor=warmup_factor,
            warmup_method=method,
        ),
        max_iter,
    )
    stock_sched = WarmupMultiStepLR(
        stock,
        milestones=steps,
        gamma=gamma,
        warmup_factor=warmup_factor,
        warmup_iters=warmup_iters,
        warmup_method=method,
    )
    a, b = [], []
    for _ in range(max_iter):
        a.append(ours.param_groups[0]["lr"])
        b.append(stock.param_groups[0]["lr"])
        ours.step()
        stock.step()
        ours_sched.step()
        stock_sched.step()
    return a, b


def test_tutorial_schedule_matches_warmup_multistep_lr_at_every_iteration():
    ours, stock = lr_curves(23800, [20825], 500)
    assert ours == pytest.approx(stock, rel=1e-12)
    assert ours[0] == pytest.approx(0.01 * 0.001)
    assert ours[500] == pytest.approx(0.01)
    assert ours[20824] == pytest.approx(0.01)
    assert ours[20825] == pytest.approx(0.001)


@pytest.mark.parametrize("method", ["linear", "constant"])
def test_several_steps_and_warmup_methods_match(method):
    ours, stock = lr_curves(300, [100, 200, 250], 37, warmup_factor=0.01, gamma=0.5, method=method)
    assert ours == pytest.approx(stock, rel=1e-12)


def test_no_warmup():
    ours, stock = lr_curves(50, [10], 0)
    assert ours == pytest.approx(stock, rel=1e-12)
    assert ours[0] == pytest.approx(0.01)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(max_iter=-5, steps=[]), r"train\.max_iter must be a positive integer, got -5"),
        (dict(max_iter=100, steps=[100]), r"steps \[100\] reach beyond train\.max_iter=100"),
        (dict(max_iter=100, steps=[60, 50]), r"steps must be increasing positive iterations"),
        (
            dict(max_iter=100, steps=[50], warmup_iters=101),
            r"warmup_iters must be in \[0, train\.max_iter=100\]",
        ),
        (dict(max_iter=100, steps=[50], warmup_factor=0), r"warmup_factor must be in \(0, 1\]"),
        (
            dict(max_iter=100, steps=[50], warmup_method="cosine"),
            r"warmup_method must be 'linear' or 'constant'",
        ),
    ],
)
def test_bad_schedules_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        warmup_multistep(**kwargs)


def schedule_cfg(*overrides):
    import os

    from d2_finetune.config import load_config

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return load_config(os.path.join(repo, "configs", "cityscapes_ft.py"), list(overrides))


def test_epochs_reproduce_the_tutorials_iterations():
    """The tutorial's 8 epochs of RepeatDataset(8) at batch 8, the step after epoch 7, as
    iterations on Cityscapes' 2,975 images (the arithmetic configs/cityscapes_ft.py states)."""
    from d2_finetune.solver import resolve_schedule

    cfg = schedule_cfg("train.epochs=8", "train.repeat=8", "train.step_epochs=[7]")
    rows = dict(resolve_schedule(cfg, dataset_size=2975))
    assert cfg.train.max_iter == 64 * 2975 // 8 == 23800
    assert list(cfg.lr_multiplier.steps) == [56 * 2975 // 8] == [20825]
    assert rows["iterations per epoch"] == "ceil(2975 x 8 / 8) = 2975"
    assert rows["batch"] == "8 total = 8 images per GPU x 1 GPU(s)"


def test_epochs_round_up_partial_batches_and_follow_the_batch():
    from d2_finetune.solver import resolve_schedule

    cfg = schedule_cfg(
        "train.epochs=2",
        "train.repeat=1",
        "train.step_epochs=[1]",
        "dataloader.train.total_batch_size=16",
    )
    resolve_schedule(cfg, dataset_size=100, world_size=4)
    assert cfg.train.max_iter == 2 * 7  # ceil(100 / 16) = 7 iterations per epoch
    assert list(cfg.lr_multiplier.steps) == [7]


def test_linear_lr_scaling_from_a_reference_batch():
    """The schedule's table states the scaled LR, which the optimizer then uses."""
    from d2_finetune.solver import resolve_schedule

    cfg = schedule_cfg("optimizer.reference_batch=8", "dataloader.train.total_batch_size=16")
    rows = dict(resolve_schedule(cfg, dataset_size=2975, world_size=2))
    assert rows["lr scaling"] == "0.01 x 16 / 8 = 0.02"
    assert rows["base lr"] == "0.02"
    assert rows["batch"] == "16 total = 8 images per GPU x 2 GPU(s)"
    cfg.optimizer.params.model = torch.nn.Linear(1, 1)
    from detectron2.config import instantiate

    assert instantiate(cfg.optimizer).param_groups[0]["lr"] == pytest.approx(0.02)
    unscaled = schedule_cfg()
    assert "lr scaling" not in dict(resolve_schedule(unscaled, dataset_size=2975))


@pytest.mark.parametrize(
    "overrides, size, message",
    [
        (
            ["train.step_epochs=[8]"],
            10,
            r"step_epochs \[8\] must lie strictly between 0 and train\.epochs=8",
        ),
        (["train.repeat=0"], 10, r"train\.repeat must be an integer >= 1"),
        (
            [],
            0,
            r"A schedule in epochs \(train\.epochs, or a period such as "
            r"train\.eval_period='1 epoch'\) needs a non-empty training dataset",
        ),
        (
            ["train.epochs=null", "train.max_iter=100"],
            None,
            r"A schedule in epochs .*needs a non-empty training dataset",
        ),  # eval_period="1 epoch"
    ],
)
def test_bad_epoch_schedules_are_refused(overrides, size, message):
    from d2_finetune.solver import resolve_schedule

    with pytest.raises(ConfigError, match=message):
        resolve_schedule(schedule_cfg(*overrides), dataset_size=size)
