# The Cityscapes recipe (configs/cityscapes_ft.py) started from an MMDetection COCO Mask R-CNN
# R50-FPN of pytorch style (its model zoo's mask_rcnn_r50_fpn_*), converted by
# scripts/convert_checkpoint.py. Each line below makes the model compute what MMDetection's
# did; docs/checkpoints.md has the details. (Caffe-style MMDetection checkpoints,
# mask_rcnn_r50_caffe_fpn_*, need the plain recipe instead: their backbone is MSRA's.)
from .cityscapes_ft import dataloader, lr_multiplier, model, optimizer, train

# MMDetection's pytorch-style models read RGB (bgr_to_rgb=True) normalised by ImageNet's
# mean and std on the 0-255 scale.
dataloader.train.mapper.image_format = "RGB"  # the test mapper follows the train one
model.input_format = "RGB"
model.pixel_mean = [123.675, 116.28, 103.53]
model.pixel_std = [58.395, 57.12, 57.375]
# A pytorch-style ResNet bottleneck downsamples in its 3x3 conv, MSRA's in the first 1x1.
model.backbone.bottom_up.stages.stride_in_1x1 = False
# Everything else already matches MMDetection >= 2.0: aligned RoIAlign with adaptive sampling,
# unrounded anchors centred on the grid, box deltas scaled by (10, 10, 5, 5).

# A converted MMDetection checkpoint (scripts/convert_checkpoint.py SRC.pth DST.pkl).
train.init_checkpoint = "checkpoints/mask_rcnn_r50_fpn_coco_d2.pkl"
