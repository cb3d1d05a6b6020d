"""Numeric comparison of a converted Detectron2 model with MMDetection's own Mask R-CNN.

Needs ``mmengine``, ``mmdet`` 3.x and ``mmcv`` (2.0-2.1; ``mmcv-lite``, without compiled ops,
is enough, see :func:`import_mmdet`) importable; tests and the benchmark skip it otherwise.

MMDetection's model is built by MMDetection from its own config file
(``configs/mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py`` as shipped in the mmdet package) and run
by its own code, except for the two compiled mmcv ops it calls: RoIAlign runs through mmcv's
``RoIAlign(use_torchvision=True)`` option (mmcv's own call of ``torchvision.ops.roi_align``
with the same aligned flag and sampling ratio), and, when ``mmcv._ext`` is missing, NMS
through ``torchvision.ops.nms`` (what Detectron2 calls too; mmcv's kernel computes the same
IoU with ``offset=0``).
"""
import importlib
import os
import sys
import types

import torch

from detectron2.structures import Boxes

from .parity import compare, match_detections, randomize, set_diff, worst

__all__ = ["build_mmdet_maskrcnn", "import_mmdet", "mmdet_detections", "mmdet_parity"]

# MMDetection's COCO Mask R-CNN R50-FPN configs: pytorch style (its model zoo's r50_fpn
# models) and caffe style (the r50-caffe_fpn models of its fine-tuning tutorial).
CONFIGS = {"pytorch": "configs/mask_rcnn/mask-rcnn_r50_fpn_1x_coco.py",
           "caffe": "configs/mask_rcnn/mask-rcnn_r50-caffe_fpn_1x_coco.py"}


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
    """Import mmdet's models (registering them); returns the mmdet module. With mmcv-lite
    (no ``mmcv._ext``) a stand-in (see :func:`_fallback_ext`) is installed first. Raises
    ImportError when mmengine, mmcv or mmdet is missing."""
    import mmcv  # noqa: F401  (ImportError when absent)
    import mmengine  # noqa: F401

    try:
        importlib.import_module("mmcv._ext")
    except ImportError:
        sys.modules["mmcv._ext"] = _fallback_ext()
    mmdet = importlib.import_module("mmdet")
    importlib.import_module("mmdet.models")
    from mmdet.utils import register_all_modules

    register_all_modules()
    return mmdet


def build_mmdet_maskrcnn(images_bgr, seed, style="pytorch", max_per_img=20):
    """MMDetection's Mask R-CNN R50-FPN of ``style`` (see :data:`CONFIGS`), built from its
    config file with seeded random weights (see :func:`~.parity.randomize`) measured on
    ``images_bgr``, in eval mode; and the config's text (what a checkpoint's meta holds)."""
    mmdet = import_mmdet()
    from mmengine.config import Config
    from mmdet.registry import MODELS

    root = os.path.dirname(mmdet.__file__)
    path = os.path.join(root, ".mim", CONFIGS[style])
    if not os.path.isfile(path):
        raise ImportError(f"mmdet's config {CONFIGS[style]} is not in its package ({path})")
    cfg = Config.fromfile(path)
    for extractor in ("bbox_roi_extractor", "mask_roi_extractor"):
        cfg.model.roi_head[extractor].roi_layer.use_torchvision = True
    cfg.model.test_cfg.rcnn.max_per_img = max_per_img
    torch.manual_seed(seed)
    model = MODELS.build(cfg.model)  # no init_weights(): it would download an ImageNet R50
    model.eval()
    data = _mmdet_inputs(model, images_bgr)
    randomize(model, lambda: model.extract_feat(data["inputs"]), seed,
              logit_layers={"rpn_head.rpn_cls": 0.1, "rpn_head.rpn_reg": 0.01,
                            "roi_head.bbox_head.fc_cls": 0.35, "roi_head.bbox_head.fc_reg": 0.08})
    return model, cfg.pretty_text


def _d2_view(d2_model, images):
    return images if d2_model.input_format == "RGB" else [im.flip(0) for im in images]


def _mmdet_inputs(model, images_bgr):
    from mmdet.structures import DetDataSample

    samples = []
    for i, im in enumerate(images_bgr):
        h, w = im.shape[1:]
        samples.append(DetDataSample(metainfo=dict(img_id=i, img_shape=(h, w), ori_shape=(h, w),
                                                   scale_factor=(1.0, 1.0))))
    return model.data_preprocessor({"inputs": list(images_bgr), "data_samples": samples}, False)


@torch.no_grad()
def mmdet_parity(mm_model, d2_model, images, box_rois=300, mask_rois=8):
    """Compare MMDetection's ``mm_model`` with ``d2_model`` built from
    ``configs/cityscapes_ft_from_mmdet.py`` (80 classes) and loaded with its conversion.

    ``images``: uint8 RGB tensors (3, H, W). MMDetection is given them in BGR, as mmcv reads
    files (its preprocessor converts them when ``bgr_to_rgb=True``), Detectron2 in its
    ``input_format``, as its mapper reads them. Same stages as
    :func:`~.parity.torchvision_parity`; the class rows are the same on both sides.
    """
    from mmdet.structures.bbox import bbox2roi

    out = {}
    data = _mmdet_inputs(mm_model, [im.flip(0) for im in images])
    d2_images = d2_model.preprocess_image([{"image": im} for im in _d2_view(d2_model, images)])
    out["preprocess"] = compare(d2_images.tensor, data["inputs"])

    mm_feats = mm_model.extract_feat(data["inputs"])
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
    mm_anchors = torch.cat(mm_model.rpn_head.prior_generator.grid_priors(
        [f.shape[-2:] for f in mm_feats], device="cpu"))
    out["anchors"] = compare(d2_anchors, mm_anchors)

    proposals, _ = rpn(d2_images, d2_feats, None)
    mm_proposals = mm_model.rpn_head.predict(mm_feats, data["data_samples"], rescale=False)
    counts = [(len(p), len(m)) for p, m in zip(proposals, mm_proposals)]
    if all(a == b for a, b in counts):
        out["proposals"] = worst(set_diff(p.proposal_boxes.tensor, m.bboxes)
                                 for p, m in zip(proposals, mm_proposals))
    boxes = [p.proposal_boxes.tensor[:box_rois] for p in proposals]

    heads = d2_model.roi_heads
    rois = bbox2roi(boxes)
    d2_box_feats = heads.box_pooler([d2_feats[f] for f in heads.box_in_features],
                                    [Boxes(b) for b in boxes])
    mm_head = mm_model.roi_head
    mm_box_feats = mm_head.bbox_roi_extractor(mm_feats[:4], rois)
    out["box_roi_features"] = compare(d2_box_feats, mm_box_feats)
    d2_logits, d2_deltas = heads.box_predictor(heads.box_head(d2_box_feats))
    mm_logits, mm_deltas = mm_head.bbox_head(mm_box_feats)
    out["cls_logits"] = compare(d2_logits, mm_logits)
    out["box_deltas"] = compare(d2_deltas, mm_deltas)

    boxes = [b[:mask_rois] for b in boxes]
    rois = bbox2roi(boxes)
    d2_mask_feats = heads.mask_pooler([d2_feats[f] for f in heads.mask_in_features],
                                      [Boxes(b) for b in boxes])
    mm_mask_feats = mm_head.mask_roi_extractor(mm_feats[:4], rois)
    out["mask_roi_features"] = compare(d2_mask_feats, mm_mask_feats)
    out["mask_logits"] = compare(heads.mask_head.layers(d2_mask_feats),
                                 mm_head.mask_head(mm_mask_feats))
    out["proposal_counts"] = counts
    return out


@torch.no_grad()
def mmdet_detections(mm_model, d2_model, images):
    """Both models' final detections on ``images`` (boxes, scores, labels, pasted masks), one
    :func:`~.parity.match_detections` result per image."""
    data = _mmdet_inputs(mm_model, [im.flip(0) for im in images])
    mm_out = mm_model.predict(data["inputs"], data["data_samples"], rescale=True)
    d2_out = d2_model([{"image": im, "height": im.shape[1], "width": im.shape[2]}
                       for im in _d2_view(d2_model, images)])
    results = []
    for mm, d2 in zip(mm_out, d2_out):
        inst, pred = d2["instances"], mm.pred_instances
        ours = {"boxes": inst.pred_boxes.tensor, "scores": inst.scores,
                "labels": inst.pred_classes, "masks": inst.pred_masks.bool()}
        theirs = {"boxes": pred.bboxes, "scores": pred.scores, "labels": pred.labels,
                  "masks": pred.masks.bool()}
        results.append(match_detections(ours, theirs))
    return results
