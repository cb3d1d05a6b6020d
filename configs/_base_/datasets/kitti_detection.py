from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)

from d2_finetune.data import register_kitti
from d2_finetune.data.mapper import DatasetMapper
from d2_finetune.evaluation import KittiEvaluator, PrefixedEvaluator, ScopedCOCOEvaluator

dataloader = OmegaConf.create()

# Run by scripts/train_net.py in every process. root=None: $DETECTRON2_DATASETS or ./datasets,
# holding kitti/training/{image_2,label_2}. KITTI has no validation split: 20% of the training
# frames, drawn with the seed, become kitti_ft_val (or give split_dir with train.txt / val.txt).
dataloader.register = L(register_kitti)(root=None, val_fraction=0.2, seed=0, split_dir=None)

dataloader.train = L(build_detection_train_loader)(
    dataset=L(get_detection_dataset_dicts)(names="kitti_ft_train"),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            # KITTI's images are about 1242x375 with many small objects (the hard level counts
            # boxes from 25 pixels high): train at 1.3-1.9x, around the test scale.
            L(T.ResizeShortestEdge)(
                short_edge_length=(480, 528, 576, 624, 672, 720),
                sample_style="choice",
                max_size=2400,
            ),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        use_instance_mask=False,  # KITTI 2D detection has boxes only
    ),
    total_batch_size=8,
    num_workers="auto",  # from the CPU cores per GPU process (see default_num_workers)
    pin_memory=True,  # page-locked batches, copied to the GPU without blocking (not on CPUs)
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="kitti_ft_val", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=600, max_size=2400)],
        image_format="${...train.mapper.image_format}",
    ),
    batch_size=4,  # images per forward pass in evaluation: the same predictions as one at a time
    num_workers="auto",
)

# KITTI's AP|R40 for Car / Pedestrian / Cyclist at easy, moderate and hard as
# kitti/bbox/AP_moderate, ... (detections also written in KITTI's result format), and
# COCO-style box AP over all seven classes as coco/bbox/AP, ...
dataloader.evaluator = [
    L(PrefixedEvaluator)(
        prefix="kitti",
        evaluator=L(KittiEvaluator)(
            dataset_name="${....test.dataset.names}",
            output_dir="${train.output_dir}/kitti_results",
        ),
    ),
    L(PrefixedEvaluator)(
        prefix="coco",
        evaluator=L(ScopedCOCOEvaluator)(
            dataset_name="${....test.dataset.names}",
            tasks=("bbox",),
            output_dir="${train.output_dir}/inference",
        ),
    ),
]
# KITTI ranks by the moderate level's AP: the default train.best_metric.
dataloader.best_metric = "kitti/bbox/AP_moderate"
