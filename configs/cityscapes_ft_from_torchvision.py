# The Cityscapes recipe (configs/cityscapes_ft.py) started from torchvision's COCO Mask R-CNN
# (maskrcnn_resnet50_fpn, v1), converted by scripts/convert_checkpoint.py. Each line below
# makes the model compute what torchvision's did; docs/checkpoints.md has the details.
from d2_finetune.modeling import RoundedAnchorGenerator

from .cityscapes_ft import dataloader, lr_multiplier, model, optimizer, train

# torchvision reads RGB images scaled to 0-1 and normalised by ImageNet's mean and std;
# on Detectron2's 0-255 scale that is mean*255 and std*255, in RGB order.
dataloader.train.mapper.image_format = "RGB"  # the test mapper follows the train one
model.input_format = "RGB"
model.pixel_mean = [123.675, 116.28, 103.53]
model.pixel_std = [58.395, 57.12, 57.375]
# torchvision's ResNet bottleneck downsamples in its 3x3 conv, MSRA's in the first 1x1.
model.backbone.bottom_up.stages.stride_in_1x1 = False
# torchvision's MultiScaleRoIAlign is the unaligned RoIAlign (no half-pixel shift) with
# 2x2 samples per bin; Detectron2's default is ROIAlignV2 with adaptive sampling.
model.roi_heads.box_pooler.pooler_type = "ROIAlign"
model.roi_heads.box_pooler.sampling_ratio = 2
model.roi_heads.mask_pooler.pooler_type = "ROIAlign"
model.roi_heads.mask_pooler.sampling_ratio = 2
# torchvision rounds its cell anchors to whole pixels; its RPN's deltas are relative to them.
model.proposal_generator.anchor_generator._target_ = RoundedAnchorGenerator

# A converted torchvision checkpoint (scripts/convert_checkpoint.py SRC.pth DST.pkl).
train.init_checkpoint = "checkpoints/maskrcnn_resnet50_fpn_coco_d2.pkl"
