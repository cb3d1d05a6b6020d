# Pascal VOC 07+12 detection, fine-tuned from COCO Faster R-CNN (the tutorial's recipe on VOC).
from ._base_.datasets.voc_detection import dataloader
from ._base_.default_runtime import lr_multiplier, optimizer, train
from ._base_.models.mask_rcnn_r50_fpn import model

# VOC has boxes only: no mask head, which makes the model a Faster R-CNN.
model.roi_heads.mask_in_features = None
model.roi_heads.mask_pooler = None
model.roi_heads.mask_head = None
# The 20 VOC classes; their COCO counterparts (aeroplane = airplane, ...) carry over by name.
model.roi_heads.num_classes = 20

# Start from Detectron2's COCO Faster R-CNN R50-FPN 3x, the same network without a mask head.
train.init_checkpoint = (
    "detectron2://COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl"
)

# MMDetection's VOC 07+12 recipe: batch 16, lr 0.01 (momentum 0.9, weight decay 1e-4: as in the
# base), 4 epochs of RepeatDataset(times=3) = 12 passes over the 16,551 trainval images:
# 12 * 16551 / 16 = 12,413 iterations, lr x0.1 after epoch 3 (9 passes).
dataloader.train.total_batch_size = 16
optimizer.lr = 0.01
train.max_iter = 12 * 16551 // 16
lr_multiplier.steps = [9 * 16551 // 16]
lr_multiplier.warmup_iters = 500

# Evaluate and checkpoint once per epoch (3 passes), keeping the best VOC AP50.
train.eval_period = 3 * 16551 // 16
train.checkpointer.period = 3 * 16551 // 16
train.best_metric.name = "voc/bbox/AP50"
