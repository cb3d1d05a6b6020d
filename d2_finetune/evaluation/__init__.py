from detectron2.evaluation import CityscapesInstanceEvaluator as OfficialCityscapesInstanceEvaluator

__all__ = ["OfficialCityscapesInstanceEvaluator"]
