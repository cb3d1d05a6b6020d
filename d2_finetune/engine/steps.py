"""One training iteration: detectron2's SimpleTrainer and AMPTrainer, with the losses checked on
every process (so a NaN stops all of them at the same iteration) and autocast on any device."""

import time

import numpy as np
import torch

from detectron2.engine import AMPTrainer, SimpleTrainer
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from .amp import amp_dtype, amp_enabled

__all__ = ["AutocastTrainer", "FinetuneSimpleTrainer", "build_step", "write_metrics"]


def build_step(cfg, model, data_loader, optimizer):
    """The iteration of ``cfg``: :class:`AutocastTrainer` when AMP is on (see
    :func:`.amp.amp_enabled`), else :class:`FinetuneSimpleTrainer`."""
    if amp_enabled(cfg):
        return AutocastTrainer(
            model,
            data_loader,
            optimizer,
            device_type=torch.device(cfg.train.device).type,
            precision=amp_dtype(cfg),
        )
    return FinetuneSimpleTrainer(model, data_loader, optimizer)


class SharedMetrics:
    """For detectron2's SimpleTrainer and its subclasses: the iteration's losses are averaged
    over all processes on every process (detectron2 gathers them on the main process only), so
    a NaN/Inf loss stops every process at the same iteration instead of the main one alone."""

    def _write_metrics(self, loss_dict, data_time, prefix="", iter=None):
        iter = self.iter if iter is None else iter
        if (iter + 1) % self.gather_metric_period == 0:
            write_metrics(loss_dict, data_time, iter, prefix)


def write_metrics(loss_dict, data_time, cur_iter, prefix=""):
    """detectron2's ``SimpleTrainer.write_metrics``, deciding on every process: the losses of
    all processes are gathered on each, and each raises ``FloatingPointError`` for a
    non-finite total; the main process stores the averages for the writers."""
    metrics = {k: v.detach().cpu().item() for k, v in loss_dict.items()}
    metrics["data_time"] = data_time
    storage = get_event_storage()
    storage.put_scalar("rank_data_time", data_time, cur_iter=cur_iter)
    gathered = comm.all_gather(metrics)
    data_time = max(m.pop("data_time") for m in gathered)
    averages = {k: float(np.mean([m[k] for m in gathered])) for k in gathered[0]}
    total = sum(averages.values())
    if not np.isfinite(total):
        raise FloatingPointError(
            f"Loss became infinite or NaN at iteration={cur_iter}!\nloss_dict = {averages}"
        )
    if comm.is_main_process():
        storage.put_scalar("data_time", data_time, cur_iter=cur_iter)
        storage.put_scalar(f"{prefix}total_loss", total, cur_iter=cur_iter)
        if len(averages) > 1:
            storage.put_scalars(cur_iter=cur_iter, **averages)


class FinetuneSimpleTrainer(SharedMetrics, SimpleTrainer):
    """detectron2's SimpleTrainer with the losses checked on every process."""


class AutocastTrainer(SharedMetrics, AMPTrainer):
    """detectron2's AMPTrainer on any device: ``torch.autocast(device_type, dtype)``.

    Loss scaling is used for float16 on CUDA only; bfloat16 needs none.
    """

    def __init__(self, model, data_loader, optimizer, *, device_type, precision, **kwargs):
        scaler = torch.amp.GradScaler(
            device_type, enabled=(device_type == "cuda" and precision == torch.float16)
        )
        super().__init__(
            model, data_loader, optimizer, grad_scaler=scaler, precision=precision, **kwargs
        )
        self.device_type = device_type

    def run_step(self):
        assert self.model.training, "[AutocastTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start

        if self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        with torch.autocast(self.device_type, dtype=self.precision):
            loss_dict = self.model(data)
            if isinstance(loss_dict, torch.Tensor):
                losses = loss_dict
                loss_dict = {"total_loss": loss_dict}
            else:
                losses = sum(loss_dict.values())
        if not self.zero_grad_before_forward:
            self.optimizer.zero_grad()
        self.grad_scaler.scale(losses).backward()
        self.after_backward()
        self._write_metrics(loss_dict, data_time)
        self.grad_scaler.step(self.optimizer)
        self.grad_scaler.update()
