"""Learning-rate schedules stated in iterations, as in MMDetection's ``lr_config``."""
import math

from fvcore.common.param_scheduler import MultiStepParamScheduler

from detectron2.solver import WarmupParamScheduler

from .errors import ConfigError

__all__ = ["warmup_multistep", "resolve_schedule"]


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


def resolve_schedule(cfg, dataset_size=None, world_size=1):
    """Fill in the iteration schedule from epoch keys, scale the LR, and describe the result.

    With ``train.epochs`` set, one epoch is ``ceil(dataset_size * train.repeat / batch)``
    iterations (``train.repeat`` passes, as MMDetection's RepeatDataset), ``train.max_iter`` is
    ``epochs`` of them and ``lr_multiplier.steps`` come from ``train.step_epochs``. With
    ``optimizer.reference_batch`` set, the LR scales linearly by ``batch / reference_batch``.
    ``cfg`` is edited in place.

    Returns:
        list of (name, value) rows describing the resolved schedule.
    """
    batch = cfg.dataloader.train.total_batch_size
    if batch % world_size:
        raise ConfigError(
            f"dataloader.train.total_batch_size={batch} is not divisible by the {world_size} "
            "processes (GPUs) of this run: use a multiple of the GPU count."
        )
    rows = []
    epochs = cfg.train.get("epochs")
    if epochs is not None:
        repeat = cfg.train.get("repeat", 1)
        if dataset_size is None or dataset_size <= 0:
            raise ConfigError("train.epochs needs a non-empty training dataset to count iterations.")
        if not (isinstance(repeat, int) and repeat >= 1):
            raise ConfigError(f"train.repeat must be an integer >= 1, got {repeat!r}.")
        per_epoch = math.ceil(dataset_size * repeat / batch)
        step_epochs = list(cfg.train.get("step_epochs") or [])
        if any(not 0 < e < epochs for e in step_epochs):
            raise ConfigError(
                f"train.step_epochs {step_epochs} must lie strictly between 0 and train.epochs={epochs}."
            )
        cfg.train.max_iter = int(round(epochs * per_epoch))
        cfg.lr_multiplier.steps = [int(round(e * per_epoch)) for e in step_epochs]
        rows += [
            ("epochs", f"{epochs} x repeat {repeat} over {dataset_size} images"),
            ("iterations per epoch", f"ceil({dataset_size} x {repeat} / {batch}) = {per_epoch}"),
        ]
    reference = cfg.optimizer.get("reference_batch")
    if reference:
        scaled = cfg.optimizer.lr * batch / reference
        rows.append(("lr scaling", f"{cfg.optimizer.lr:g} x {batch} / {reference} = {scaled:g}"))
        cfg.optimizer.lr = scaled
        cfg.optimizer.reference_batch = None
    lm = cfg.lr_multiplier
    rows += [
        ("max_iter", cfg.train.max_iter),
        ("lr steps", f"{list(lm.steps)} (x{lm.get('gamma', 0.1)} each)"),
        ("warmup", f"{lm.get('warmup_iters', 0)} iterations from {lm.get('warmup_factor', 0.001)} x lr"),
        ("base lr", f"{cfg.optimizer.lr:g}"),
        ("batch", f"{batch} total = {batch // world_size} images per GPU x {world_size} GPU(s)"),
    ]
    return rows
