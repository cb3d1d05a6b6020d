from detectron2 import model_zoo

# Detectron2's Mask R-CNN R50-FPN: the architecture of its COCO model-zoo checkpoints. Box and
# mask heads read their class count from roi_heads.num_classes ("${..num_classes}").
model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model

# Keep the stem and res2 frozen, as the COCO model was trained (MMDetection: frozen_stages=1).
model.backbone.bottom_up.freeze_at = 2
