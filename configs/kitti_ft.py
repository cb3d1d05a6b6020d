# KITTI 2D object detection, fine-tuned from COCO Faster R-CNN.
from ._base_.datasets.kitti_detection import dataloader
from ._base_.default_runtime import lr_multiplier, optimizer, train
from ._base_.models.faster_rcnn_r50_fpn import model

# Car, Van, Truck, Pedestrian, Person_sitting, Cyclist, Tram (Misc and DontCare are ignored).
model.roi_heads.num_classes = 7

# Start from Detectron2's COCO Faster R-CNN R50-FPN 3x, the same network.
train.init_checkpoint = (
    "detectron2://COCO-Detection/faster_rcnn_R_50_FPN_3x/137849458/model_final_280758.pkl"
)

# The tutorial's batch and lr (8 images, 0.01) on the 1x schedule: 12 passes, lr x0.1 after 8
# and 11. The training split's size follows dataloader.register.val_fraction.
dataloader.train.total_batch_size = 8
optimizer.lr = 0.01
train.epochs = 12
train.step_epochs = [8, 11]
lr_multiplier.warmup_iters = 500

# Evaluate and checkpoint every 2 epochs, keeping the best moderate AP (the base's).
train.eval_period = "2 epochs"
train.checkpointer.period = "2 epochs"
