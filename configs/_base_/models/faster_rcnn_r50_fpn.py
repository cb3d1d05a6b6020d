from detectron2 import model_zoo

# Detectron2's Faster R-CNN R50-FPN: its Mask R-CNN without the mask branch, as detectron2's own
# COCO-Detection/faster_rcnn_R_50_FPN configs build it; the architecture of its COCO-Detection
# model-zoo checkpoints. The box head reads its class count from roi_heads.num_classes.
model = model_zoo.get_config("common/models/mask_rcnn_fpn.py").model
model.roi_heads.update(mask_in_features=None, mask_pooler=None, mask_head=None)

# Keep the stem and res2 frozen, as the COCO model was trained (MMDetection: frozen_stages=1).
model.backbone.bottom_up.freeze_at = 2
