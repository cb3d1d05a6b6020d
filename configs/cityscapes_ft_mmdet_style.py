# configs/cityscapes_ft.py written MMDetection's way: a _base_ list, and nested dicts merged
# into what the bases define. Both files resolve to the same config.
_base_ = [
    "_base_/models/mask_rcnn_r50_fpn.py",
    "_base_/datasets/cityscapes_instance.py",
    "_base_/default_runtime.py",
]

model = dict(roi_heads=dict(num_classes=8))

train = dict(
    # Start from Detectron2's COCO Mask R-CNN R50-FPN 3x; only the class-dependent layers differ.
    init_checkpoint=(
        "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
    ),
    # 8 epochs of RepeatDataset(times=8), lr x0.1 after epoch 7.
    epochs=8,
    repeat=8,
    step_epochs=[7],
    # Evaluate and checkpoint once per tutorial epoch (8 passes).
    eval_period="1 epoch",
    checkpointer=dict(period="1 epoch"),
)

dataloader = dict(train=dict(total_batch_size=8))
optimizer = dict(lr=0.01)

lr_multiplier = dict(warmup_iters=500)
