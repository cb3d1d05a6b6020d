# Your own COCO-format dataset, fine-tuned from COCO Mask R-CNN. Copy this file and edit the
# three places marked EDIT; the class names and their count come from the json's categories.
from ._base_.datasets.coco_instance import dataloader
from ._base_.default_runtime import lr_multiplier, optimizer, train
from ._base_.models.mask_rcnn_r50_fpn import model

# EDIT 1: the training split: its COCO json and the folder its images' file_name are relative to.
dataloader.register[0].json_file = "datasets/my_dataset/annotations/train.json"
dataloader.register[0].image_root = "datasets/my_dataset/train"
# EDIT 2: the validation split, the same way.
dataloader.register[1].json_file = "datasets/my_dataset/annotations/val.json"
dataloader.register[1].image_root = "datasets/my_dataset/val"
# EDIT 3: a name for the run: checkpoints, logs and results go to this folder.
train.output_dir = "./output/my_dataset"

# None: the number of categories in the training json, filled in when the model is built.
model.roi_heads.num_classes = None

# Start from Detectron2's COCO Mask R-CNN R50-FPN 3x; class layers carry over by class name.
train.init_checkpoint = (
    "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
)

# The tutorial's batch and lr (8 images, 0.01); the LR scales linearly if the batch changes.
dataloader.train.total_batch_size = 8
optimizer.lr = 0.01
optimizer.reference_batch = 8

# The 1x schedule in epochs, since the dataset's size is not known here: 12 passes over the
# training images, lr x0.1 after 8 and 11.
train.epochs = 12
train.step_epochs = [8, 11]
lr_multiplier.warmup_iters = 500

# Evaluate and checkpoint once per epoch, keeping the best COCO mask AP (the base's).
train.eval_period = "1 epoch"
train.checkpointer.period = "1 epoch"
