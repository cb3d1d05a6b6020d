"""From a detector's raw outputs to instances on the original image.

An R-CNN predicts on its input image, which the test mapper resized (e.g. Cityscapes'
2048x1024 to the config's test scale): boxes are in that image's pixels and each mask is a
28x28 grid of probabilities over its box. :func:`postprocess` turns them into what prediction
and evaluation use. It is the one step after the network that eager prediction
(:class:`d2_finetune.predict.Predictor`) and exported models (:mod:`d2_finetune.export`) share,
so they differ only in the network.

Exported graphs leave it out because it depends on the original image's size, which the graph
does not take, and pasting masks is image-sized work better done where the image is.
"""

import torch

from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.structures import Boxes, Instances

__all__ = ["postprocess", "raw_instances"]

# Instances fields that the post-processing knows how to map to the original image.
SUPPORTED_FIELDS = ("pred_boxes", "scores", "pred_classes", "pred_masks")


def postprocess(instances, height, width, mask_threshold=0.5):
    """Map raw predictions on the network's input to an image of ``height`` x ``width``.

    Boxes are scaled by the ratio of the two sizes and clipped to the image, boxes left empty
    are dropped with their instance, and masks (``(N, 1, M, M)`` probabilities inside their
    boxes) are pasted into the image and thresholded at ``mask_threshold``, giving ``(N,
    height, width)`` booleans. This is detectron2's ``detector_postprocess``, the step
    ``GeneralizedRCNN.forward`` ends with.

    Args:
        instances (Instances): raw predictions; ``image_size`` is the network input's size.
        height, width (int): the original image's size.
    Returns:
        Instances of size ``(height, width)``; ``instances`` is left as it was.
    """
    if instances.has("pred_boxes"):  # detector_postprocess scales the boxes in place
        instances = Instances(instances.image_size, **instances.get_fields())
        instances.pred_boxes = instances.pred_boxes.clone()
    return detector_postprocess(instances, int(height), int(width), mask_threshold)


def raw_instances(fields, image_size):
    """Raw predictions as an :class:`Instances`, from the tensors an exported graph returns.

    Args:
        fields (dict[str, Tensor or ndarray]): ``pred_boxes`` ``(N, 4)`` XYXY in input pixels,
            ``scores`` ``(N,)``, ``pred_classes`` ``(N,)``, optionally ``pred_masks``
            ``(N, 1, M, M)`` probabilities.
        image_size (tuple[int, int]): the network input's (height, width).
    """
    unknown = sorted(set(fields) - set(SUPPORTED_FIELDS))
    if unknown:
        raise ValueError(f"Cannot post-process the prediction fields {', '.join(unknown)}.")
    instances = Instances(tuple(int(v) for v in image_size))
    for name, value in fields.items():
        value = torch.as_tensor(value)
        if name == "pred_boxes":
            value = Boxes(value.float().reshape(-1, 4))
        elif name == "pred_classes":
            value = value.long()
        instances.set(name, value)
    return instances
