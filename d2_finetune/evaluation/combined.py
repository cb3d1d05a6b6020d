"""The official Cityscapes AP and COCO-style box and mask AP in one evaluator, named apart.

The two metrics differ (COCO averages over 101 recall points, counts small objects, handles
crowds differently), so the same model scores quite differently under each; the names say which
is which: ``cityscapes/AP``, ``cityscapes/AP50``, ``cityscapes/AP-<class>``, ...,
``coco/bbox/AP``, ``coco/segm/AP``, ... once detectron2's ``flatten_results_dict`` (applied by
``EvalHook``) has joined the keys.
"""
import tempfile
from collections import OrderedDict

from detectron2.evaluation import DatasetEvaluator

from .cityscapes import CityscapesInstanceEvaluator
from .coco import ScopedCOCOEvaluator

__all__ = ["CityscapesCOCOEvaluator"]


class CityscapesCOCOEvaluator(DatasetEvaluator):
    """:class:`CityscapesInstanceEvaluator` and detectron2's ``COCOEvaluator`` on one dataset.

    ``evaluate()`` returns ``{"cityscapes": {"AP", "AP50", "AP-<class>", ...},
    "coco/bbox": {...}, "coco/segm": {...}}``, in percent.
    """

    def __init__(self, dataset_name, output_dir=None, evaluator="fast",
                 coco_tasks=("bbox", "segm")):
        """
        Args:
            dataset_name: a Cityscapes dataset registered by
                :func:`d2_finetune.data.register_cityscapes`.
            output_dir: where both evaluators write their results (and COCOEvaluator its COCO
                version of the annotations); None: a temporary folder for COCO, no JSON.
            evaluator: "fast" or "official", see :class:`CityscapesInstanceEvaluator`.
            coco_tasks: COCO-style tasks to evaluate beside; empty for the Cityscapes AP only.
        """
        self._cityscapes = CityscapesInstanceEvaluator(
            dataset_name, output_dir=output_dir, evaluator=evaluator
        )
        self._coco = None
        if coco_tasks:
            if output_dir is None:
                self._coco_dir = tempfile.TemporaryDirectory(prefix="coco_eval_")
                coco_dir = self._coco_dir.name
            else:
                coco_dir = output_dir
            self._coco = ScopedCOCOEvaluator(
                dataset_name, tasks=tuple(coco_tasks), output_dir=coco_dir
            )

    def _evaluators(self):
        return [e for e in (self._cityscapes, self._coco) if e is not None]

    def reset(self):
        for evaluator in self._evaluators():
            evaluator.reset()

    def process(self, inputs, outputs):
        for evaluator in self._evaluators():
            evaluator.process(inputs, outputs)

    def evaluate(self):
        results = OrderedDict()
        cityscapes = self._cityscapes.evaluate() or {}
        if "segm" in cityscapes:
            results["cityscapes"] = cityscapes["segm"]
        if self._coco is not None:
            for task, metrics in (self._coco.evaluate() or {}).items():
                results[f"coco/{task}"] = metrics
        return results
