"""Which layers of a model depend on its number of classes, and how their rows are laid out."""

from dataclasses import dataclass

from detectron2.modeling.meta_arch.retinanet import RetinaNetHead
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.modeling.roi_heads.mask_head import BaseMaskRCNNHead

__all__ = [
    "ClassLayer",
    "class_layers",
    "generic_class_dependent",
    "layer_of",
    "model_num_classes",
    "source_num_classes",
]


@dataclass(frozen=True)
class ClassLayer:
    """The row layout of a layer whose output size depends on the number of classes.

    Dimension 0 of its weight and bias holds ``unit`` rows per class and, with ``background``,
    ``unit`` more for background after the classes. ``class_major``: the rows of class ``c`` are
    ``c * unit ... c * unit + unit - 1`` (box deltas); else row ``j * (K + background) + c``
    (one block of classes per anchor). ``agnostic``: the model shares one block of ``unit``
    rows among all classes.
    """

    num_classes: int
    unit: int = 1
    background: bool = False
    class_major: bool = True
    agnostic: bool = False

    def num_rows(self, num_classes):
        return self.unit * (num_classes + self.background)

    def row(self, cls, j, num_classes):
        if self.class_major:
            return cls * self.unit + j
        return j * (num_classes + self.background) + cls


def model_num_classes(model):
    """The number of classes the model predicts (``roi_heads.num_classes`` or ``num_classes``)."""
    roi_heads = getattr(model, "roi_heads", None)
    if roi_heads is not None and hasattr(roi_heads, "num_classes"):
        return int(roi_heads.num_classes)
    value = getattr(model, "num_classes", None)
    return int(value) if value is not None else None


def class_layers(model):
    """The class-dependent layers of ``model``: {module name: :class:`ClassLayer`}.

    Found by module type, so cascade stages and rotated boxes are included:

    * ``FastRCNNOutputLayers``: ``cls_score`` has K+1 rows, background last; ``bbox_pred`` has
      box_dim rows per class, or box_dim rows in all when class-agnostic;
    * mask heads (``BaseMaskRCNNHead``): ``predictor`` has one channel per class, or 1 when
      class-agnostic;
    * ``RetinaNetHead`` (RetinaNet, FCOS): ``cls_score`` has K channels per anchor.

    Other layers are recognised by shape when loading (see :class:`FinetuneCheckpointer`).
    """
    num_classes = model_num_classes(model)
    layers = {}
    for name, module in model.named_modules():
        prefix = name + "." if name else ""
        if isinstance(module, FastRCNNOutputLayers):
            k = module.num_classes
            box_dim = len(module.box2box_transform.weights)
            layers[prefix + "cls_score"] = ClassLayer(k, background=True)
            layers[prefix + "bbox_pred"] = ClassLayer(
                k, unit=box_dim, agnostic=module.bbox_pred.out_features == box_dim and k != 1
            )
        elif isinstance(module, BaseMaskRCNNHead) and num_classes and hasattr(module, "predictor"):
            channels = module.predictor.out_channels
            layers[prefix + "predictor"] = ClassLayer(
                num_classes, agnostic=channels == 1 and num_classes != 1
            )
        elif isinstance(module, RetinaNetHead) and num_classes:
            anchors = module.cls_score.out_channels // num_classes
            layers[prefix + "cls_score"] = ClassLayer(num_classes, unit=anchors, class_major=False)
    return layers


def layer_of(key, layers):
    """The :class:`ClassLayer` of the module that tensor ``key`` belongs to, or None."""
    return layers.get(key.rsplit(".", 1)[0]) if "." in key else None


def source_num_classes(state, layers):
    """The checkpoint's class count, read from its class-dependent layers (background layout
    first, as a class-agnostic layer cannot tell)."""
    ordered = sorted(layers.items(), key=lambda item: not item[1].background)
    for module, layer in ordered:
        tensor = state.get(module + ".weight")
        if tensor is None or tensor.ndim == 0:
            continue
        rows = tensor.shape[0]
        if layer.background:
            return rows // layer.unit - 1
        if rows != layer.unit and rows % layer.unit == 0:
            return rows // layer.unit
    return None


def generic_class_dependent(key, source_shape, target_shape, k_src, k_tgt):
    """Shape rule for layers outside :func:`class_layers`: outside the backbone, dimension 0 is
    u * (K + b) in the model and u * (K_checkpoint + b) in the checkpoint for one u >= 1 and
    b in {0, 1}, the other dimensions equal."""
    if key.startswith("backbone.") or k_src is None or k_tgt is None or k_src == k_tgt:
        return False
    if len(source_shape) != len(target_shape) or not source_shape:
        return False
    if source_shape[1:] != target_shape[1:]:
        return False
    for b in (0, 1):
        s, t = source_shape[0], target_shape[0]
        if s % (k_src + b) == 0 and t % (k_tgt + b) == 0 and s // (k_src + b) == t // (k_tgt + b):
            return True
    return False
