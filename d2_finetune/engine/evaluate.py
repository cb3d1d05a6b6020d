"""Evaluating a model on the config's test set with the config's evaluators."""

from detectron2.config import instantiate
from detectron2.evaluation import DatasetEvaluators, inference_on_dataset, print_csv_format
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.utils import comm

from ..data.loaders import build_test_loader
from .amp import autocast_context
from .distributed import broadcast

__all__ = ["build_evaluator", "evaluate", "overall_metrics"]


def build_evaluator(cfg):
    """``dataloader.evaluator``: one evaluator, or a list of them (each reporting its tasks
    under names of its own, e.g. :class:`d2_finetune.evaluation.PrefixedEvaluator`)."""
    evaluator = instantiate(cfg.dataloader.evaluator)
    if isinstance(evaluator, (list, tuple)):
        evaluator = DatasetEvaluators(list(evaluator))
    return evaluator


def evaluate(cfg, model, evaluators=None):
    """Run ``model`` over ``dataloader.test`` (under autocast when AMP is on) and evaluate it,
    printing detectron2's copy-paste table. The results are returned on every process (the
    evaluators compute them on the main one), so that decisions taken on them agree."""
    evaluator = evaluators if evaluators is not None else build_evaluator(cfg)
    with autocast_context(cfg):
        results = inference_on_dataset(model, build_test_loader(cfg), evaluator)
    if comm.is_main_process():
        print_csv_format(results)
    return broadcast(results)


def overall_metrics(results):
    """The names of evaluation ``results`` once flattened as ``EvalHook`` logs them
    (``cityscapes/AP``, ``coco/bbox/AP50``), without the per-class ones (``.../AP-car``)."""
    return sorted(k for k in flatten_results_dict(results or {}) if "-" not in k)
