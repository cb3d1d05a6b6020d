from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)

from d2_finetune.data import register_cityscapes
from d2_finetune.data.mapper import DatasetMapper
from d2_finetune.evaluation import CityscapesCOCOEvaluator

dataloader = OmegaConf.create()

# Run by scripts/train_net.py in every process. root=None: $DETECTRON2_DATASETS or ./datasets,
# holding cityscapes/{leftImg8bit,gtFine}/<split>/<city>/.
dataloader.register = L(register_cityscapes)(root=None)

dataloader.train = L(build_detection_train_loader)(
    # filter_empty: drop training images without a non-crowd instance (False keeps them).
    dataset=L(get_detection_dataset_dicts)(names="cityscapes_ft_instance_train", filter_empty=True),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            # MMDetection's Cityscapes recipe: short side 800-1024 in steps of 32, long side <= 2048.
            L(T.ResizeShortestEdge)(
                short_edge_length=(800, 832, 864, 896, 928, 960, 992, 1024),
                sample_style="choice",
                max_size=2048,
            ),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        use_instance_mask=True,
        # Masks are exact rasterisations of the gtFine polygons, kept as crops of their boxes
        # (the pixels of detectron2's "bitmask" format, without full-image bitmaps).
        instance_mask_format="cropped",
    ),
    total_batch_size=8,
    num_workers="auto",  # from the CPU cores per GPU process (see default_num_workers)
    pin_memory=True,  # page-locked batches, copied to the GPU without blocking (not on CPUs)
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="cityscapes_ft_instance_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=1024, max_size=2048)],
        image_format="${...train.mapper.image_format}",
    ),
    batch_size=4,  # images per forward pass in evaluation: the same predictions as one at a time
    num_workers="auto",
)

# The official Cityscapes AP (cityscapes/AP, ...) and COCO-style box and mask AP (coco/bbox/AP,
# coco/segm/AP, ...); evaluator="official" scores through cityscapesscripts' own (slow) code.
dataloader.evaluator = L(CityscapesCOCOEvaluator)(
    dataset_name="${..test.dataset.names}",
    output_dir="${...train.output_dir}/inference",
    evaluator="fast",
)
# The benchmark's metric: the default train.best_metric.
dataloader.best_metric = "cityscapes/AP"
