"""Numeric comparison of a converted Detectron2 model with the model it was converted from.

Used by ``tests/test_checkpoint_convert_torchvision.py``, ``tests/test_checkpoint_convert_mmdet.py``
and ``bench/checkpoint_parity.py``. The source models are built with seeded random weights
(:func:`randomize`): the default initialisation, BatchNorm statistics measured on the test images
layer by layer (so activations stay in range; then the affine parameters are drawn at random, so no
statistic is trivial), and logits spread so that the softmax and sigmoid decisions downstream
(top-k, NMS, score threshold) are not near-ties.

Each comparison returns ``{stage: (largest absolute difference, largest absolute value of the
source's output)}``; the stages follow the model from the input to the detections.
"""

import torch
from torch import nn

from detectron2.structures import Boxes

__all__ = [
    "compare",
    "match_detections",
    "paste_difference",
    "random_torchvision_maskrcnn",
    "randomize",
    "set_diff",
    "smooth_masks",
    "synthetic_images",
    "torchvision_detections",
    "torchvision_parity",
    "worst",
]


@torch.no_grad()
def randomize(model, run_backbone, seed, logit_layers=(), scale=1.0):
    """Give ``model``'s BatchNorm layers the statistics of their inputs when ``run_backbone()``
    runs (layer by layer, in forward order), then seeded random affine parameters
    (weight in [0.5, 1.5), bias N(0, 0.1)); multiply each weight of ``logit_layers`` (name ->
    factor) by its factor. ``model`` stays in eval mode."""
    generator = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]

    def measure(module, args):
        x = args[0].float()
        module.running_mean.copy_(x.mean(dim=(0, 2, 3)))
        module.running_var.copy_(x.var(dim=(0, 2, 3)))
        module.weight.fill_(1.0)
        module.bias.fill_(0.0)

    handles = [m.register_forward_pre_hook(measure) for m in norms]
    model.eval()
    try:
        run_backbone()
    finally:
        for h in handles:
            h.remove()
    for m in norms:
        m.weight.copy_(torch.rand(m.weight.shape, generator=generator) + 0.5)
        m.bias.copy_(torch.randn(m.bias.shape, generator=generator) * 0.1)
    modules = dict(model.named_modules())
    for name, factor in dict(logit_layers).items():
        modules[name].weight.mul_(factor * scale)
    return model


# Factors that bring torchvision's default-initialised box regressors to a trained model's
# range (RPN deltas ~0.15, box deltas ~0.6 standard deviation): boxes stay near their anchors
# and proposals instead of mostly clipping to the image border.
TORCHVISION_LOGIT_SCALES = {"rpn.head.bbox_pred": 0.1, "roi_heads.box_predictor.bbox_pred": 0.2}


def random_torchvision_maskrcnn(images, seed=0, **kwargs):
    """torchvision's ``maskrcnn_resnet50_fpn`` (v1, ``weights=None, weights_backbone=None``)
    with seeded random weights (:func:`randomize` on ``images``), in eval mode, sized not to
    resize ``images`` (``min_size``/``max_size`` = their sides); ``kwargs`` go to the
    constructor."""
    import torchvision

    height, width = images[0].shape[1:]
    torch.manual_seed(seed)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None,
        weights_backbone=None,
        min_size=min(height, width),
        max_size=max(height, width),
        **kwargs,
    ).eval()
    normalised = [im.float() / 255 for im in images]
    randomize(
        model,
        lambda: model.backbone(model.transform(normalised)[0].tensors),
        seed,
        logit_layers=TORCHVISION_LOGIT_SCALES,
    )
    return model


def synthetic_images(n, height=256, width=320, seed=0):
    """``n`` uint8 RGB images (3, height, width): grey noise with six flat-coloured rectangles
    each, seeded."""
    generator = torch.Generator().manual_seed(seed)
    images = []
    for _ in range(n):
        image = (torch.randn(3, height, width, generator=generator) * 20 + 110).clamp(0, 255)
        for _ in range(6):
            y0 = int(torch.randint(0, height - 40, (1,), generator=generator))
            x0 = int(torch.randint(0, width - 40, (1,), generator=generator))
            h = int(torch.randint(20, 120, (1,), generator=generator))
            w = int(torch.randint(20, 160, (1,), generator=generator))
            color = torch.randint(0, 255, (3, 1, 1), generator=generator).float()
            image[:, y0 : y0 + h, x0 : x0 + w] = color
        images.append(image.to(torch.uint8))
    return images


def compare(ours, theirs):
    """``(max |ours - theirs|, max |theirs|)`` of two tensors of the same shape."""
    ours, theirs = ours.detach().float(), theirs.detach().float()
    if ours.shape != theirs.shape:
        raise AssertionError(f"shapes differ: {tuple(ours.shape)} vs {tuple(theirs.shape)}")
    if theirs.numel() == 0:
        return 0.0, 0.0
    return float((ours - theirs).abs().max()), float(theirs.abs().max())


def worst(pairs):
    """The largest difference and the largest reference value over several comparisons."""
    pairs = list(pairs)
    return max(d for d, _ in pairs), max(r for _, r in pairs)


def set_diff(a, b):
    """``(d, max |b|)``: d is the largest distance (max over coordinates) from a box of either
    set to the nearest box of the other, so the same boxes in another order (near-equal
    scores swapped by rounding) give 0."""
    d = (a[:, None, :] - b[None, :, :]).abs().amax(-1)
    return max(float(d.min(1).values.max()), float(d.min(0).values.max())), float(b.abs().max())


def match_detections(ours, theirs, iou_of_masks=True):
    """Compare two lists of detections, each ``{"boxes", "scores", "labels", "masks"}`` (masks
    boolean, labels in a common numbering), sorted by score. Returns ``{"count": (n_ours,
    n_theirs), "labels_equal": bool, "boxes": (diff, ref), "scores": (diff, ref),
    "mask_iou_min": float}``; the values compare the first min(n_ours, n_theirs)."""
    n = min(len(ours["scores"]), len(theirs["scores"]))
    a = {k: v[:n] for k, v in ours.items()}
    b = {k: v[:n] for k, v in theirs.items()}
    result = {
        "count": (len(ours["scores"]), len(theirs["scores"])),
        "labels_equal": bool(torch.equal(a["labels"], b["labels"])),
        "boxes": compare(a["boxes"], b["boxes"]),
        "scores": compare(a["scores"], b["scores"]),
        "mask_iou_min": 1.0,
    }
    if iou_of_masks and n and "masks" in a:
        inter = (a["masks"] & b["masks"]).flatten(1).sum(1).float()
        union = (a["masks"] | b["masks"]).flatten(1).sum(1).float().clamp(min=1)
        result["mask_iou_min"] = float((inter / union).min())
        result["mask_iou_mean"] = float((inter / union).mean())
    return result


@torch.no_grad()
def torchvision_parity(tv_model, d2_model, images, box_rois=300, mask_rois=8):
    """Compare torchvision's Mask R-CNN ``tv_model`` with ``d2_model`` built from
    ``configs/cityscapes_ft_from_torchvision.py`` (80 classes) and loaded with its conversion.

    ``images``: uint8 RGB tensors (3, H, W) of one size, which ``tv_model`` must not resize
    (``min_size``/``max_size`` equal to it), so that both see the same pixels.

    Stages: ``preprocess`` (the normalised, padded batch), ``p2``-``p6`` (FPN levels),
    ``rpn_objectness``/``rpn_deltas`` (all levels), ``anchors``, ``proposals`` (the boxes,
    when both keep the same number), then on the same RoIs (Detectron2's proposals):
    ``box_roi_features``, ``box_head`` (fc2), ``cls_logits``, ``box_deltas`` (on the first
    ``box_rois`` proposals of each image), ``mask_roi_features``, ``mask_logits`` (on the first
    ``mask_rois``: the mask head costs ~1 GFLOP per RoI); classes compared by COCO id, torchvision's
    background row with Detectron2's last, its N/A rows not compared.
    """
    from .torchvision import class_rows

    ids, _ = class_rows(91)
    out = {}
    tv_images, _ = tv_model.transform([im.float() / 255 for im in images])
    inputs = [{"image": im} for im in images]
    d2_images = d2_model.preprocess_image(inputs)
    out["preprocess"] = compare(d2_images.tensor, tv_images.tensors)

    tv_feats = tv_model.backbone(tv_images.tensors)
    d2_feats = d2_model.backbone(d2_images.tensor)
    for name, tv_name in zip(["p2", "p3", "p4", "p5", "p6"], ["0", "1", "2", "3", "pool"]):
        out[name] = compare(d2_feats[name], tv_feats[tv_name])

    rpn = d2_model.proposal_generator
    levels = [d2_feats[f] for f in rpn.in_features]
    d2_obj, d2_del = rpn.rpn_head(levels)
    tv_obj, tv_del = tv_model.rpn.head(list(tv_feats.values()))
    out["rpn_objectness"] = worst(compare(a, b) for a, b in zip(d2_obj, tv_obj))
    out["rpn_deltas"] = worst(compare(a, b) for a, b in zip(d2_del, tv_del))
    d2_anchors = torch.cat([b.tensor for b in rpn.anchor_generator(levels)])
    tv_anchors = tv_model.rpn.anchor_generator(tv_images, list(tv_feats.values()))[0]
    out["anchors"] = compare(d2_anchors, tv_anchors)

    proposals, _ = rpn(d2_images, d2_feats, None)
    tv_proposals, _ = tv_model.rpn(tv_images, tv_feats)
    counts = [(len(p), len(t)) for p, t in zip(proposals, tv_proposals)]
    if all(a == b for a, b in counts):
        out["proposals"] = worst(
            set_diff(p.proposal_boxes.tensor, t) for p, t in zip(proposals, tv_proposals)
        )
    boxes = [p.proposal_boxes.tensor[:box_rois] for p in proposals]

    heads = d2_model.roi_heads
    d2_box_feats = heads.box_pooler(
        [d2_feats[f] for f in heads.box_in_features], [Boxes(b) for b in boxes]
    )
    tv_box_feats = tv_model.roi_heads.box_roi_pool(tv_feats, boxes, tv_images.image_sizes)
    out["box_roi_features"] = compare(d2_box_feats, tv_box_feats)
    d2_fc = heads.box_head(d2_box_feats)
    tv_fc = tv_model.roi_heads.box_head(tv_box_feats)
    out["box_head"] = compare(d2_fc, tv_fc)
    d2_logits, d2_deltas = heads.box_predictor(d2_fc)
    tv_logits, tv_deltas = tv_model.roi_heads.box_predictor(tv_fc)
    out["cls_logits"] = compare(d2_logits, tv_logits[:, ids + [0]])
    rows = torch.tensor([4 * i + j for i in ids for j in range(4)])
    out["box_deltas"] = compare(d2_deltas, tv_deltas[:, rows])

    boxes = [b[:mask_rois] for b in boxes]
    d2_mask_feats = heads.mask_pooler(
        [d2_feats[f] for f in heads.mask_in_features], [Boxes(b) for b in boxes]
    )
    tv_mask_feats = tv_model.roi_heads.mask_roi_pool(tv_feats, boxes, tv_images.image_sizes)
    out["mask_roi_features"] = compare(d2_mask_feats, tv_mask_feats)
    d2_masks = heads.mask_head.layers(d2_mask_feats)
    tv_masks = tv_model.roi_heads.mask_predictor(tv_model.roi_heads.mask_head(tv_mask_feats))
    out["mask_logits"] = compare(d2_masks, tv_masks[:, ids])
    out["proposal_counts"] = counts
    return out


@torch.no_grad()
def torchvision_detections(tv_model, d2_model, images):
    """Both models' detections on ``images`` (as in :func:`torchvision_parity`), labels as
    COCO ids, one :func:`match_detections` result per image plus ``mask_probs``: the 28x28
    mask probabilities of the detections before pasting, compared. The pasted masks
    (thresholded at 0.5) differ by the pasting: see :func:`paste_difference`."""
    from detectron2.modeling.postprocessing import detector_postprocess

    from .torchvision import class_rows

    ids = torch.tensor(class_rows(91)[0])
    tv_images, _ = tv_model.transform([im.float() / 255 for im in images])
    tv_feats = tv_model.backbone(tv_images.tensors)
    tv_proposals, _ = tv_model.rpn(tv_images, tv_feats)
    tv_raw, _ = tv_model.roi_heads(tv_feats, tv_proposals, tv_images.image_sizes)
    tv_probs = [d["masks"] for d in tv_raw]
    sizes = [tuple(im.shape[1:]) for im in images]
    tv_out = tv_model.transform.postprocess(tv_raw, tv_images.image_sizes, sizes)
    inputs = [{"image": im, "height": im.shape[1], "width": im.shape[2]} for im in images]
    d2_raw = d2_model.inference(inputs, do_postprocess=False)
    results = []
    for tv, probs, raw, size in zip(tv_out, tv_probs, d2_raw, sizes):
        d2_probs = raw.pred_masks
        inst = detector_postprocess(raw, *size)
        ours = {
            "boxes": inst.pred_boxes.tensor,
            "scores": inst.scores,
            "labels": ids[inst.pred_classes],
            "masks": inst.pred_masks.bool(),
        }
        theirs = {
            "boxes": tv["boxes"],
            "scores": tv["scores"],
            "labels": tv["labels"],
            "masks": tv["masks"][:, 0] > 0.5,
        }
        result = match_detections(ours, theirs)
        n = min(len(d2_probs), len(probs))
        result["mask_probs"] = compare(d2_probs[:n], probs[:n])
        results.append(result)
    return results


def smooth_masks(n, size=28, seed=0):
    """``n`` smooth mask probability maps (elliptic blobs of random centre, radii and
    sharpness) of ``size`` x ``size``, like a trained head's."""
    generator = torch.Generator().manual_seed(seed)
    grid = (torch.arange(size, dtype=torch.float32) + 0.5) / size
    y, x = grid[:, None], grid[None, :]
    maps = []
    for _ in range(n):
        cy, cx, ry, rx = (torch.rand(4, generator=generator) * 0.3 + 0.35).tolist()
        ry, rx = ry * 0.8, rx * 0.8
        sharp = float(torch.rand(1, generator=generator)) * 10 + 5
        d = ((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2
        maps.append(torch.sigmoid(sharp * (1 - d)))
    return torch.stack(maps)[:, None]


def paste_difference(boxes, height, width, seed=0):
    """Mask IoUs (min, mean) when the same smooth 28x28 masks (:func:`smooth_masks`) are pasted
    into a ``height`` x ``width`` image at ``boxes`` by torchvision's ``paste_masks_in_image``
    (integer box, 1-pixel border, ``F.interpolate``) and Detectron2's (``grid_sample`` at the
    float box), both thresholded at 0.5."""
    from torchvision.models.detection.roi_heads import paste_masks_in_image as tv_paste

    from detectron2.layers.mask_ops import paste_masks_in_image as d2_paste

    masks = smooth_masks(len(boxes), seed=seed)
    ours = d2_paste(masks[:, 0], boxes, (height, width), threshold=0.5)
    theirs = tv_paste(masks, boxes, (height, width))[:, 0] > 0.5
    inter = (ours & theirs).flatten(1).sum(1).float()
    union = (ours | theirs).flatten(1).sum(1).float().clamp(min=1)
    iou = inter / union
    return float(iou.min()), float(iou.mean())
