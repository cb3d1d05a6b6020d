"""Learning-rate schedules stated in iterations, as in MMDetection's ``lr_config``."""
from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.solver import WarmupParamScheduler

from .errors import ConfigError

__all__ = ["warmup_multistep"]


def warmup_multistep(*, max_iter, steps, gamma=0.1, warmup_iters=0, warmup_factor=0.001,
                     warmup_method="linear"):
    """LR multiplier with the semantics of ``detectron2.solver.WarmupMultiStepLR``.

    The multiplier is ``gamma ** (number of steps <= iter)``; during the first ``warmup_iters``
    iterations it ramps from ``warmup_factor`` (linear) or stays at it (constant).

    Returns:
        fvcore ParamScheduler, to be wrapped in ``detectron2.solver.LRMultiplier``.
    """
    if not isinstance(max_iter, int) or max_iter <= 0:
        raise ConfigError(f"train.max_iter must be a positive integer, got {max_iter!r}.")
    steps = list(steps)
    if any(not isinstance(s, int) or s <= 0 for s in steps) or steps != sorted(set(steps)):
        raise ConfigError(
            f"lr_multiplier.steps must be increasing positive iterations, got {steps}."
        )
    if steps and steps[-1] >= max_iter:
        raise ConfigError(
            f"lr_multiplier.steps {steps} reach beyond train.max_iter={max_iter}: "
            "every step must come before the last iteration."
        )
    if not 0 <= warmup_iters <= max_iter:
        raise ConfigError(
            f"lr_multiplier.warmup_iters must be in [0, train.max_iter={max_iter}], "
            f"got {warmup_iters}."
        )
    if not 0 < warmup_factor <= 1:
        raise ConfigError(f"lr_multiplier.warmup_factor must be in (0, 1], got {warmup_factor}.")
    if warmup_method not in ("linear", "constant"):
        raise ConfigError(
            f"lr_multiplier.warmup_method must be 'linear' or 'constant', got {warmup_method!r}."
        )
    schedule = MultiStepParamScheduler(
        values=[gamma**k for k in range(len(steps) + 1)], milestones=steps, num_updates=max_iter
    )
    if warmup_iters == 0:
        return schedule
    return WarmupParamScheduler(schedule, warmup_factor, warmup_iters / max_iter, warmup_method)
