"""The Cityscapes config's evaluator in an --eval-only run: official and COCO-style metrics,
named apart."""

import math
import os

import numpy as np
import pycocotools.mask as mask_util
import torch
from torch import nn

from detectron2.data import DatasetCatalog
from detectron2.evaluation.testing import flatten_results_dict
from detectron2.structures import Boxes, Instances

from d2_finetune.data.cityscapes import CITYSCAPES_THING_CLASSES
from d2_finetune.engine import FinetuneTrainer, evaluate, load_for_inference
from d2_finetune.evaluation import CityscapesCOCOEvaluator
from d2_finetune.evaluation.cityscapes import RESULTS_FILE

COCO_METRICS = ["AP", "AP50", "AP75", "APs", "APm", "APl"]


def expected_names():
    cityscapes = (
        ["AP", "AP50"]
        + [f"AP-{c}" for c in CITYSCAPES_THING_CLASSES]
        + [f"AP50-{c}" for c in CITYSCAPES_THING_CLASSES]
    )
    coco = COCO_METRICS + [f"AP-{c}" for c in CITYSCAPES_THING_CLASSES]
    return (
        {f"cityscapes/{k}" for k in cityscapes}
        | {f"coco/bbox/{k}" for k in coco}
        | {f"coco/segm/{k}" for k in coco}
    )


class GroundTruthModel(nn.Module):
    """Predicts the ground truth instances of each image (``perfect``) or nothing."""

    def __init__(self, dataset_name, perfect=True):
        super().__init__()
        self.records = {r["file_name"]: r for r in DatasetCatalog.get(dataset_name)}
        self.perfect = perfect

    def forward(self, batched_inputs):
        rng = np.random.default_rng(0)
        outputs = []
        for inp in batched_inputs:
            record = self.records[inp["file_name"]]
            annotations = [a for a in record["annotations"] if not a["iscrowd"]]
            if not self.perfect:
                annotations = []
            height, width = record["height"], record["width"]
            masks = [mask_util.decode(a["segmentation"]).astype(bool) for a in annotations]
            instances = Instances((height, width))
            instances.pred_masks = torch.from_numpy(
                np.stack(masks) if masks else np.zeros((0, height, width), dtype=bool)
            )
            instances.pred_boxes = Boxes(
                torch.tensor([a["bbox"] for a in annotations], dtype=torch.float32).reshape(-1, 4)
            )
            instances.pred_classes = torch.tensor(
                [a["category_id"] for a in annotations], dtype=torch.int64
            )
            instances.scores = torch.tensor(
                rng.uniform(0.5, 1, len(annotations)), dtype=torch.float32
            )
            outputs.append({"instances": instances})
        return outputs


def test_config_uses_the_combined_evaluator(tiny_cfg):
    cfg = tiny_cfg()
    evaluator = FinetuneTrainer.build_evaluator(cfg)
    assert isinstance(evaluator, CityscapesCOCOEvaluator)
    assert cfg.dataloader.evaluator.output_dir == os.path.join(cfg.train.output_dir, "inference")


def test_eval_only_scores_ground_truth_100_and_nothing_0(tiny_cfg):
    cfg = tiny_cfg()
    dataset = cfg.dataloader.test.dataset.names

    results = flatten_results_dict(FinetuneTrainer.test(cfg, GroundTruthModel(dataset)))
    assert set(results) == expected_names()
    for name in [
        "cityscapes/AP",
        "cityscapes/AP50",
        "coco/bbox/AP",
        "coco/bbox/AP50",
        "coco/segm/AP",
        "coco/segm/AP75",
    ]:
        assert results[name] == 100, name
    with open(os.path.join(cfg.train.output_dir, "inference", RESULTS_FILE)) as f:
        assert '"AP": 100.0' in f.read()

    results = flatten_results_dict(
        FinetuneTrainer.test(cfg, GroundTruthModel(dataset, perfect=False))
    )
    assert results["cityscapes/AP"] == results["cityscapes/AP50"] == 0
    # detectron2's COCOEvaluator reports NaN when the model predicts nothing.
    assert math.isnan(results["coco/bbox/AP"]) and math.isnan(results["coco/segm/AP"])


def test_eval_only_of_a_real_model_gives_percentages(tiny_cfg):
    cfg = tiny_cfg()
    results = flatten_results_dict(evaluate(cfg, load_for_inference(cfg)))
    assert set(results) == expected_names()
    values = [v for v in results.values() if not math.isnan(v)]
    assert values and all(0 <= v <= 100 for v in values)
    assert not math.isnan(results["cityscapes/AP"])
