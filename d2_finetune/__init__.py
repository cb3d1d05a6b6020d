"""d2_finetune: fine-tune COCO-pretrained Detectron2 detectors on new datasets."""

__version__ = "0.1.0"
