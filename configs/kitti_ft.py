# KITTI 2D object detection, fine-tuned from COCO Faster R-CNN.
from ._base_.datasets.kitti_detection import dataloader
from ._base_.default_runtime import lr_multiplier, optimizer, train
from ._base_.models.mask_rcnn_r50_fpn import model

# KITTI 2D has boxes only: no mask head, which makes the model a Faster R-CNN.
model.roi_heads.mask_in_features = None
model.roi_heads.mask_pooler = None
model.roi_heads.mask_head = None
# Car, Van, Truck, Pedestrian, Person_sitting, Cyclist, Tram (Misc and DontCare are ignored).
model.roi_heads.num_classes = 7

# Start from Detectron2's COCO Faster R-CNN R50-FPN 3x, the same network without a mask head.
train.init_checkpoint = (
    "detectron2://COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl"
)

# The tutorial's batch and lr (8 images, 0.01) on the 1x schedule, in epochs because the
# training split's size follows val_fraction: 12 passes, lr x0.1 after 8 and 11.
dataloader.train.total_batch_size = 8
optimizer.lr = 0.01
train.epochs = 12
train.step_epochs = [8, 11]
lr_multiplier.warmup_iters = 500

# Evaluate and checkpoint every 2 epochs of the default split (5,985 of the 7,481 frames),
# keeping the best moderate AP, by which KITTI ranks.
train.eval_period = 2 * 5985 // 8
train.checkpointer.period = 2 * 5985 // 8
train.best_metric.name = "kitti/bbox/AP_moderate"
