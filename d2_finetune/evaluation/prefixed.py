"""Results of an evaluator under a name of their own."""
from collections import OrderedDict

from detectron2.evaluation import DatasetEvaluator

__all__ = ["PrefixedEvaluator"]


class PrefixedEvaluator(DatasetEvaluator):
    """Runs ``evaluator`` and reports each of its tasks as ``<prefix>/<task>``.

    detectron2's ``DatasetEvaluators`` refuses two evaluators that report the same task, and
    Pascal VOC's and COCO's evaluators both report ``bbox``; prefixed, they combine as
    ``voc/bbox`` and ``coco/bbox`` (``voc/bbox/AP50``, ``coco/bbox/AP`` once ``EvalHook`` has
    flattened them).
    """

    def __init__(self, evaluator, prefix):
        self.evaluator = evaluator
        self.prefix = prefix

    def reset(self):
        self.evaluator.reset()

    def process(self, inputs, outputs):
        self.evaluator.process(inputs, outputs)

    def evaluate(self):
        results = self.evaluator.evaluate() or {}
        return OrderedDict((f"{self.prefix}/{task}", value) for task, value in results.items())
