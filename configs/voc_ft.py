# Pascal VOC 07+12 detection, fine-tuned from COCO Faster R-CNN (the tutorial's recipe on VOC).
from ._base_.datasets.voc_detection import dataloader
from ._base_.default_runtime import lr_multiplier, optimizer, train
from ._base_.models.faster_rcnn_r50_fpn import model

# The 20 VOC classes; their COCO counterparts (aeroplane = airplane, ...) carry over by name.
model.roi_heads.num_classes = 20

# Start from Detectron2's COCO Faster R-CNN R50-FPN 3x, the same network.
train.init_checkpoint = (
    "detectron2://COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl"
)

# MMDetection's VOC 07+12 recipe: batch 16, lr 0.01 (momentum 0.9, weight decay 1e-4: as in the
# base), 4 epochs of RepeatDataset(times=3) = 12 passes over the 16,551 trainval images
# (12,413 iterations), lr x0.1 after epoch 3 (9 passes).
dataloader.train.total_batch_size = 16
optimizer.lr = 0.01
train.epochs = 4
train.repeat = 3
train.step_epochs = [3]
lr_multiplier.warmup_iters = 500

# Evaluate and checkpoint once per epoch (3 passes), keeping the best VOC AP50 (the base's).
train.eval_period = "1 epoch"
train.checkpointer.period = "1 epoch"
