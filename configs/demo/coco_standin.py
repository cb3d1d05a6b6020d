# `make demo`, step 1: a stand-in for the COCO-pretrained checkpoint, which cannot be downloaded
# offline. The demo's architecture with COCO's 80-class head, trained briefly on a synthetic
# COCO-format dataset whose categories carry COCO's names and ids.
from detectron2.config import LazyCall as L
from detectron2.evaluation import COCOEvaluator

from d2_finetune.data import register_coco_dataset

from .cityscapes_demo import dataloader, lr_multiplier, model, optimizer, train

# COCO's 80 classes, so the checkpoint has the COCO model's head shapes.
model.roi_heads.num_classes = 80

dataloader.register = [
    L(register_coco_dataset)(
        name="demo_coco_standin_train",
        json_file="output/demo/datasets/coco_standin/train/annotations.json",
        image_root="output/demo/datasets/coco_standin/train/images",
    ),
    L(register_coco_dataset)(
        name="demo_coco_standin_val",
        json_file="output/demo/datasets/coco_standin/val/annotations.json",
        image_root="output/demo/datasets/coco_standin/val/images",
    ),
]
dataloader.train.dataset.names = "demo_coco_standin_train"
dataloader.test.dataset.names = "demo_coco_standin_val"
dataloader.evaluator = L(COCOEvaluator)(
    dataset_name="${..test.dataset.names}", output_dir="${train.output_dir}"
)

# Trained from scratch: a random init whose FrozenBN statistics were calibrated (scripts/demo.py).
train.init_checkpoint = "output/demo/coco_standin/init.pth"
train.output_dir = "output/demo/coco_standin"
train.max_iter = 300
lr_multiplier.steps = [250]
train.eval_period = 300
train.best_metric.name = "segm/AP"  # COCOEvaluator's mask AP
