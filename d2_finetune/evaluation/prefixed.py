"""Results of an evaluator under a name of their own: how evaluators are combined for a dataset.

Every dataset's ``dataloader.evaluator`` is a list of :class:`PrefixedEvaluator` (combined by
detectron2's ``DatasetEvaluators``), so that each metric says where it comes from:
``cityscapes/AP``, ``coco/segm/AP``, ``voc/bbox/AP50``, ``kitti/bbox/AP_moderate``.
"""

from collections import OrderedDict

from detectron2.evaluation import DatasetEvaluator

__all__ = ["PrefixedEvaluator"]


class PrefixedEvaluator(DatasetEvaluator):
    """Runs ``evaluator`` and reports each of its tasks as ``<prefix>/<task>``; with ``task``,
    only that task, as ``<prefix>`` itself.

    detectron2's ``DatasetEvaluators`` refuses two evaluators that report the same task, and
    Pascal VOC's and COCO's evaluators both report ``bbox``; prefixed, they combine as
    ``voc/bbox`` and ``coco/bbox`` (``voc/bbox/AP50``, ``coco/bbox/AP`` once ``EvalHook`` has
    flattened them).
    """

    def __init__(self, evaluator, prefix, task=None):
        self.evaluator = evaluator
        self.prefix = prefix
        self.task = task

    def reset(self):
        self.evaluator.reset()

    def process(self, inputs, outputs):
        self.evaluator.process(inputs, outputs)

    def evaluate(self):
        results = self.evaluator.evaluate() or {}
        if self.task is not None:
            return OrderedDict([(self.prefix, results[self.task])] if self.task in results else [])
        return OrderedDict((f"{self.prefix}/{task}", value) for task, value in results.items())
