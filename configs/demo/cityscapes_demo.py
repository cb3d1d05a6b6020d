# `make demo`: configs/cityscapes_ft.py on the synthetic Cityscapes-layout data that the demo
# writes, shrunk to run on a laptop CPU. Only the data root, sizes (backbone depth, widths,
# image and batch sizes with the LR scaled to the batch, RoI and proposal counts), iteration
# counts and the seed change.
from detectron2.config import LazyCall as L
from detectron2.layers import ShapeSpec
from detectron2.modeling.backbone import ResNet

from ..cityscapes_ft import dataloader, lr_multiplier, model, optimizer, train

# Data and the stand-in "COCO" checkpoint written by scripts/demo.py.
dataloader.register.root = "output/demo/datasets"
train.init_checkpoint = "output/demo/coco_standin/model_final.pkl"
train.output_dir = "output/demo/finetune"

# ResNet-18 with a 64-channel FPN and slim heads: ~0.5 s per CPU iteration instead of ~8 s.
model.backbone.bottom_up.stages = L(ResNet.make_default_stages)(depth=18, norm="FrozenBN")
model.backbone.out_channels = 64
model.proposal_generator.head.in_channels = 64
model.roi_heads.box_head.input_shape = ShapeSpec(channels=64, height=7, width=7)
model.roi_heads.box_head.fc_dims = [256, 256]
model.roi_heads.box_predictor.input_shape = ShapeSpec(channels=256)
model.roi_heads.mask_head.input_shape = ShapeSpec(channels=64, width=14, height=14)
model.roi_heads.mask_head.conv_dims = [64, 64, 64]
# Images of 1/16 of Cityscapes' area hold fewer objects: 1/4 of the sampled RoIs (512), and
# fewer proposals per image.
model.roi_heads.batch_size_per_image = 128
model.proposal_generator.post_nms_topk = (300, 100)

# The synthetic images are 512x256: a quarter of Cityscapes' 2048x1024 in each direction.
dataloader.train.mapper.augmentations[0].short_edge_length = (224, 240, 256, 272, 288)
dataloader.train.mapper.augmentations[0].max_size = 576
dataloader.test.mapper.augmentations[0].short_edge_length = 256
dataloader.test.mapper.augmentations[0].max_size = 512
dataloader.train.total_batch_size = 2

# The tutorial's lr of 0.01 for batch 8, scaled linearly to batch 2.
optimizer.lr = 0.01 * 2 / 8
# 200 iterations (6.7 passes over the demo's 60 images) instead of the recipe's 8 epochs: the
# step near the end, as in the recipe, and a warmup of 50 (the recipe's 500 would outlast it).
train.epochs = None
train.max_iter = 200
lr_multiplier.steps = [160]
lr_multiplier.warmup_iters = 50
train.eval_period = 200
train.checkpointer.period = 100
train.log_period = 10
train.seed = 0  # the same numbers on every run
