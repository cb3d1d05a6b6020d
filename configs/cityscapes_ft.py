# MMDetection's "Finetuning Models" tutorial, the Detectron2 way: COCO Mask R-CNN -> Cityscapes.
from ._base_.datasets.cityscapes_instance import dataloader
from ._base_.default_runtime import lr_multiplier, optimizer, train
from ._base_.models.mask_rcnn_r50_fpn import model

# Cityscapes has 8 instance classes; the box and mask heads read it via "${..num_classes}".
model.roi_heads.num_classes = 8

# Start from Detectron2's COCO Mask R-CNN R50-FPN 3x; only the class-dependent layers differ.
train.init_checkpoint = (
    "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
)

# The tutorial's lr is set for a batch of 8 (momentum 0.9, weight decay 1e-4: as in the base).
dataloader.train.total_batch_size = 8
optimizer.lr = 0.01

# 8 epochs of RepeatDataset(times=8), as in the tutorial: 64 passes over Cityscapes' 2,975
# train images at batch 8 = 23,800 iterations (counted from the data when training starts).
train.epochs = 8
train.repeat = 8
# The tutorial steps after epoch 7 of 8 ("[7] yields higher performance than [6]"): 20,825.
train.step_epochs = [7]
# Linear warmup over 500 iterations from 0.001 x lr.
lr_multiplier.warmup_iters = 500

# Evaluate and checkpoint once per tutorial epoch (8 passes, 2,975 iterations).
train.eval_period = "1 epoch"
train.checkpointer.period = "1 epoch"
