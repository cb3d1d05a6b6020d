from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import COCOEvaluator

from d2_finetune.data import register_coco_dataset
from d2_finetune.data.mapper import DatasetMapper
from d2_finetune.evaluation import PrefixedEvaluator

dataloader = OmegaConf.create()

# Run by scripts/train_net.py in every process: a COCO instances json and the folder its
# images' file_name are relative to, per split. Class names and count come from the json.
dataloader.register = [
    L(register_coco_dataset)(
        name="coco_custom_train",
        json_file="datasets/coco_custom/annotations/train.json",
        image_root="datasets/coco_custom/train",
    ),
    L(register_coco_dataset)(
        name="coco_custom_val",
        json_file="datasets/coco_custom/annotations/val.json",
        image_root="datasets/coco_custom/val",
    ),
]

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_custom_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            # Detectron2's COCO recipe: short side 640-800 in steps of 32, long side <= 1333.
            L(T.ResizeShortestEdge)(
                short_edge_length=(640, 672, 704, 736, 768, 800),
                sample_style="choice",
                max_size=1333,
            ),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        use_instance_mask=True,
        # Masks as crops of their boxes, from polygons or RLE (COCO jsons may hold both), with
        # the pixels of detectron2's "bitmask" format.
        instance_mask_format="cropped",
    ),
    total_batch_size=16,
    num_workers="auto",  # from the CPU cores per GPU process (see default_num_workers)
    pin_memory=True,  # page-locked batches, copied to the GPU without blocking (not on CPUs)
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="coco_custom_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
    ),
    batch_size=4,  # images per forward pass in evaluation: the same predictions as one at a time
    num_workers="auto",
)

# COCO box and mask AP against the json itself, category ids mapped back: coco/bbox/AP, ...
dataloader.evaluator = L(PrefixedEvaluator)(
    prefix="coco",
    evaluator=L(COCOEvaluator)(
        dataset_name="${...test.dataset.names}",
        tasks=("bbox", "segm"),
        output_dir="${train.output_dir}/inference",
    ),
)
# COCO's mask AP: the default train.best_metric.
dataloader.best_metric = "coco/segm/AP"
