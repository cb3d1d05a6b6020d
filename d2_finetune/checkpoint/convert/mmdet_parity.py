"""Numeric comparison of a converted Detectron2 model with MMDetection's own Mask R-CNN.

Runs with MMDetection 3.x (``mmengine``, ``mmdet`` 3.x, ``mmcv`` 2.0-2.1 or ``mmcv-lite``) or
2.x (``mmdet`` 2.x, ``mmcv`` 1.x built without ops); tests and the benchmark skip it when
neither is importable. The model is built by MMDetection from its own config file (as shipped
in the mmdet package: ``configs/mask_rcnn/mask[-_]rcnn_r50[_-]{,caffe_}fpn_1x_coco.py``) and run
by its own code, input normalisation included (3.x's ``DetDataPreprocessor``, 2.x's
``Normalize`` and ``Pad`` pipeline steps), except for mmcv's two compiled ops: RoIAlign runs
through mmcv's ``RoIAlign(use_torchvision=True)`` option (mmcv's own call of
``torchvision.ops.roi_align`` with the same aligned flag and sampling ratio) and, when
``mmcv._ext`` is missing, NMS through ``torchvision.ops.nms`` (what Detectron2 calls too; mmcv's
kernel computes the same IoU with ``offset=0``).
"""

import importlib
import os
import sys
import types

import torch

from detectron2.structures import Boxes

from .parity import compare, match_detections, randomize, set_diff, worst

__all__ = [
    "build_mmdet_maskrcnn",
    "import_mmdet",
    "mmdet_checkpoint",
    "mmdet_detections",
    "mmdet_model",
    "mmdet_parity",
]

# MMDetection's COCO Mask R-CNN R50-FPN configs, pytorch style (its model zoo's r50_fpn
# models) and caffe style (the r50-caffe_fpn models of its fine-tuning tutorial), by major
# version.
CONFIGS = {
    3: {
        "pytorch": "configs/mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py",
        "caffe": "configs/mask_rcnn/mask-rcnn_r50-caffe_fpn_1x_coco.py",
    },
    2: {
        "pytorch": "configs/mask_rcnn/mask_rcnn_r50_fpn_1x_coco.py",
        "caffe": "configs/mask_rcnn/mask_rcnn_r50_caffe_fpn_1x_coco.py",
    },
}
# Factors that bring MMDetection's default-initialised heads to a trained model's range
# (objectness ~1.7, RPN deltas ~0.15, class logits ~3.4, box deltas ~0.8 standard deviation):
# near-ties in top-k, NMS and the score threshold would otherwise decide the detections.
LOGIT_SCALES = {
    "rpn_head.rpn_cls": 0.1,
    "rpn_head.rpn_reg": 0.01,
    "roi_head.bbox_head.fc_cls": 0.35,
    "roi_head.bbox_head.fc_reg": 0.08,
}


def _fallback_ext():
    """A stand-in for mmcv's compiled ``mmcv._ext``: ``nms`` through torchvision; any other
    op raises NotImplementedError when called (importing mmdet only looks the names up)."""
    import torchvision

    ext = types.ModuleType("mmcv._ext")

    def nms(boxes, scores, iou_threshold, offset=0):
        if offset != 0:
            raise NotImplementedError("mmcv nms with offset=1 (legacy +1 boxes)")
        return torchvision.ops.nms(boxes.float(), scores.float(), float(iou_threshold))

    def missing(name):
        def op(*args, **kwargs):
            raise NotImplementedError(f"mmcv's compiled op {name} is not installed")

        return op

    def getattr_(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return missing(name)

    ext.nms = nms
    ext.__getattr__ = getattr_
    return ext


def import_mmdet():
    """Import mmdet and its models (registering them); returns the mmdet module. Without
    mmcv's compiled ops a stand-in (see :func:`_fallback_ext`) is installed first. Raises
    ImportError when mmcv or mmdet (3.x: and mmengine) is missing."""
    import mmcv  # noqa: F401  (ImportError when absent)

    try:
        importlib.import_module("mmcv._ext")
    except ImportError:
        sys.modules["mmcv._ext"] = _fallback_ext()
    mmdet = importlib.import_module("mmdet")
    importlib.import_module("mmdet.models")
    if _major(mmdet) >= 3:
        from mmdet.utils import register_all_modules

        register_all_modules()
    return mmdet


def _major(mmdet):
    return int(mmdet.__version__.split(".")[0])


def mmdet_model(style="pytorch", max_per_img=100):
    """MMDetection's Mask R-CNN R50-FPN of ``style`` (see :data:`CONFIGS`) as its config file
    builds it (PyTorch's default initialisation), in eval mode, and the config."""
    mmdet = import_mmdet()
    major = _major(mmdet)
    path = os.path.join(os.path.dirname(mmdet.__file__), ".mim", CONFIGS[major][style])
    if not os.path.isfile(path):
        raise ImportError(f"mmdet's config {CONFIGS[major][style]} is not in its package")
    if major >= 3:
        from mmdet.registry import MODELS
        from mmengine.config import Config

        build = MODELS.build
    else:
        from mmcv import Config
        from mmdet.models import build_detector as build
    cfg = Config.fromfile(path)
    for extractor in ("bbox_roi_extractor", "mask_roi_extractor"):
        cfg.model.roi_head[extractor].roi_layer.use_torchvision = True
    cfg.model.test_cfg.rcnn.max_per_img = max_per_img
    model = build(cfg.model)  # no init_weights(): it would download an ImageNet R50
    model.eval()
    model.mmdet_cfg = cfg  # the 2.x input pipeline is in the config, not the model
    return model, cfg


def build_mmdet_maskrcnn(images_bgr, seed, style="pytorch", max_per_img=20):
    """:func:`mmdet_model` with seeded random weights (see :func:`~.parity.randomize`)
    measured on ``images_bgr``, in eval mode; and the config's text."""
    torch.manual_seed(seed)
    model, cfg = mmdet_model(style, max_per_img)
    batch, _ = _mmdet_inputs(model, images_bgr)
    randomize(model, lambda: model.extract_feat(batch), seed, logit_layers=LOGIT_SCALES)
    return model, cfg.pretty_text


def mmdet_checkpoint(model, cfg_text, classes):
    """``model``'s checkpoint as the installed MMDetection saves it: 3.x (mmengine) records
    the config as ``cfg`` and the classes in ``dataset_meta``; 2.x as ``config``, ``CLASSES``
    and ``mmdet_version``."""
    import mmdet

    if _major(mmdet) >= 3:
        meta = {
            "mmengine_version": "0.10",
            "cfg": cfg_text,
            "dataset_meta": {"classes": tuple(classes)},
        }
    else:
        meta = {"mmdet_version": mmdet.__version__, "config": cfg_text, "CLASSES": tuple(classes)}
    return {"meta": meta, "state_dict": model.state_dict()}


def _bbox2roi(boxes):
    try:
        from mmdet.structures.bbox import bbox2roi
    except ImportError:  # 2.x
        from mmdet.core import bbox2roi
    return bbox2roi(boxes)


def _mmdet_inputs(model, images_bgr):
    """MMDetection's normalised, padded batch of ``images_bgr`` (uint8 BGR, as mmcv reads
    files) by its own code, and the per-image metadata its heads take."""
    if hasattr(model, "data_preprocessor"):  # 3.x
        from mmdet.structures import DetDataSample

        samples = []
        for i, im in enumerate(images_bgr):
            h, w = im.shape[1:]
            samples.append(
                DetDataSample(
                    metainfo=dict(
                        img_id=i, img_shape=(h, w), ori_shape=(h, w), scale_factor=(1.0, 1.0)
                    )
                )
            )
        data = model.data_preprocessor({"inputs": list(images_bgr), "data_samples": samples}, False)
        return data["inputs"], data["data_samples"]
    import numpy as np
    from mmdet.datasets.pipelines import Normalize, Pad

    norm = Normalize(**model.mmdet_cfg.img_norm_cfg)
    pad = Pad(size_divisor=32)
    images, metas = [], []
    for im in images_bgr:
        h, w = im.shape[1:]
        result = pad(
            norm({"img": im.permute(1, 2, 0).numpy().astype(np.float32), "img_fields": ["img"]})
        )
        images.append(torch.from_numpy(result["img"]).permute(2, 0, 1))
        metas.append(
            dict(
                img_shape=(h, w, 3),
                ori_shape=(h, w, 3),
                pad_shape=result["pad_shape"],
                flip=False,
                scale_factor=np.ones(4, dtype=np.float32),
            )
        )
    size = [max(im.shape[i] for im in images) for i in (1, 2)]
    batch = torch.zeros(len(images), 3, *size)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[1], : im.shape[2]] = im
        metas[i]["batch_input_shape"] = tuple(size)
    return batch, metas


def _rpn_boxes(model, feats, metas):
    if hasattr(model.rpn_head, "simple_test_rpn"):  # 2.x: (N, 5) boxes and scores
        return [p[:, :4] for p in model.rpn_head.simple_test_rpn(feats, metas)]
    return [p.bboxes for p in model.rpn_head.predict(feats, metas, rescale=False)]


def _d2_view(d2_model, images):
    return images if d2_model.input_format == "RGB" else [im.flip(0) for im in images]


@torch.no_grad()
def mmdet_parity(mm_model, d2_model, images, box_rois=300, mask_rois=8):
    """Compare MMDetection's ``mm_model`` with ``d2_model`` built from the config that the
    conversion names (80 classes) and loaded with it.

    ``images``: uint8 RGB tensors (3, H, W). MMDetection is given them in BGR, as mmcv reads
    files (its normalisation converts them when told to), Detectron2 in its
    ``input_format``, as its mapper reads them. Same stages as
    :func:`~.parity.torchvision_parity`; the class rows are the same on both sides.
    """
    out = {}
    batch, metas = _mmdet_inputs(mm_model, [im.flip(0) for im in images])
    d2_images = d2_model.preprocess_image([{"image": im} for im in _d2_view(d2_model, images)])
    out["preprocess"] = compare(d2_images.tensor, batch)

    mm_feats = mm_model.extract_feat(batch)
    d2_feats = d2_model.backbone(d2_images.tensor)
    for i, name in enumerate(["p2", "p3", "p4", "p5", "p6"]):
        out[name] = compare(d2_feats[name], mm_feats[i])

    rpn = d2_model.proposal_generator
    levels = [d2_feats[f] for f in rpn.in_features]
    d2_obj, d2_del = rpn.rpn_head(levels)
    mm_obj, mm_del = mm_model.rpn_head(mm_feats)
    out["rpn_objectness"] = worst(compare(a, b) for a, b in zip(d2_obj, mm_obj))
    out["rpn_deltas"] = worst(compare(a, b) for a, b in zip(d2_del, mm_del))
    d2_anchors = torch.cat([b.tensor for b in rpn.anchor_generator(levels)])
    mm_anchors = torch.cat(
        mm_model.rpn_head.prior_generator.grid_priors(
            [f.shape[-2:] for f in mm_feats], device="cpu"
        )
    )
    out["anchors"] = compare(d2_anchors, mm_anchors)

    proposals, _ = rpn(d2_images, d2_feats, None)
    mm_proposals = _rpn_boxes(mm_model, mm_feats, metas)
    counts = [(len(p), len(m)) for p, m in zip(proposals, mm_proposals)]
    if all(a == b for a, b in counts):
        out["proposals"] = worst(
            set_diff(p.proposal_boxes.tensor, m) for p, m in zip(proposals, mm_proposals)
        )
    boxes = [p.proposal_boxes.tensor[:box_rois] for p in proposals]

    heads, mm_head = d2_model.roi_heads, mm_model.roi_head
    rois = _bbox2roi(boxes)
    d2_box_feats = heads.box_pooler(
        [d2_feats[f] for f in heads.box_in_features], [Boxes(b) for b in boxes]
    )
    mm_box_feats = mm_head.bbox_roi_extractor(mm_feats[:4], rois)
    out["box_roi_features"] = compare(d2_box_feats, mm_box_feats)
    d2_logits, d2_deltas = heads.box_predictor(heads.box_head(d2_box_feats))
    mm_logits, mm_deltas = mm_head.bbox_head(mm_box_feats)
    out["cls_logits"] = compare(d2_logits, mm_logits)
    out["box_deltas"] = compare(d2_deltas, mm_deltas)

    boxes = [b[:mask_rois] for b in boxes]
    rois = _bbox2roi(boxes)
    d2_mask_feats = heads.mask_pooler(
        [d2_feats[f] for f in heads.mask_in_features], [Boxes(b) for b in boxes]
    )
    mm_mask_feats = mm_head.mask_roi_extractor(mm_feats[:4], rois)
    out["mask_roi_features"] = compare(d2_mask_feats, mm_mask_feats)
    out["mask_logits"] = compare(
        heads.mask_head.layers(d2_mask_feats), mm_head.mask_head(mm_mask_feats)
    )
    out["proposal_counts"] = counts
    return out


def _mmdet_predictions(mm_model, batch, metas):
    """MMDetection's final detections as ``{"boxes", "scores", "labels", "masks"}`` per image,
    sorted by score."""
    if hasattr(mm_model, "data_preprocessor"):  # 3.x
        return [
            {"boxes": p.bboxes, "scores": p.scores, "labels": p.labels, "masks": p.masks.bool()}
            for p in (s.pred_instances for s in mm_model.predict(batch, metas, rescale=True))
        ]
    results = []
    for boxes_per_class, masks_per_class in mm_model.simple_test(batch, metas, rescale=True):
        dets = [
            (c, row, mask)
            for c, (rows, masks) in enumerate(zip(boxes_per_class, masks_per_class))
            for row, mask in zip(rows, masks)
        ]
        dets.sort(key=lambda d: -float(d[1][4]))
        h, w = metas[len(results)]["ori_shape"][:2]
        results.append(
            {
                "boxes": torch.tensor([list(d[1][:4]) for d in dets]).reshape(-1, 4),
                "scores": torch.tensor([float(d[1][4]) for d in dets]),
                "labels": torch.tensor([d[0] for d in dets], dtype=torch.long),
                "masks": torch.stack([torch.as_tensor(d[2]) for d in dets]).bool()
                if dets
                else torch.zeros(0, h, w, dtype=torch.bool),
            }
        )
    return results


@torch.no_grad()
def mmdet_detections(mm_model, d2_model, images):
    """Both models' final detections on ``images`` (boxes, scores, labels, pasted masks), one
    :func:`~.parity.match_detections` result per image."""
    batch, metas = _mmdet_inputs(mm_model, [im.flip(0) for im in images])
    theirs = _mmdet_predictions(mm_model, batch, metas)
    d2_out = d2_model(
        [
            {"image": im, "height": im.shape[1], "width": im.shape[2]}
            for im in _d2_view(d2_model, images)
        ]
    )
    results = []
    for mm, d2 in zip(theirs, d2_out):
        inst = d2["instances"]
        ours = {
            "boxes": inst.pred_boxes.tensor,
            "scores": inst.scores,
            "labels": inst.pred_classes,
            "masks": inst.pred_masks.bool(),
        }
        results.append(match_detections(ours, mm))
    return results
