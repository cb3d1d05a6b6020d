"""The official Cityscapes AP and COCO-style box and mask AP in one evaluator, named apart.

The two metrics differ (COCO averages over 101 recall points, counts small objects, handles
crowds differently), so the same model scores quite differently under each; the names say which
is which: ``cityscapes/AP``, ``cityscapes/AP50``, ``cityscapes/AP-<class>``, ...,
``coco/bbox/AP``, ``coco/segm/AP``, ... once detectron2's ``flatten_results_dict`` (applied by
``EvalHook``) has joined the keys.
"""

import tempfile

from detectron2.evaluation import DatasetEvaluators

from .cityscapes import CityscapesInstanceEvaluator
from .coco import ScopedCOCOEvaluator
from .prefixed import PrefixedEvaluator

__all__ = ["CityscapesCOCOEvaluator"]


class CityscapesCOCOEvaluator(DatasetEvaluators):
    """:class:`CityscapesInstanceEvaluator` and detectron2's ``COCOEvaluator`` on one dataset,
    combined as every dataset's evaluators are (:class:`PrefixedEvaluator`): the Cityscapes
    config's evaluator, whose arguments are its config keys (``dataloader.evaluator.evaluator``).

    ``evaluate()`` returns ``{"cityscapes": {"AP", "AP50", "AP-<class>", ...},
    "coco/bbox": {...}, "coco/segm": {...}}``, in percent.
    """

    def __init__(
        self, dataset_name, output_dir=None, evaluator="fast", coco_tasks=("bbox", "segm")
    ):
        """
        Args:
            dataset_name: a Cityscapes dataset registered by
                :func:`d2_finetune.data.register_cityscapes`.
            output_dir: where both evaluators write their results (and COCOEvaluator its COCO
                version of the annotations); None: a temporary folder for COCO, no JSON.
            evaluator: "fast" or "official", see :class:`CityscapesInstanceEvaluator`.
            coco_tasks: COCO-style tasks to evaluate beside; empty for the Cityscapes AP only.
        """
        evaluators = [
            PrefixedEvaluator(
                CityscapesInstanceEvaluator(
                    dataset_name, output_dir=output_dir, evaluator=evaluator
                ),
                prefix="cityscapes",
                task="segm",
            )
        ]
        if coco_tasks:
            if output_dir is None:
                self._coco_dir = tempfile.TemporaryDirectory(prefix="coco_eval_")
                output_dir = self._coco_dir.name
            evaluators.append(
                PrefixedEvaluator(
                    ScopedCOCOEvaluator(
                        dataset_name, tasks=tuple(coco_tasks), output_dir=output_dir
                    ),
                    prefix="coco",
                )
            )
        super().__init__(evaluators)
