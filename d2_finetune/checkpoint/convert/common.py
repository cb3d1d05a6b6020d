"""What the converters share: COCO's class ids, the ResNet body's key names, and the model
settings ("requirements") that a set of weights needs to compute what it computed when trained.

A converter renames a source's tensors to Detectron2's names and rearranges its class rows; the
weights then still assume their source's input (channel order, value scale, mean and std) and
a few architecture conventions (where the ResNet downsamples, the RoIAlign variant, anchor
rounding). :class:`Requirements` holds those, :func:`config_deltas` writes them as the config
overrides that set them on the recipe, and :func:`check_model` compares them with a built
model and stops with the config to use when they disagree.
"""

import re
from dataclasses import asdict, dataclass

import torch

from detectron2.data.datasets.builtin_meta import COCO_CATEGORIES

from ...errors import CheckpointError

__all__ = [
    "MSRA",
    "PYTORCH_RGB",
    "TORCHVISION",
    "Requirements",
    "check_model",
    "coco_ids_and_names",
    "config_deltas",
    "convert_body",
    "convert_resnet",
    "detectron2_keys",
    "resnet_layout",
    "strip_prefix",
]

# ImageNet statistics on 0-255 values: RGB order (torchvision's 0-1 mean and std times 255).
RGB_MEAN = [123.675, 116.28, 103.53]
RGB_STD = [58.395, 57.12, 57.375]
# Detectron2's MSRA-style backbones: BGR, std folded into conv1.
BGR_MEAN = [103.53, 116.28, 123.675]
BGR_STD = [1.0, 1.0, 1.0]


def coco_ids_and_names():
    """COCO's 80 thing classes as ``(category id, name)``, in id order: the order of
    Detectron2's and MMDetection's 80-class heads (ids 1-90, ten unused)."""
    things = sorted((c for c in COCO_CATEGORIES if c["isthing"]), key=lambda c: c["id"])
    return [(c["id"], c["name"]) for c in things]


def strip_prefix(state, prefix="module."):
    """``state`` without ``prefix`` on its keys when every key has it (DataParallel saves)."""
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return dict(state)


# ----------------------------------------------------------------------------------------------
# The ResNet body. torchvision and MMDetection (pytorch and caffe style alike) name it the same
# way: conv1/bn1, layer{1-4}.{block}.conv{1-3}/bn{1-3}, layer{n}.0.downsample.{0: conv, 1: bn}.

_DEPTHS = {
    ("bottleneck", (3, 4, 6, 3)): 50,
    ("bottleneck", (3, 4, 23, 3)): 101,
    ("bottleneck", (3, 8, 36, 3)): 152,
    ("basic", (2, 2, 2, 2)): 18,
    ("basic", (3, 4, 6, 3)): 34,
}
_BN = {
    "weight": "weight",
    "bias": "bias",
    "running_mean": "running_mean",
    "running_var": "running_var",
}


def resnet_layout(state, prefix):
    """``(name, blocks per stage)`` of the ResNet under ``prefix``: e.g. ``("ResNet-50",
    (3, 4, 6, 3))``, or ``("ResNet (bottleneck, blocks (3, 4, 5, 3))", ...)`` for others."""
    blocks = []
    for stage in range(1, 5):
        pattern = re.compile(re.escape(f"{prefix}layer{stage}.") + r"(\d+)\.")
        ids = {int(m.group(1)) for k in state for m in [pattern.match(k)] if m}
        blocks.append(max(ids) + 1 if ids else 0)
    kind = "bottleneck" if f"{prefix}layer1.0.conv3.weight" in state else "basic"
    depth = _DEPTHS.get((kind, tuple(blocks)))
    name = f"ResNet-{depth}" if depth else f"ResNet ({kind} blocks {tuple(blocks)})"
    return name, tuple(blocks)


def convert_resnet(state, prefix, out):
    """Copy the ResNet body under ``prefix`` into ``out`` under Detectron2's names
    (``backbone.bottom_up.stem`` / ``res{2-5}``); return the source keys it used. BatchNorm's
    ``num_batches_tracked`` counters are used and dropped (Detectron2's FrozenBN has none)."""
    used = set()

    def take(src, dst):
        out[dst] = state[src]
        used.add(src)

    def norm(src, dst):
        for s, d in _BN.items():
            take(f"{src}.{s}", f"{dst}.{d}")
        if f"{src}.num_batches_tracked" in state:
            used.add(f"{src}.num_batches_tracked")

    d2 = "backbone.bottom_up."
    take(f"{prefix}conv1.weight", f"{d2}stem.conv1.weight")
    norm(f"{prefix}bn1", f"{d2}stem.conv1.norm")
    _, blocks = resnet_layout(state, prefix)
    kind_convs = 3 if f"{prefix}layer1.0.conv3.weight" in state else 2
    for stage, count in enumerate(blocks, start=1):
        for b in range(count):
            src, dst = f"{prefix}layer{stage}.{b}", f"{d2}res{stage + 1}.{b}"
            for k in range(1, kind_convs + 1):
                take(f"{src}.conv{k}.weight", f"{dst}.conv{k}.weight")
                norm(f"{src}.bn{k}", f"{dst}.conv{k}.norm")
            if f"{src}.downsample.0.weight" in state:
                take(f"{src}.downsample.0.weight", f"{dst}.shortcut.weight")
                norm(f"{src}.downsample.1", f"{dst}.shortcut.norm")
    return used


def convert_body(state, resnet_prefix, renames):
    """Detectron2's state dict for the class-independent layers: the ResNet body under
    ``resnet_prefix`` (:func:`convert_resnet`) and every module named in ``renames`` (source
    module -> Detectron2 module, ``.weight`` / ``.bias`` kept); returns it and the source keys
    it used."""
    out = {}
    used = convert_resnet(state, resnet_prefix, out)
    for key, value in state.items():
        module, _, leaf = key.rpartition(".")
        if module in renames:
            out[f"{renames[module]}.{leaf}"] = value
            used.add(key)
    return out, used


def detectron2_keys(masks=True):
    """The state-dict keys of Detectron2's Mask R-CNN R50-FPN
    (``configs/_base_/models/mask_rcnn_r50_fpn.py``; Faster R-CNN without ``masks``)."""
    keys = []

    def conv(name, norm=True, bias=False):
        keys.append(f"{name}.weight")
        if bias:
            keys.append(f"{name}.bias")
        if norm:
            keys.extend(f"{name}.norm.{s}" for s in _BN.values())

    conv("backbone.bottom_up.stem.conv1")
    for stage, count in zip(range(2, 6), (3, 4, 6, 3)):
        for b in range(count):
            for k in range(1, 4):
                conv(f"backbone.bottom_up.res{stage}.{b}.conv{k}")
            if b == 0:
                conv(f"backbone.bottom_up.res{stage}.{b}.shortcut")
    for level in range(2, 6):
        conv(f"backbone.fpn_lateral{level}", norm=False, bias=True)
        conv(f"backbone.fpn_output{level}", norm=False, bias=True)
    heads = [
        "proposal_generator.rpn_head.conv",
        "proposal_generator.rpn_head.objectness_logits",
        "proposal_generator.rpn_head.anchor_deltas",
        "roi_heads.box_head.fc1",
        "roi_heads.box_head.fc2",
        "roi_heads.box_predictor.cls_score",
        "roi_heads.box_predictor.bbox_pred",
    ]
    if masks:
        heads += [f"roi_heads.mask_head.mask_fcn{i}" for i in range(1, 5)]
        heads += ["roi_heads.mask_head.deconv", "roi_heads.mask_head.predictor"]
    for name in heads:
        conv(name, norm=False, bias=True)
    return keys


# ----------------------------------------------------------------------------------------------
# What the weights need from the model.


@dataclass(frozen=True)
class Requirements:
    """The model settings a set of weights was trained with, beyond the layer shapes.

    ``input_format``, ``pixel_mean``, ``pixel_std``: the input the first conv expects (on
    Detectron2's 0-255 scale); ``stride_in_1x1``: whether a ResNet bottleneck downsamples in
    its first (1x1) conv, as MSRA's, or in the 3x3 conv, as torchvision's; ``roi_aligned``,
    ``roi_sampling_ratio``: the RoIAlign variant of the box and mask poolers;
    ``rounded_anchors``: whether the RPN's cell anchors are rounded to whole pixels.
    ``config``: the shipped config that sets all of them on the Cityscapes recipe.
    """

    name: str
    input_format: str
    pixel_mean: tuple
    pixel_std: tuple
    stride_in_1x1: bool
    roi_aligned: bool
    roi_sampling_ratio: int
    rounded_anchors: bool
    config: str

    def __post_init__(self):
        object.__setattr__(self, "pixel_mean", tuple(float(v) for v in self.pixel_mean))
        object.__setattr__(self, "pixel_std", tuple(float(v) for v in self.pixel_std))

    def to_dict(self):
        d = asdict(self)
        d["pixel_mean"], d["pixel_std"] = list(self.pixel_mean), list(self.pixel_std)
        return d

    @classmethod
    def from_dict(cls, d):
        return cls(**d)


MSRA = Requirements(
    "Detectron2 / MSRA (caffe-style) R50",
    "BGR",
    tuple(BGR_MEAN),
    tuple(BGR_STD),
    True,
    True,
    0,
    False,
    "configs/cityscapes_ft.py",
)
PYTORCH_RGB = Requirements(
    "pytorch-style R50, RGB input",
    "RGB",
    tuple(RGB_MEAN),
    tuple(RGB_STD),
    False,
    True,
    0,
    False,
    "configs/cityscapes_ft_from_mmdet.py",
)
TORCHVISION = Requirements(
    "torchvision Mask R-CNN",
    "RGB",
    tuple(RGB_MEAN),
    tuple(RGB_STD),
    False,
    False,
    2,
    True,
    "configs/cityscapes_ft_from_torchvision.py",
)

ROUNDED_ANCHORS = "d2_finetune.modeling.RoundedAnchorGenerator"


def _fmt_list(values):
    return "[" + ",".join(f"{v:g}" for v in values) + "]"


def config_deltas(req, base=MSRA):
    """The ``key=value`` overrides that turn a config with ``base``'s settings (the recipe,
    ``configs/cityscapes_ft.py``) into one that satisfies ``req``."""
    deltas = []
    if req.input_format != base.input_format:
        deltas += [
            f"model.input_format={req.input_format}",
            f"dataloader.train.mapper.image_format={req.input_format}",
        ]
    if tuple(req.pixel_mean) != tuple(base.pixel_mean):
        deltas.append(f"model.pixel_mean={_fmt_list(req.pixel_mean)}")
    if tuple(req.pixel_std) != tuple(base.pixel_std):
        deltas.append(f"model.pixel_std={_fmt_list(req.pixel_std)}")
    if req.stride_in_1x1 != base.stride_in_1x1:
        deltas.append(f"model.backbone.bottom_up.stages.stride_in_1x1={req.stride_in_1x1}")
    for pooler in ("box_pooler", "mask_pooler"):
        if req.roi_aligned != base.roi_aligned:
            kind = "ROIAlignV2" if req.roi_aligned else "ROIAlign"
            deltas.append(f"model.roi_heads.{pooler}.pooler_type={kind}")
        if req.roi_sampling_ratio != base.roi_sampling_ratio:
            deltas.append(f"model.roi_heads.{pooler}.sampling_ratio={req.roi_sampling_ratio}")
    if req.rounded_anchors != base.rounded_anchors:
        target = (
            ROUNDED_ANCHORS
            if req.rounded_anchors
            else "detectron2.modeling.anchor_generator.DefaultAnchorGenerator"
        )
        deltas.append(f"model.proposal_generator.anchor_generator._target_={target}")
    return deltas


def _model_settings(model):
    """The settings of ``model`` that :class:`Requirements` names (those it can tell)."""
    found = {}
    if hasattr(model, "pixel_mean"):
        found["pixel_mean"] = tuple(float(v) for v in model.pixel_mean.flatten())
        found["pixel_std"] = tuple(float(v) for v in model.pixel_std.flatten())
    if hasattr(model, "input_format"):
        found["input_format"] = model.input_format
    backbone = getattr(model, "backbone", None)
    bottom_up = getattr(backbone, "bottom_up", backbone)
    block = getattr(bottom_up, "res3", None)
    if block is not None and hasattr(block[0], "conv3"):  # bottleneck blocks only
        found["stride_in_1x1"] = block[0].conv1.stride == (2, 2)
    heads = getattr(model, "roi_heads", None)
    for pooler in (getattr(heads, "box_pooler", None), getattr(heads, "mask_pooler", None)):
        if pooler is None:
            continue
        align = pooler.level_poolers[0]
        if hasattr(align, "aligned") and hasattr(align, "sampling_ratio"):
            found.setdefault("roi_aligned", bool(align.aligned))
            found.setdefault("roi_sampling_ratio", int(align.sampling_ratio))
    generator = getattr(getattr(model, "proposal_generator", None), "anchor_generator", None)
    if generator is not None and hasattr(generator, "cell_anchors"):
        cells = [c for _, c in generator.cell_anchors.named_buffers()]
        found["rounded_anchors"] = all(torch.equal(c, c.round()) for c in cells)
    return found


def check_model(model, req, source, image_format=None):
    """Raise :class:`CheckpointError` when ``model`` (and the data's ``image_format``, when
    given) does not have the settings ``req`` that the weights from ``source`` need.

    The message names the weights, each disagreeing setting (needed vs. found) and the config
    to use. Settings the model does not expose (a ResNet without bottlenecks has no
    ``stride_in_1x1``) are not checked.
    """
    found = _model_settings(model)
    if image_format is not None:
        found["image_format"] = image_format
    wanted = req.to_dict()
    problems = []
    for key in (
        "input_format",
        "pixel_mean",
        "pixel_std",
        "stride_in_1x1",
        "roi_aligned",
        "roi_sampling_ratio",
        "rounded_anchors",
    ):
        if key not in found:
            continue
        want, have = wanted[key], found[key]
        if isinstance(want, list):
            same = len(want) == len(have) and all(abs(a - b) < 1e-3 for a, b in zip(want, have))
        elif key == "rounded_anchors" and not want:
            # Unrounded anchors may happen to be whole numbers: only a rounding generator is
            # certain to be wrong.
            same = not (have and _rounds_anchors(model))
        else:
            same = want == have
        if not same:
            problems.append(f"{key} {_show(want)} (the model has {_show(have)})")
    if "image_format" in found and found["image_format"] != req.input_format:
        problems.append(
            f"images read as {req.input_format} (dataloader.train.mapper.image_format is "
            f"{found['image_format']})"
        )
    if problems:
        raise CheckpointError(
            f"{source} holds {req.name} weights, which need "
            + "; ".join(problems)
            + f". Use {req.config}, which sets them on the Cityscapes recipe, or override: "
            + " ".join(config_deltas(req))
            + "."
        )


def _rounds_anchors(model):
    from ...modeling import RoundedAnchorGenerator

    return isinstance(model.proposal_generator.anchor_generator, RoundedAnchorGenerator)


def _show(value):
    if isinstance(value, (list, tuple)):
        return _fmt_list(value)
    return str(value)
