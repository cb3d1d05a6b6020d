"""The optimizer and the schedule: SGD with linear LR scaling, WarmupMultiStepLR's multiplier,
and schedules stated in epochs (as in MMDetection's ``runner``/``lr_config``) resolved to
iterations."""

import math
import re

import torch
from omegaconf import OmegaConf

from detectron2.solver import WarmupParamScheduler
from fvcore.common.param_scheduler import MultiStepParamScheduler

from .errors import ConfigError

__all__ = [
    "PERIOD_KEYS",
    "epochs_in",
    "needs_dataset_size",
    "resolve_schedule",
    "scaled_lr",
    "scaled_sgd",
    "warmup_multistep",
]

# Periods that may be given in epochs ("2 epochs") instead of iterations.
PERIOD_KEYS = ("train.eval_period", "train.checkpointer.period", "train.val_loss_period")
_EPOCHS = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*epochs?\s*$")


def epochs_in(value):
    """The number of epochs ``value`` states ("2 epochs", "1 epoch", "0.5 epochs"), or None when
    it is not such a string (a count of iterations)."""
    match = _EPOCHS.match(value) if isinstance(value, str) else None
    return float(match.group(1)) if match else None


def scaled_lr(lr, batch, reference_batch):
    """The linear scaling rule: ``lr`` stated for ``reference_batch`` images per iteration, used
    with ``batch`` (unchanged without a reference batch)."""
    return lr * batch / reference_batch if reference_batch else lr


def scaled_sgd(
    params,
    lr,
    momentum=0.0,
    dampening=0.0,
    weight_decay=0.0,
    nesterov=False,
    reference_batch=None,
    total_batch_size=None,
):
    """``torch.optim.SGD`` whose ``lr``, stated for ``reference_batch`` images per iteration,
    scales linearly to ``total_batch_size`` (see :func:`scaled_lr`); with ``reference_batch=None``
    the LR is used as given."""
    return torch.optim.SGD(
        params,
        lr=scaled_lr(lr, total_batch_size, reference_batch),
        momentum=momentum,
        dampening=dampening,
        weight_decay=weight_decay,
        nesterov=nesterov,
    )


def warmup_multistep(
    *, max_iter, steps, gamma=0.1, warmup_iters=0, warmup_factor=0.001, warmup_method="linear"
):
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


def needs_dataset_size(cfg):
    """Whether the schedule is stated in epochs anywhere (``train.epochs`` or a period of
    :data:`PERIOD_KEYS`), so that resolving it needs the training set's size."""
    return cfg.train.get("epochs") is not None or any(
        epochs_in(OmegaConf.select(cfg, key)) is not None for key in PERIOD_KEYS
    )


def resolve_schedule(cfg, dataset_size=None, world_size=1):
    """Turn a schedule stated in epochs into iterations, and describe the schedule.

    One epoch is ``ceil(dataset_size * train.repeat / batch)`` iterations (``train.repeat``
    passes, as MMDetection's RepeatDataset). With ``train.epochs`` set, ``train.max_iter`` is
    that many epochs (unless given: then the length is that, e.g. for a short trial run) and
    ``lr_multiplier.steps`` come from ``train.step_epochs`` (at the same fractions of a given
    length); a period of :data:`PERIOD_KEYS` given as "N epochs" becomes N epochs of
    iterations. ``cfg`` is edited in place.

    Returns:
        list of (name, value) rows describing the resolved schedule.
    """
    batch = cfg.dataloader.train.total_batch_size
    rows = []
    per_epoch = None
    if needs_dataset_size(cfg):
        repeat = cfg.train.get("repeat", 1)
        if dataset_size is None or dataset_size <= 0:
            raise ConfigError(
                "A schedule in epochs (train.epochs, or a period such as "
                "train.eval_period='1 epoch') needs a non-empty training dataset "
                "to count iterations."
            )
        if not (isinstance(repeat, int) and repeat >= 1):
            raise ConfigError(f"train.repeat must be an integer >= 1, got {repeat!r}.")
        per_epoch = math.ceil(dataset_size * repeat / batch)
        rows.append(
            ("iterations per epoch", f"ceil({dataset_size} x {repeat} / {batch}) = {per_epoch}")
        )
    epochs = cfg.train.get("epochs")
    if epochs is not None:
        step_epochs = list(cfg.train.get("step_epochs") or [])
        if any(not 0 < e < epochs for e in step_epochs):
            raise ConfigError(
                f"train.step_epochs {step_epochs} must lie strictly between 0 and "
                f"train.epochs={epochs}."
            )
        rows.insert(
            0,
            (
                "epochs",
                f"{epochs} x repeat {cfg.train.get('repeat', 1)} over {dataset_size} images",
            ),
        )
        if cfg.train.get("max_iter") is None:
            cfg.train.max_iter = int(round(epochs * per_epoch))
            cfg.lr_multiplier.steps = [int(round(e * per_epoch)) for e in step_epochs]
        else:  # the length given in iterations; the steps keep their place in it
            cfg.lr_multiplier.steps = [
                int(round(e / epochs * cfg.train.max_iter)) for e in step_epochs
            ]
            rows.append(
                (
                    "length",
                    f"train.max_iter={cfg.train.max_iter} given: the "
                    f"{epochs} epochs' steps at the same fractions of it",
                )
            )
    for key in PERIOD_KEYS:
        stated = epochs_in(OmegaConf.select(cfg, key))
        if stated is not None:
            iterations = max(1, int(round(stated * per_epoch)))
            OmegaConf.update(cfg, key, iterations)
            rows.append((key, f"{stated:g} epoch(s) = {iterations} iterations"))
    optimizer = cfg.optimizer
    reference = optimizer.get("reference_batch")
    lr = scaled_lr(optimizer.lr, batch, reference)
    if reference:
        rows.append(("lr scaling", f"{optimizer.lr:g} x {batch} / {reference} = {lr:g}"))
    lm = cfg.lr_multiplier
    rows += [
        ("max_iter", cfg.train.max_iter),
        ("lr steps", f"{list(lm.steps)} (x{lm.get('gamma', 0.1)} each)"),
        (
            "warmup",
            f"{lm.get('warmup_iters', 0)} iterations from {lm.get('warmup_factor', 0.001)} x lr",
        ),
        ("base lr", f"{lr:g}"),
        ("batch", f"{batch} total = {batch // world_size} images per GPU x {world_size} GPU(s)"),
    ]
    return rows
