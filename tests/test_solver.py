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
        warmup_multistep(max_iter=max_iter, steps=steps, gamma=gamma, warmup_iters=warmup_iters,
                         warmup_factor=warmup_factor, warmup_method=method),
        max_iter,
    )
    stock_sched = WarmupMultiStepLR(stock, milestones=steps, gamma=gamma, warmup_factor=warmup_factor,
                                    warmup_iters=warmup_iters, warmup_method=method)
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
        (dict(max_iter=100, steps=[50], warmup_iters=101), r"warmup_iters must be in \[0, train\.max_iter=100\]"),
        (dict(max_iter=100, steps=[50], warmup_factor=0), r"warmup_factor must be in \(0, 1\]"),
        (dict(max_iter=100, steps=[50], warmup_method="cosine"), r"warmup_method must be 'linear' or 'constant'"),
    ],
)
def test_bad_schedules_are_refused(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        warmup_multistep(**kwargs)
