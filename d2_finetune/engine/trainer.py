"""FinetuneTrainer: the training loop of a LazyConfig, on detectron2's DefaultTrainer."""

import copy
import logging
import os
import weakref

import torch

from detectron2.config import LazyConfig, instantiate
from detectron2.engine import DefaultTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model, default_writers
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, EventStorage, JSONWriter

from ..data.loaders import build_test_loader, build_train_loader, build_val_loss_loader
from ..data.samplers import ResumableTrainingSampler
from ..errors import CheckpointError, UserError
from ..modeling import build_model
from .checks import check_output_dir, checkpoint_bytes
from .evaluate import build_evaluator, evaluate, overall_metrics
from .freeze import freeze_parameters
from .hooks import BestCheckpointer, PlotWriter, ValidationLoss
from .preemption import StopOnSignal
from .printer import MetricPrinter
from .state import RNGState
from .steps import build_step
from .weights import build_checkpointer

__all__ = ["FinetuneTrainer", "TrainingDivergedError"]

logger = logging.getLogger(__name__)


class TrainingDivergedError(UserError):
    """A loss or prediction became NaN or infinite."""


class FinetuneTrainer(DefaultTrainer):
    """detectron2's DefaultTrainer, run from a resolved LazyConfig (:mod:`.resolve`).

    What it takes from detectron2: TrainerBase's hooks protocol and ``state_dict`` (a
    checkpoint's ``trainer`` entry), DefaultTrainer's ``resume_or_load`` and ``test`` contracts,
    its hooks (IterationTimer, LRScheduler, PeriodicCheckpointer, EvalHook, PeriodicWriter) and
    writers, and the ``build_*`` classmethods as the points a subclass overrides (as
    ``projects/PointRend`` does).

    Where it departs, and why:

    * ``__init__`` builds the parts from ``cfg.model``, ``cfg.optimizer``, ``cfg.dataloader``,
      ``cfg.lr_multiplier`` and ``cfg.train`` in the order written there (DefaultTrainer's reads
      a yacs CfgNode);
    * ``train()`` is TrainerBase's loop plus stops requested by hooks (early stopping), a named
      error when the loss diverges, and a final checkpoint when stopped early;
    * weights go through :class:`~d2_finetune.checkpoint.FinetuneCheckpointer` (class-aware
      transfer, atomic saves), which keeps the sampler's seed and every process's random state
      so that ``--resume`` continues the same run;
    * the iteration checks the losses on every process (:mod:`.steps`).

    The parts are plain functions elsewhere: the model (:func:`d2_finetune.modeling.build_model`),
    loaders (:mod:`d2_finetune.data.loaders`), evaluation (:mod:`.evaluate`), weights
    (:mod:`.weights`).
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        self.cfg = cfg
        self._stop_reason = None
        self.evaluation_metrics = []  # overall metric names of the latest evaluation
        model = self.build_model(cfg)
        if comm.is_main_process():
            check_output_dir(cfg.train.output_dir, checkpoint_bytes(model))
        freeze_parameters(model, cfg.train.get("freeze") or [])
        optimizer = self.build_optimizer(cfg, model)
        data_loader, self._sampler = build_train_loader(cfg)
        ddp_options = dict(cfg.train.ddp)
        if torch.device(cfg.train.device).type == "cpu":
            ddp_options["device_ids"] = None  # gloo on CPUs: DDP takes no device ids
        model = create_ddp_model(model, **ddp_options)
        self._trainer = build_step(cfg, model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        checkpointables = dict(trainer=weakref.proxy(self), rng=RNGState())
        if isinstance(self._sampler, ResumableTrainingSampler):
            checkpointables["sampler"] = self._sampler  # the data order's seed
        self.checkpointer = build_checkpointer(cfg, model, **checkpointables)
        self.start_iter = 0
        self.max_iter = cfg.train.max_iter
        self.register_hooks(self.build_hooks())
        if comm.is_main_process():
            LazyConfig.save(cfg, os.path.join(cfg.train.output_dir, "config.yaml"))

    @classmethod
    def build_model(cls, cfg):
        return build_model(cfg)

    @classmethod
    def build_optimizer(cls, cfg, model):
        optimizer_cfg = copy.deepcopy(cfg.optimizer)
        optimizer_cfg.params.model = model
        return instantiate(optimizer_cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        return build_train_loader(cfg)[0]

    @classmethod
    def build_test_loader(cls, cfg, dataset_name=None):
        return build_test_loader(cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name=None, output_folder=None):
        return build_evaluator(cfg)

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return LRMultiplier(optimizer, instantiate(cfg.lr_multiplier), cfg.train.max_iter)

    def build_hooks(self):
        cfg = self.cfg
        ret = [
            hooks.IterationTimer(),
            hooks.LRScheduler(scheduler=self.scheduler),
        ]
        # On every process: a checkpoint holds the random state of each. Only the main process
        # writes, and keeps the last max_to_keep.
        periodic = dict(cfg.train.checkpointer)
        if not comm.is_main_process():
            periodic["max_to_keep"] = None
        ret.append(hooks.PeriodicCheckpointer(self.checkpointer, **periodic))

        def test_and_save_results():
            self._last_eval_results = self.test(self.cfg, self.model)
            self.evaluation_metrics = overall_metrics(self._last_eval_results)
            return self._last_eval_results

        ret.append(
            hooks.EvalHook(
                cfg.train.eval_period,
                test_and_save_results,
                eval_after_train=cfg.train.get("eval_after_train", True),
            )
        )
        val_period = cfg.train.get("val_loss_period", 0)
        if val_period:
            # Before BestCheckpointer, which may keep the best checkpoint by val_total_loss.
            ret.append(ValidationLoss(val_period, self.model, build_val_loss_loader(cfg)))
        best = cfg.train.get("best_metric")
        if best:
            ret.append(
                BestCheckpointer(
                    cfg.train.eval_period,
                    self.checkpointer,
                    best.name,
                    mode=best.get("mode", "max"),
                    patience=cfg.train.get("patience", 0),
                )
            )
        ret.append(StopOnSignal())  # after the hooks that may stop training themselves
        if comm.is_main_process():
            writers = self.build_writers()
            json_writers = [w for w in writers if isinstance(w, JSONWriter)]
            if cfg.train.get("plots", True) and json_writers:
                # Before PeriodicWriter, which closes the writers when training ends.
                ret.append(PlotWriter(json_writers[0], cfg.train.eval_period))
            ret.append(hooks.PeriodicWriter(writers, period=cfg.train.log_period))
        return ret

    def build_writers(self):
        return [
            MetricPrinter(self.max_iter) if type(w) is CommonMetricPrinter else w
            for w in default_writers(self.cfg.train.output_dir, self.max_iter)
        ]

    def resume_or_load(self, resume=True):
        """Resume from ``last_checkpoint`` in the output dir if ``resume`` and one exists;
        else load ``train.init_checkpoint`` (see :class:`FinetuneCheckpointer`).

        On resume the schedule's base LR is the config's ``optimizer.lr`` (a checkpoint stores
        the LR it was trained with; resuming with a lower LR after a divergence must use it).
        """
        config_lrs = list(self.scheduler.base_lrs)
        resuming = resume and self.checkpointer.has_checkpoint()
        if resuming and comm.is_main_process():
            self.checkpointer.remove_partial_files()
        try:
            self.checkpointer.resume_or_load(self.cfg.train.init_checkpoint, resume=resume)
        except CheckpointError as e:
            if not resuming:
                raise
            raise CheckpointError(self._resume_failure(e)) from e
        if resuming:
            self.start_iter = self.iter + 1
            if isinstance(self._sampler, ResumableTrainingSampler):
                consumed = self.start_iter * self.cfg.dataloader.train.total_batch_size
                self._sampler.skip(consumed)
                logger.info(
                    f"Continuing the data order of sampler seed {self._sampler.seed} "
                    f"after its first {consumed} images"
                )
            if config_lrs != list(self.scheduler.base_lrs):
                logger.info(
                    f"Resuming with the config's base LR {config_lrs[0]:g} (the "
                    f"checkpoint's was {self.scheduler.base_lrs[0]:g})"
                )
                self.scheduler.base_lrs = config_lrs
                for group, base, lr in zip(
                    self.optimizer.param_groups, config_lrs, self.scheduler.get_lr()
                ):
                    group["initial_lr"], group["lr"] = base, lr
        elif isinstance(self._sampler, ResumableTrainingSampler):
            logger.info(f"Data order: sampler seed {self._sampler.seed}")

    def _resume_failure(self, error):
        named = self.checkpointer.get_checkpoint_file()
        others = [
            os.path.basename(f)
            for f in self.checkpointer.get_all_checkpoint_files()
            if f != named and os.path.basename(f) != "model_best.pth"
        ]
        alternatives = (
            f" Other checkpoints here: {', '.join(sorted(others)[-3:])}; to resume from one, "
            "write its name into last_checkpoint."
            if others
            else ""
        )
        return (
            f"Cannot resume: {os.path.join(self.cfg.train.output_dir, 'last_checkpoint')} names "
            f"{os.path.basename(named)}, which cannot be loaded ({error}).{alternatives} Or start "
            "afresh without --resume, in a new train.output_dir."
        )

    def request_stop(self, reason):
        """Stop training after the current iteration (used by early stopping).

        Every process must request the same stop at the same iteration: call it with a decision
        taken once and shared (:func:`.distributed.decided_on_main`), never with one that a
        process took on its own data.
        """
        self._stop_reason = reason

    def train(self):
        """Run training; the loop of detectron2's TrainerBase.train, plus early stopping."""
        start_iter, max_iter = self.start_iter, self.max_iter
        logger.info(f"Starting training from iteration {start_iter}")
        self.iter = start_iter
        with EventStorage(start_iter) as self.storage:
            try:
                self.before_train()
                for self.iter in range(start_iter, max_iter):
                    self.before_step()
                    self.run_step()
                    self.after_step()
                    if self._stop_reason:
                        break
                else:
                    self.iter += 1
            except FloatingPointError as e:
                raise TrainingDivergedError(self._divergence_message(e)) from e
            finally:
                self.after_train()
        if self._stop_reason:
            logger.info(self._stop_reason)
            self.checkpointer.save("model_final", iteration=self.iter)
        return getattr(self, "_last_eval_results", None)

    def _divergence_message(self, error):
        text = str(error)
        if "loss_dict = " in text:
            losses = text.split("loss_dict = ", 1)[1].strip()
        else:  # raised inside the model, e.g. by its proposal generator
            logged = ", ".join(
                f"{k}={v:.4g}" for k, (v, _) in sorted(self.storage.latest().items()) if "loss" in k
            )
            losses = text.strip() + (f"; last logged {logged}" if logged else "")
        last = self.checkpointer.get_checkpoint_file()
        kept = (
            f"The last good checkpoint, {last}, is intact and named in last_checkpoint"
            if last
            else "No checkpoint was saved before it"
        )
        return (
            f"Training diverged at iteration {self.iter} (a loss or prediction became NaN/Inf: "
            f"{losses}). {kept}. Lower optimizer.lr or lengthen lr_multiplier.warmup_iters, "
            "then rerun with --resume."
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        return evaluate(cfg, model, evaluators)
