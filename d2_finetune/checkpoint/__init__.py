"""Loading pretrained detectors into models with another set of classes: strict, class-aware,
recorded and safe.

:class:`FinetuneCheckpointer` is detectron2's ``DetectionCheckpointer`` with a load that

* reads Detectron2 model-zoo ``.pkl`` files, our own ``.pth`` checkpoints and bare state dicts,
  from local paths or ``detectron2://`` / ``https://`` URLs, without ever executing code from
  the file (:mod:`.files`);
* lets only the class-dependent layers differ from the model (:mod:`.layers`): any other
  mismatch, missing or unexpected tensor stops the load before the model is touched
  (``strict=True``) or is logged (``strict=False``);
* starts each target class that matches a source class by name (:mod:`.classes`) from that
  class's rows of the class-dependent layers (the transplant of the Mask R-CNN paper's COCO ->
  Cityscapes recipe), as planned by :mod:`.plan`;
* returns what it did as a report, logs it as a table and saves it as ``transfer.json``
  (:mod:`.report`).
"""

from .checkpointer import FinetuneCheckpointer
from .classes import coco_thing_classes, match_classes, normalize_class_name
from .files import read_checkpoint
from .layers import ClassLayer, class_layers, model_num_classes
from .plan import TransferPlan, make_plan
from .report import fresh_tensors

__all__ = [
    "ClassLayer",
    "FinetuneCheckpointer",
    "TransferPlan",
    "class_layers",
    "coco_thing_classes",
    "fresh_tensors",
    "make_plan",
    "match_classes",
    "model_num_classes",
    "normalize_class_name",
    "read_checkpoint",
]
