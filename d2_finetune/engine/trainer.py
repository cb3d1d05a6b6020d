"""A detectron2 DefaultTrainer that runs from a LazyConfig."""
import copy
import fnmatch
import logging
import os
import time
import weakref
from contextlib import nullcontext

import numpy as np
import torch
from tabulate import tabulate

from detectron2.config import LazyCall as L
from detectron2.config import LazyConfig, instantiate
from detectron2.data import DatasetFromList, MetadataCatalog
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase, hooks
from detectron2.engine.defaults import create_ddp_model, default_writers
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset, print_csv_format
from detectron2.solver import LRMultiplier
from detectron2.utils import comm
from detectron2.utils.events import CommonMetricPrinter, EventStorage, JSONWriter, get_event_storage

from ..checkpoint import FinetuneCheckpointer, fresh_tensors
from ..data.common import fixed_subset
from ..data.samplers import ResumableTrainingSampler
from ..errors import CheckpointError, ConfigError, DatasetError, UserError
from ..solver import resolve_schedule
from .checks import check_output_dir, checkpoint_bytes
from .distributed import broadcast
from .hooks import BestCheckpointer, PlotWriter, ValidationLoss
from .launch import cores_per_process
from .preemption import StopOnSignal
from .state import RNGState

__all__ = [
    "FinetuneTrainer",
    "AutocastTrainer",
    "TrainingDivergedError",
    "autocast_context",
    "resolve_num_classes",
]

logger = logging.getLogger(__name__)

_DTYPES = {"float16": torch.float16, "fp16": torch.float16, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16}


def _amp_dtype(cfg):
    name = cfg.train.amp.get("dtype", "float16")
    if name not in _DTYPES:
        raise ConfigError(f"train.amp.dtype must be float16 or bfloat16, got {name!r}.")
    return _DTYPES[name]


def amp_enabled(cfg):
    """``train.amp.enabled``, except float16 on a CPU (slow there, and without loss scaling
    it underflows): that runs in float32 with a warning; bfloat16 runs on any device."""
    if not cfg.train.amp.enabled:
        return False
    if torch.device(cfg.train.device).type == "cpu" and _amp_dtype(cfg) == torch.float16:
        logger.info("train.amp: float16 needs a GPU; running in float32 on the CPU "
                    "(train.amp.dtype=bfloat16 gives mixed precision on CPUs).")
        return False
    return True


def autocast_context(cfg):
    """``torch.autocast`` for the config's device when AMP is on (see :func:`amp_enabled`)."""
    if not amp_enabled(cfg):
        return nullcontext()
    return torch.autocast(torch.device(cfg.train.device).type, dtype=_amp_dtype(cfg))


class TrainingDivergedError(UserError):
    """A loss or prediction became NaN or infinite."""


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
        super().__init__(model, data_loader, optimizer, grad_scaler=scaler, precision=precision,
                         **kwargs)
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


class FinetuneTrainer(DefaultTrainer):
    """detectron2's DefaultTrainer, built from a LazyConfig instead of a yacs CfgNode.

    Model, optimizer, loaders, LR schedule, evaluators and hooks all come from the config:
    ``model``, ``optimizer``, ``dataloader.{train,test,evaluator}``, ``lr_multiplier`` and
    ``train``. Weights are loaded through :class:`FinetuneCheckpointer`.
    """

    def __init__(self, cfg):
        TrainerBase.__init__(self)
        self.cfg = cfg
        self._stop_reason = None
        data_loader, self._sampler, dataset_size = self._build_train_data(cfg)
        self.schedule = self.resolve_schedule(cfg, dataset_size)
        model = self.build_model(cfg)
        if comm.is_main_process():
            check_output_dir(cfg.train.output_dir, checkpoint_bytes(model))
        freeze_parameters(model, cfg.train.get("freeze") or [])
        optimizer = self.build_optimizer(cfg, model)
        ddp_options = dict(cfg.train.ddp)
        if torch.device(cfg.train.device).type == "cpu":
            ddp_options["device_ids"] = None  # gloo on CPUs: DDP takes no device ids
        model = create_ddp_model(model, **ddp_options)
        if amp_enabled(cfg):
            self._trainer = AutocastTrainer(
                model, data_loader, optimizer,
                device_type=torch.device(cfg.train.device).type, precision=_amp_dtype(cfg),
            )
        else:
            self._trainer = FinetuneSimpleTrainer(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        checkpointables = dict(trainer=weakref.proxy(self), rng=RNGState())
        if isinstance(self._sampler, ResumableTrainingSampler):
            checkpointables["sampler"] = self._sampler  # the data order's seed
        self.checkpointer = self.build_checkpointer(cfg, model, **checkpointables)
        self.start_iter = 0
        self.max_iter = cfg.train.max_iter
        self.register_hooks(self.build_hooks())
        if comm.is_main_process():
            LazyConfig.save(cfg, os.path.join(cfg.train.output_dir, "config.yaml"))

    @classmethod
    def resolve_schedule(cls, cfg, dataset_size):
        """Epochs to iterations, LR scaling, batch check; logs the resolved schedule."""
        rows = resolve_schedule(cfg, dataset_size, comm.get_world_size())
        logger.info("Schedule:\n" + tabulate(rows, tablefmt="simple"))
        return rows

    @classmethod
    def build_model(cls, cfg):
        resolve_num_classes(cfg)
        model = instantiate(cfg.model)
        model.to(torch.device(cfg.train.device))
        if cfg.train.get("channels_last", False):
            model.to(memory_format=torch.channels_last)
        logging.getLogger(__name__).info("Model:\n{}".format(model))
        return model

    @classmethod
    def build_optimizer(cls, cfg, model):
        optimizer_cfg = copy.deepcopy(cfg.optimizer)
        optimizer_cfg.pop("reference_batch", None)  # used by resolve_schedule only
        optimizer_cfg.params.model = model
        return instantiate(optimizer_cfg)

    @classmethod
    def build_train_loader(cls, cfg):
        return cls._build_train_data(cfg)[0]

    @classmethod
    def _build_train_data(cls, cfg):
        """The train loader, with a :class:`ResumableTrainingSampler` (seeded by ``train.seed``)
        unless the config names a sampler; returns (loader, sampler, dataset size)."""
        loader_cfg = with_workers(cfg.dataloader.train)
        on_gpu = torch.device(cfg.train.device).type == "cuda"
        if loader_cfg.get("pin_memory") and not on_gpu:
            loader_cfg.pin_memory = False  # page-locking is for copies to a GPU
        dataset = build_train_dataset(cfg)
        seed = cfg.train.get("seed", -1)
        if loader_cfg.get("sampler") is None:
            loader_cfg.sampler = ResumableTrainingSampler(len(dataset), seed=seed if seed >= 0 else None)
        base_seed = seed if seed >= 0 else getattr(loader_cfg.sampler, "seed", None)
        if base_seed is not None and "seed" not in loader_cfg:
            # Worker seeds from the loader's own generator, one per process, not from the
            # global RNG stream: the loader draws from it when training starts, which would
            # shift the stream a resumed run restores.
            loader_cfg.seed = base_seed + comm.get_rank()
        loader_cfg.dataset = DatasetFromList(dataset, copy=False)
        loader = instantiate(loader_cfg)
        if on_gpu:
            loader = ImagesToDevice(loader, torch.device(cfg.train.device))
        return loader, loader_cfg.sampler, len(dataset)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name=None):
        return instantiate(with_workers(cfg.dataloader.test))

    @classmethod
    def build_val_loss_loader(cls, cfg):
        """The loader of the validation loss, derived from the config's loaders: the test
        loader over ``train.val_loss_images`` images spread over the test set, mapped as for
        training (annotations kept) at test scale, without random augmentation."""
        loader_cfg = with_workers(cfg.dataloader.test)
        loader_cfg.dataset = L(fixed_subset)(dataset=loader_cfg.dataset,
                                            size=cfg.train.get("val_loss_images", 100))
        mapper = copy.deepcopy(cfg.dataloader.train.mapper)
        mapper.is_train = True
        mapper.augmentations = copy.deepcopy(cfg.dataloader.test.mapper.augmentations)
        loader_cfg.mapper = mapper
        loader_cfg.batch_size = 1  # ValidationLoss seeds each image's sampling
        return instantiate(loader_cfg)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name=None, output_folder=None):
        evaluator = instantiate(cfg.dataloader.evaluator)
        if isinstance(evaluator, (list, tuple)):
            evaluator = DatasetEvaluators(list(evaluator))
        return evaluator

    @classmethod
    def build_lr_scheduler(cls, cfg, optimizer):
        return LRMultiplier(optimizer, instantiate(cfg.lr_multiplier), cfg.train.max_iter)

    @classmethod
    def build_checkpointer(cls, cfg, model, record_name="transfer.json", **checkpointables):
        return FinetuneCheckpointer(
            model,
            cfg.train.output_dir,
            target_classes=train_classes(cfg),
            class_map=cfg.train.get("class_map", "auto"),
            strict=cfg.train.get("strict_transfer", True),
            record_name=record_name,
            **checkpointables,
        )

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
            return self._last_eval_results

        ret.append(hooks.EvalHook(cfg.train.eval_period, test_and_save_results,
                                  eval_after_train=cfg.train.get("eval_after_train", True)))
        val_period = cfg.train.get("val_loss_period", 0)
        if val_period:
            # Before BestCheckpointer, which may keep the best checkpoint by val_total_loss.
            ret.append(ValidationLoss(val_period, self.model, self.build_val_loss_loader(cfg)))
        best = cfg.train.get("best_metric")
        if best:
            ret.append(BestCheckpointer(cfg.train.eval_period, self.checkpointer, best.name,
                                        mode=best.get("mode", "max"),
                                        patience=cfg.train.get("patience", 0)))
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
        return [MetricPrinter(self.max_iter) if type(w) is CommonMetricPrinter else w
                for w in default_writers(self.cfg.train.output_dir, self.max_iter)]

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
                logger.info(f"Continuing the data order of sampler seed {self._sampler.seed} "
                            f"after its first {consumed} images")
            if config_lrs != list(self.scheduler.base_lrs):
                logger.info(f"Resuming with the config's base LR {config_lrs[0]:g} (the "
                            f"checkpoint's was {self.scheduler.base_lrs[0]:g})")
                self.scheduler.base_lrs = config_lrs
                for group, base, lr in zip(self.optimizer.param_groups, config_lrs,
                                           self.scheduler.get_lr()):
                    group["initial_lr"], group["lr"] = base, lr
        elif isinstance(self._sampler, ResumableTrainingSampler):
            logger.info(f"Data order: sampler seed {self._sampler.seed}")

    def _resume_failure(self, error):
        named = self.checkpointer.get_checkpoint_file()
        others = [os.path.basename(f) for f in self.checkpointer.get_all_checkpoint_files()
                  if f != named and os.path.basename(f) != "model_best.pth"]
        alternatives = (
            f" Other checkpoints here: {', '.join(sorted(others)[-3:])}; to resume from one, "
            "write its name into last_checkpoint."
            if others else ""
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
            logged = ", ".join(f"{k}={v:.4g}" for k, (v, _) in sorted(self.storage.latest().items())
                               if "loss" in k)
            losses = text.strip() + (f"; last logged {logged}" if logged else "")
        last = self.checkpointer.get_checkpoint_file()
        kept = (
            f"The last good checkpoint, {last}, is intact and named in last_checkpoint"
            if last else "No checkpoint was saved before it"
        )
        return (
            f"Training diverged at iteration {self.iter} (a loss or prediction became NaN/Inf: "
            f"{losses}). {kept}. Lower optimizer.lr or lengthen lr_multiplier.warmup_iters, "
            "then rerun with --resume."
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        data_loader = cls.build_test_loader(cfg)
        evaluator = evaluators if evaluators is not None else cls.build_evaluator(cfg)
        with autocast_context(cfg):
            results = inference_on_dataset(model, data_loader, evaluator)
        if comm.is_main_process():
            print_csv_format(results)
        # Evaluators return their results on the main process only; every process gets them,
        # so that hooks deciding on a metric decide alike.
        return broadcast(results)

    @classmethod
    def load_for_inference(cls, cfg):
        """The model with the weights of ``train.init_checkpoint``, refusing weights that leave
        any of its tensors at their random initialisation (e.g. a COCO checkpoint on an 8-class
        model: rider has no source), since it would predict with a partly random head."""
        if not cfg.train.init_checkpoint:
            raise CheckpointError(
                "No weights to predict with: set "
                "train.init_checkpoint=<output_dir>/model_final.pth."
            )
        model = cls.build_model(cfg)
        # Recorded apart from transfer.json, which tells how a training run in the same
        # output dir started.
        checkpointer = cls.build_checkpointer(cfg, model, record_name="inference_weights.json")
        report = checkpointer.load(cfg.train.init_checkpoint)
        fresh = fresh_tensors(report)
        if fresh:
            classes = [t for t, s in report["class_map"].items() if s is None]
            which = f" (classes without a source: {', '.join(classes)})" if classes else ""
            raise CheckpointError(
                f"{cfg.train.init_checkpoint} does not fit this model's classes: "
                f"{', '.join(fresh)} would keep their random initialisation{which}, so its "
                "predictions and scores would come from a random head. Use a checkpoint "
                "fine-tuned with this config (e.g. <output_dir>/model_final.pth)."
            )
        return model

    @classmethod
    def evaluate_checkpoint(cls, cfg):
        """``--eval-only``: evaluate the weights in ``train.init_checkpoint`` as they are."""
        return cls.test(cfg, cls.load_for_inference(cfg))


class MetricPrinter(CommonMetricPrinter):
    """detectron2's console printer. Training stopped early writes twice at one iteration;
    before IterationTimer has timed 3 iterations, detectron2's own ETA estimate then divides
    by the zero iterations between the two writes."""

    def _get_eta(self, storage):
        if self._last_write is not None and self._last_write[0] == storage.iter:
            return None
        return super()._get_eta(storage)


class ImagesToDevice:
    """Iterates over a loader's batches with each ``"image"`` already on ``device``.

    The copies are issued without blocking the host: from page-locked batches
    (``pin_memory=True``) they run while the host goes on, where detectron2's model would copy
    each image from pageable memory and wait for it. The model then finds the images where
    they belong; the rest of each sample (instances) moves in the model, as in detectron2.
    """

    def __init__(self, loader, device):
        self.loader = loader
        self.device = device

    def __iter__(self):
        for batch in self.loader:
            yield [self.move(sample) for sample in batch]

    def move(self, sample):
        if "image" not in sample:
            return sample
        sample = dict(sample)
        sample["image"] = sample["image"].to(self.device, non_blocking=True)
        return sample


def default_num_workers():
    """Loader processes per training process, from the CPU cores each local process has.

    More is not better: on a 16-core H200 machine, 6 workers fed AMP training at 28.5 images/s
    where 15 gave 25.0 (they compete with the training process for the CPU; bench/README.md,
    ``bench/train_throughput.py --runs ours+workers6,ours+workers15``). Hence half the cores
    less two, at least min(4, cores - 1), at most 8.
    """
    per_process = cores_per_process()
    if per_process == 1:
        return 1
    return min(max(per_process // 2 - 2, min(4, per_process - 1)), 8)


def with_workers(loader_cfg):
    """A copy of a loader config with ``num_workers="auto"`` resolved."""
    loader_cfg = copy.deepcopy(loader_cfg)
    if loader_cfg.get("num_workers") == "auto":
        loader_cfg.num_workers = default_num_workers()
    return loader_cfg


def build_train_dataset(cfg):
    """The training dataset dicts (``dataloader.train.dataset``), refusing an empty one with a
    message that says why and what to do (detectron2 asserts instead)."""
    spec = cfg.dataloader.train.dataset
    names = spec.get("names")
    try:
        return instantiate(spec)
    except AssertionError as e:
        if "is empty" in str(e):
            raise DatasetError(f"The training dataset {names} has no images: {e}") from None
        if "No valid data found" not in str(e):
            raise
    raise DatasetError(
        f"The training dataset {names} has no images left after filtering: training drops images "
        "without a non-crowd instance (dataloader.train.dataset.filter_empty=True). Check its "
        "annotations, or set dataloader.train.dataset.filter_empty=False."
    )


def train_classes(cfg):
    """Class names of the training dataset(s), from their registered metadata."""
    names = cfg.dataloader.train.dataset.get("names")
    if names is None:
        return None
    names = [names] if isinstance(names, str) else list(names)
    classes = MetadataCatalog.get(names[0]).get("thing_classes")
    return list(classes) if classes is not None else None


def freeze_parameters(model, patterns):
    """Stop gradients for parameters whose names match any glob pattern in ``patterns``
    (``train.freeze``), on top of the backbone's ``freeze_at``; log the trainable count."""
    names = [n for n, _ in model.named_parameters()]
    for pattern in patterns:
        if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
            raise ConfigError(
                f"train.freeze pattern {pattern!r} matches no parameter of the model "
                f"(names look like {names[0]!r}, {names[-1]!r})."
            )
    for name, param in model.named_parameters():
        if any(fnmatch.fnmatchcase(name, p) for p in patterns):
            param.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = total - trainable
    logger.info(
        f"Trainable parameters: {trainable:,} of {total:,} ({frozen:,} frozen by the backbone's "
        f"freeze_at and train.freeze={list(patterns)})"
    )
    return trainable


def resolve_num_classes(cfg):
    """Set ``model.roi_heads.num_classes`` from the training data when the config leaves it
    None, so a dataset whose classes come from its files (a COCO json) never has them typed by
    hand. The training datasets must be registered first and agree on their classes.

    Returns:
        int or None: the class count the model is built with.
    """
    roi_heads = cfg.model.get("roi_heads")
    if roi_heads is None or "num_classes" not in roi_heads:
        return None
    wanted = roi_heads.num_classes
    names = cfg.dataloader.train.dataset.get("names")
    if names is None:
        if wanted is None:
            raise ConfigError(
                "model.roi_heads.num_classes=None asks for the training dataset's class count, "
                "but dataloader.train.dataset names no registered dataset; set "
                "model.roi_heads.num_classes."
            )
        return wanted
    names = [names] if isinstance(names, str) else list(names)
    counts = {}
    for name in names:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is None:
            if wanted is not None:
                return wanted
            raise ConfigError(
                f"model.roi_heads.num_classes=None asks for the class count of the training "
                f"dataset '{name}', which has no thing_classes: register it first (the "
                "config's dataloader.register, run by scripts/train_net.py) or set "
                "model.roi_heads.num_classes."
            )
        counts[name] = len(classes)
    if len(set(counts.values())) > 1:
        raise ConfigError(
            "The training datasets have different numbers of classes "
            + ", ".join(f"{n}: {c}" for n, c in counts.items()) + "; train on datasets that share "
            "their classes."
        )
    count = counts[names[0]]
    if wanted is None:
        roi_heads.num_classes = count
        logger.info(f"model.roi_heads.num_classes = {count}, from the classes of {names[0]}")
    elif wanted != count:
        logger.warning(
            f"model.roi_heads.num_classes={wanted} but the training data ({names[0]}) has "
            f"{count} classes."
        )
    return roi_heads.num_classes
