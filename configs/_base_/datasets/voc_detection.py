from omegaconf import OmegaConf

import detectron2.data.transforms as T
from detectron2.config import LazyCall as L
from detectron2.data import (
    build_detection_test_loader,
    build_detection_train_loader,
    get_detection_dataset_dicts,
)
from detectron2.evaluation import PascalVOCDetectionEvaluator

from d2_finetune.data import register_voc
from d2_finetune.data.mapper import DatasetMapper
from d2_finetune.evaluation import PrefixedEvaluator, ScopedCOCOEvaluator

dataloader = OmegaConf.create()

# Run by scripts/train_net.py in every process. root=None: $DETECTRON2_DATASETS or ./datasets,
# holding VOCdevkit/VOC2007 and VOCdevkit/VOC2012.
dataloader.register = L(register_voc)(root=None)

dataloader.train = L(build_detection_train_loader)(
    # The usual "07+12": VOC 2007 and 2012 trainval, 16,551 images; tested on VOC 2007 test.
    dataset=L(get_detection_dataset_dicts)(names=["voc_ft_2007_trainval", "voc_ft_2012_trainval"]),
    mapper=L(DatasetMapper)(
        is_train=True,
        augmentations=[
            # Detectron2's VOC recipe: short side 480-800 in steps of 32, long side <= 1333.
            L(T.ResizeShortestEdge)(
                short_edge_length=(480, 512, 544, 576, 608, 640, 672, 704, 736, 768, 800),
                sample_style="choice",
                max_size=1333,
            ),
            L(T.RandomFlip)(horizontal=True),
        ],
        image_format="BGR",
        use_instance_mask=False,  # VOC detection has boxes only
    ),
    total_batch_size=16,
    num_workers="auto",  # from the CPU cores per GPU process (see default_num_workers)
    pin_memory=True,  # page-locked batches, copied to the GPU without blocking (not on CPUs)
)

dataloader.test = L(build_detection_test_loader)(
    dataset=L(get_detection_dataset_dicts)(names="voc_ft_2007_test", filter_empty=False),
    mapper=L(DatasetMapper)(
        is_train=False,
        augmentations=[L(T.ResizeShortestEdge)(short_edge_length=800, max_size=1333)],
        image_format="${...train.mapper.image_format}",
    ),
    batch_size=4,  # images per forward pass in evaluation: the same predictions as one at a time
    num_workers="auto",
)

# VOC AP (detectron2's evaluator: 11-point AP for VOC 2007, difficult objects ignored) as
# voc/bbox/{AP50,AP75,AP}, and COCO-style box AP as coco/bbox/AP, ...
dataloader.evaluator = [
    L(PrefixedEvaluator)(
        prefix="voc",
        evaluator=L(PascalVOCDetectionEvaluator)(dataset_name="${....test.dataset.names}"),
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
# The benchmark's metric, VOC 2007's AP50: the default train.best_metric.
dataloader.best_metric = "voc/bbox/AP50"
