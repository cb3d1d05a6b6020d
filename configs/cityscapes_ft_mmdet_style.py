# configs/cityscapes_ft.py written MMDetection-style: _base_ files plus nested dicts that
# deep-merge into them. It resolves to the same config.
_base_ = [
    "_base_/models/mask_rcnn_r50_fpn.py",
    "_base_/datasets/cityscapes_instance.py",
    "_base_/default_runtime.py",
]

# Cityscapes has 8 instance classes; the box and mask heads read it via "${..num_classes}".
model = dict(roi_heads=dict(num_classes=8))

train = dict(
    # Start from Detectron2's COCO Mask R-CNN R50-FPN 3x; only the class-dependent layers differ.
    init_checkpoint=(
        "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
    ),
    # 8 epochs of RepeatDataset(times=8) = 64 passes x 2,975 images / 8 per iteration.
    max_iter=64 * 2975 // 8,
    # Evaluate and checkpoint once per tutorial epoch (8 passes).
    eval_period=8 * 2975 // 8,
    checkpointer=dict(period=8 * 2975 // 8),
)

# The tutorial's lr is set for a batch of 8 (momentum 0.9, weight decay 1e-4: as in the base).
dataloader = dict(train=dict(total_batch_size=8))
optimizer = dict(lr=0.01)

# Step at epoch 7 of 8 (56 passes), linear warmup over 500 iterations from 0.001 x lr.
lr_multiplier = dict(steps=[56 * 2975 // 8], warmup_iters=500)
