import pytest

from detectron2.evaluation import DatasetEvaluator, DatasetEvaluators

from d2_finetune.evaluation import PrefixedEvaluator


class Counting(DatasetEvaluator):
    def __init__(self, result):
        self.result = result
        self.seen = None

    def reset(self):
        self.seen = []

    def process(self, inputs, outputs):
        self.seen.extend(inputs)

    def evaluate(self):
        return self.result(self.seen) if callable(self.result) else self.result


def test_two_evaluators_of_the_same_task_combine_under_their_prefixes():
    voc = Counting(lambda seen: {"bbox": {"AP50": float(len(seen))}})
    coco = Counting(lambda seen: {"bbox": {"AP": 2.0 * len(seen)}, "segm": {"AP": 1.0}})
    with pytest.raises(AssertionError, match="same key bbox"):
        both = DatasetEvaluators([Counting({"bbox": {}}), Counting({"bbox": {}})])
        both.reset()
        both.evaluate()
    both = DatasetEvaluators([PrefixedEvaluator(voc, "voc"), PrefixedEvaluator(coco, "coco")])
    both.reset()
    both.process([{"image_id": 1}, {"image_id": 2}], [{}, {}])
    assert both.evaluate() == {
        "voc/bbox": {"AP50": 2.0},
        "coco/bbox": {"AP": 4.0},
        "coco/segm": {"AP": 1.0},
    }


def test_no_results_stay_empty():
    evaluator = PrefixedEvaluator(Counting(None), "kitti")
    evaluator.reset()
    assert evaluator.evaluate() == {}
