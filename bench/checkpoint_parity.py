#!/usr/bin/env python
"""How closely a converted checkpoint reproduces its source: per source, the largest difference
per module between the source toolbox's own Mask R-CNN and the Detectron2 model of the config
the conversion names, on the same images.

Sources: torchvision's ``maskrcnn_resnet50_fpn`` (v1); MMDetection's Mask R-CNN R50-FPN,
pytorch and caffe style, built from its own config files and run by its own code (only when
mmengine, mmdet 3.x and mmcv / mmcv-lite are importable; otherwise the line says why). Both
with seeded random weights (``d2_finetune.checkpoint.convert.parity.randomize``; no COCO
weights offline), converted by ``d2_finetune.checkpoint.convert.convert``. Stages from the
normalised input batch through
the FPN levels, RPN, anchors, proposals, RoI features, box and mask heads (on the same RoIs)
to the final detections; then what the model does not cover: the resize of the test pipeline
(output size and pixels, torchvision vs Detectron2's ResizeShortestEdge) and mask pasting.

    python bench/checkpoint_parity.py [--height 256 --width 320 --images 2 --detections 20]
"""

import argparse
import os

import torch
from tabulate import tabulate

from detectron2.config import instantiate

from d2_finetune.checkpoint.convert import convert
from d2_finetune.checkpoint.convert.common import coco_ids_and_names
from d2_finetune.checkpoint.convert.parity import (
    paste_difference,
    random_torchvision_maskrcnn,
    synthetic_images,
    torchvision_detections,
    torchvision_parity,
)
from d2_finetune.checkpoint.convert.torchvision import NA_IDS
from d2_finetune.config import load_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def d2_model(info, detections):
    cfg = load_config(
        os.path.join(REPO, info["config"]),
        [
            "model.roi_heads.num_classes=80",
            f"model.roi_heads.box_predictor.test_topk_per_image={detections}",
        ],
    )
    return instantiate(cfg.model).eval()


def stage_table(result):
    rows = []
    for stage, value in result.items():
        if stage == "proposal_counts":
            continue
        diff, ref = value
        rows.append((stage, f"{diff:.3g}", f"{ref:.4g}", f"{diff / ref:.2g}" if ref else "-"))
    return tabulate(
        rows, headers=["module", "max |difference|", "max |value|", "relative"], tablefmt="pipe"
    )


def detection_table(results):
    rows = []
    for i, r in enumerate(results):
        rows.append(
            (
                i,
                f"{r['count'][0]} / {r['count'][1]}",
                r["labels_equal"],
                f"{r['boxes'][0]:.3g}",
                f"{r['scores'][0]:.3g}",
                f"{r['mask_probs'][0]:.3g}" if "mask_probs" in r else "-",
                f"{r['mask_iou_min']:.4f}",
            )
        )
    return tabulate(
        rows,
        headers=[
            "image",
            "detections (d2 / source)",
            "same classes",
            "max box diff (px)",
            "max score diff",
            "max 28x28 mask prob diff",
            "min pasted-mask IoU",
        ],
        tablefmt="pipe",
    )


def run_torchvision(images, detections):
    model = random_torchvision_maskrcnn(images, seed=0, box_detections_per_img=detections)
    state, info = convert(model.state_dict())
    converted = d2_model(info, detections)
    converted.load_state_dict(state, strict=False)
    print(f"\n## {info['format']} -> {info['config']}\n")
    print(stage_table(torchvision_parity(model, converted, images)))
    with torch.no_grad():  # the N/A rows at a trained model's (strongly negative) logits
        model.roi_heads.box_predictor.cls_score.bias[list(NA_IDS)] = -30.0
    print("\nDetections (N/A classifier rows set to logit -30, as a trained model's):\n")
    print(detection_table(torchvision_detections(model, converted, images)))
    height, width = images[0].shape[1:]
    boxes = torch.tensor(
        [[10.0, 20, 60, 90], [100, 30, 300, 250], [5, 5, 25, 17], [200.3, 100.7, 241.2, 163.9]]
    )
    iou_min, iou_mean = paste_difference(boxes, height, width)
    print(
        f"\nPasting the same smooth 28x28 masks (torchvision vs Detectron2): IoU min "
        f"{iou_min:.3f}, mean {iou_mean:.3f}"
    )


def run_mmdet(images, detections):
    try:
        from d2_finetune.checkpoint.convert.mmdet_parity import (
            build_mmdet_maskrcnn,
            import_mmdet,
            mmdet_checkpoint,
            mmdet_detections,
            mmdet_parity,
        )

        mmdet = import_mmdet()
    except ImportError as e:
        print(
            f"\n## MMDetection: skipped, not importable ({e}); pip install mmengine==0.10.7 "
            "mmdet==3.3.0 mmcv-lite==2.1.0, or mmdet==2.28.2 mmcv==1.7.2"
        )
        return
    classes = [n for _, n in coco_ids_and_names()]
    for style in ("pytorch", "caffe"):
        model, text = build_mmdet_maskrcnn(
            [im.flip(0) for im in images], seed=0, style=style, max_per_img=detections
        )
        state, info = convert(mmdet_checkpoint(model, text, classes))
        converted = d2_model(info, detections)
        converted.load_state_dict(state, strict=False)
        print(f"\n## {info['format']} (run by mmdet {mmdet.__version__}) -> {info['config']}\n")
        print(stage_table(mmdet_parity(model, converted, images)))
        print("\nDetections:\n")
        print(detection_table(mmdet_detections(model, converted, images)))


def run_resize(sizes=((1024, 2048), (480, 640), (427, 640), (640, 612), (1600, 2400))):
    """torchvision resizes float 0-1 images with F.interpolate (bilinear, no antialiasing) to
    floor(side * scale); Detectron2's ResizeShortestEdge resizes uint8 images with PIL
    (bilinear, antialiased when shrinking) to int(side * scale + 0.5), as mmcv's
    rescale_size does (MMDetection then resizes with cv2, bilinear, no antialiasing)."""
    try:
        from mmcv import rescale_size
    except ImportError:
        rescale_size = None
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    import detectron2.data.transforms as T

    tv = GeneralizedRCNNTransform(800, 1333, [0.0] * 3, [1.0] * 3)
    d2 = T.ResizeShortestEdge(800, 1333)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for h, w in sizes:
        image = torch.randint(0, 256, (3, h, w), generator=generator, dtype=torch.uint8)
        image = torch.nn.functional.avg_pool2d(image[None].float(), 5, 1, 2)[0].round()
        tv_out = tv.resize(image / 255, None)[0] * 255
        hwc = image.permute(1, 2, 0).to(torch.uint8).numpy()
        d2_out = torch.from_numpy(d2.get_transform(hwc).apply_image(hwc).copy())
        d2_out = d2_out.permute(2, 0, 1).float()
        same = tuple(tv_out.shape[1:]) == tuple(d2_out.shape[1:])
        diff = (tv_out - d2_out).abs().mean().item() if same else float("nan")
        mm = "x".join(map(str, rescale_size((w, h), (1333, 800))[::-1])) if rescale_size else "-"
        rows.append(
            (
                f"{h}x{w}",
                "x".join(map(str, tv_out.shape[1:])),
                "x".join(map(str, d2_out.shape[1:])),
                mm,
                f"{diff:.2f}" if same else "-",
            )
        )
    print("\n## Test-time resize to 800 / 1333 (not part of the model)\n")
    print(
        tabulate(
            rows,
            headers=[
                "image",
                "torchvision size",
                "Detectron2 size",
                "mmcv size",
                "mean |pixel difference| torchvision vs Detectron2 (0-255)",
            ],
            tablefmt="pipe",
        )
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=320)
    parser.add_argument("--images", type=int, default=2)
    parser.add_argument(
        "--detections",
        type=int,
        default=20,
        help="detections per image on both sides (the mask head costs ~1 GFLOP "
        "per detection on a CPU)",
    )
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    images = synthetic_images(args.images, args.height, args.width, seed=0)
    print(
        f"{args.images} synthetic images of {args.height}x{args.width}, seeded random "
        "weights; differences in the units of each module's output"
    )
    run_torchvision(images, args.detections)
    run_mmdet(images, args.detections)
    run_resize()


if __name__ == "__main__":
    main()
