"""Cityscapes instance segmentation evaluation: the official AP, computed in memory.

:class:`CityscapesInstanceEvaluator` gives the numbers of cityscapesscripts'
``evalInstanceLevelSemanticLabeling`` without its files: each image's predictions are matched to
its ``*_gtFine_instanceIds.png`` as they arrive, and only a few numbers per prediction are kept
and gathered across processes and machines (see :mod:`.cityscapes_metric`).
:class:`OfficialCityscapesInstanceEvaluator` runs the official script itself on PNG files, as
detectron2's evaluator does, for those who want to check.
"""

import glob
import json
import logging
import math
import os
from collections import OrderedDict

import numpy as np
import torch
from tabulate import tabulate
from tqdm import tqdm

from detectron2.data import MetadataCatalog
from detectron2.evaluation import CityscapesInstanceEvaluator as _D2CityscapesInstanceEvaluator
from detectron2.evaluation import DatasetEvaluator
from detectron2.utils import comm
from detectron2.utils.file_io import PathManager

from ..errors import ConfigError, DatasetError
from .cityscapes_metric import (
    INSTANCE_LABELS,
    OVERLAPS,
    average_precisions,
    class_of_label_id,
    crop_predictions,
    match_crops,
    read_instance_ids,
    summarize,
)

__all__ = [
    "CityscapesInstanceEvaluator",
    "OfficialCityscapesInstanceEvaluator",
    "RESULTS_FILE",
    "cityscapes_core_name",
]

logger = logging.getLogger(__name__)

RESULTS_FILE = "cityscapes_instance_results.json"
GT_SUFFIX = "_gtFine_instanceIds.png"
EVALUATORS = ("fast", "official")


def cityscapes_core_name(file_name):
    """``<city>_<sequence>_<frame>`` of a Cityscapes file name, by cityscapesscripts' rule
    (``getCsFileInfo``: 5 or 6 ``_``/``.``-separated parts); the key that pairs an image with
    its ground truth."""
    base = os.path.basename(file_name)
    parts = base.split("_")
    parts = parts[:-1] + parts[-1].split(".")
    if len(parts) not in (5, 6):
        raise DatasetError(
            f"{file_name}: not a Cityscapes file name (<city>_<sequence>_<frame>_<type>.<ext>, "
            "e.g. frankfurt_000000_000294_leftImg8bit.png), so its ground truth cannot be found."
        )
    return "_".join(parts[:3])


def _cityscapes_metadata(dataset_name):
    """(gt_dir, thing class -> Cityscapes label id) of a registered dataset, checked."""
    from cityscapesscripts.helpers.labels import name2label

    metadata = MetadataCatalog.get(dataset_name)
    missing = [k for k in ("gt_dir", "thing_classes") if metadata.get(k) is None]
    if missing:
        raise ConfigError(
            f"Dataset '{dataset_name}' has no {' or '.join(missing)} in its metadata, which "
            "Cityscapes evaluation needs: register it with d2_finetune.data.register_cityscapes() "
            "or set MetadataCatalog.get(name).gt_dir to its gtFine/<split> folder."
        )
    unknown = [c for c in metadata.thing_classes if c not in name2label]
    if unknown:
        raise ConfigError(
            f"Dataset '{dataset_name}': thing classes {unknown} are not Cityscapes labels; "
            "Cityscapes evaluation needs Cityscapes class names (e.g. person, car, bicycle)."
        )
    label_ids = [name2label[c].id for c in metadata.thing_classes]
    return PathManager.get_local_path(metadata.gt_dir), label_ids


class _GroundTruthFiles:
    """``*_gtFine_instanceIds.png`` files under ``gt_dir/<city>/``, found the way the official
    script finds them (``gt_dir/*/*_gtFine_instanceIds.png``) and looked up by core name."""

    def __init__(self, dataset_name, gt_dir):
        self.dataset_name = dataset_name
        self.gt_dir = gt_dir
        self._files = None

    def __call__(self, file_name):
        """(core name, ground truth path) of an input image."""
        key = cityscapes_core_name(file_name)
        if self._files is None:
            if not os.path.isdir(self.gt_dir):
                raise DatasetError(
                    f"Cityscapes ground truth folder not found: {self.gt_dir} (metadata gt_dir of "
                    f"'{self.dataset_name}'). It must hold <city>/*{GT_SUFFIX}."
                )
            pattern = os.path.join(self.gt_dir, "*", "*" + GT_SUFFIX)
            self._files = {os.path.basename(p)[: -len(GT_SUFFIX)]: p for p in glob.glob(pattern)}
        if key not in self._files:
            raise DatasetError(
                f"No ground truth for {file_name}: expected {self.gt_dir}/<city>/{key}{GT_SUFFIX}."
            )
        return key, self._files[key]


def _report(ap, num_images, dataset_name, output_dir, evaluator):
    """Official averages of an AP matrix in percent; logs the per-class table and writes the
    JSON results file when ``output_dir`` is set."""
    results = summarize(ap)
    rows = [(name, results[f"AP-{name}"], results[f"AP50-{name}"]) for name in INSTANCE_LABELS]
    rows.append(("average", results["AP"], results["AP50"]))
    table = tabulate(
        rows, headers=["class", "AP", "AP50"], tablefmt="pipe", floatfmt=".3f", numalign="right"
    )
    logger.info(
        f"Cityscapes instance AP (official metric, {evaluator} path) of '{dataset_name}' on "
        f"{num_images} images:\n{table}"
    )
    if output_dir:
        PathManager.mkdirs(output_dir)

        def finite(x):
            return None if math.isnan(x) else x

        content = {
            "dataset": dataset_name,
            "evaluator": evaluator,
            "num_images": num_images,
            "metrics": {k: finite(v) for k, v in results.items()},
            "overlaps": [float(o) for o in OVERLAPS],
            "ap_per_overlap": {
                name: [finite(float(v)) for v in ap[c]] for c, name in enumerate(INSTANCE_LABELS)
            },
        }
        with PathManager.open(os.path.join(output_dir, RESULTS_FILE), "w") as f:
            json.dump(content, f, indent=2)
    return OrderedDict(segm=results)


class CityscapesInstanceEvaluator(DatasetEvaluator):
    """The official Cityscapes instance-level AP (cityscapesscripts), computed in memory.

    Same contract as detectron2's ``CityscapesInstanceEvaluator``: ``process(inputs, outputs)``
    takes inputs with ``file_name`` and outputs whose ``instances`` carry ``pred_masks``
    (H x W at the original image size), ``pred_classes`` and ``scores``; the ground truth is
    the dataset metadata's ``gt_dir``. Only the processed images are evaluated, so a loader over
    part of a split works, and the results are gathered across all processes and machines.

    ``evaluate()`` returns ``{"segm": {"AP", "AP50", "AP-<class>", "AP50-<class>"}}`` in
    percent (NaN for a class without ground truth), logs the per-class table and, with
    ``output_dir``, writes ``cityscapes_instance_results.json`` there.
    """

    def __init__(self, dataset_name, output_dir=None, evaluator="fast"):
        """
        Args:
            dataset_name: a registered dataset with ``gt_dir`` and ``thing_classes``
                (Cityscapes label names) in its metadata.
            output_dir: folder for the results JSON; None writes none.
            evaluator: "fast" (in memory) or "official" (detectron2's evaluator writing one PNG
                per prediction, scored by cityscapesscripts' own code: slow, for checking).
        """
        if evaluator not in EVALUATORS:
            raise ConfigError(
                f"Cityscapes evaluator must be one of {EVALUATORS}, got {evaluator!r}."
            )
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        self._official = (
            OfficialCityscapesInstanceEvaluator(dataset_name, output_dir)
            if evaluator == "official"
            else None
        )
        gt_dir, label_ids = _cityscapes_metadata(dataset_name)
        self._ground_truth = _GroundTruthFiles(dataset_name, gt_dir)
        self._classes = np.asarray([class_of_label_id(i) for i in label_ids], dtype=np.int64)
        self._images = {}
        self._progress = None

    def reset(self):
        if self._official is not None:
            self._official.reset()
            return
        self._images = {}
        self._close_progress()

    def process(self, inputs, outputs):
        if self._official is not None:
            self._official.process(inputs, outputs)
            return
        for inp, out in zip(inputs, outputs):
            key, gt_file = self._ground_truth(inp["file_name"])
            if key in self._images:
                logger.warning(f"{inp['file_name']} was processed twice; keeping the first result.")
                continue
            instance_ids = read_instance_ids(gt_file)
            crops = crop_predictions(*self._predictions(out, instance_ids.shape))
            if crops.image_shape != instance_ids.shape:
                raise DatasetError(
                    f"Predicted masks for {inp['file_name']} are {crops.image_shape} (H, W) but "
                    f"its ground truth {gt_file} is {instance_ids.shape}: predictions must be at "
                    "the original image size (give the inputs 'height' and 'width')."
                )
            self._images[key] = match_crops(instance_ids, crops)
            self._advance_progress()

    def _predictions(self, output, shape):
        """(masks, class indices, scores) as numpy arrays; class -1 marks predictions of classes
        that are not evaluated."""
        instances = output.get("instances")
        if instances is None or len(instances) == 0:
            return np.zeros((0,) + tuple(shape), dtype=bool), np.zeros(0, int), np.zeros(0)
        if not instances.has("pred_masks"):
            raise ConfigError(
                "Cityscapes instance evaluation needs masks, but the model's instances have no "
                "pred_masks: evaluate a model with a mask head, or use COCOEvaluator with "
                "tasks=('bbox',)."
            )
        masks = instances.pred_masks.to("cpu").numpy()
        classes = self._classes[instances.pred_classes.to("cpu").numpy()]
        scores = instances.scores.to("cpu", torch.float64).numpy()
        return masks, classes, scores

    def _advance_progress(self):
        if self._progress is None:
            self._progress = tqdm(
                desc="Cityscapes matching", unit="img", disable=not comm.is_main_process()
            )
        self._progress.update(1)

    def _close_progress(self):
        if self._progress is not None:
            self._progress.close()
            self._progress = None

    def evaluate(self):
        if self._official is not None:
            return self._official.evaluate()
        self._close_progress()
        gathered = comm.gather(self._images, dst=0)
        if not comm.is_main_process():
            return {}
        images = {}
        for part in gathered:
            for key, matches in part.items():
                images.setdefault(key, matches)
        if not images:
            logger.warning(
                f"[CityscapesInstanceEvaluator] no images of '{self._dataset_name}' were processed."
            )
            return {}
        ap = average_precisions(images.values())
        return _report(ap, len(images), self._dataset_name, self._output_dir, "fast")


class OfficialCityscapesInstanceEvaluator(_D2CityscapesInstanceEvaluator):
    """detectron2's evaluator: one PNG per prediction, scored by cityscapesscripts' own code.

    Unlike detectron2's, it scores only the processed images (so a loader over part of a split
    works), reports the per-class APs like :class:`CityscapesInstanceEvaluator`, and leaves
    nothing in the working directory (the official ``evaluateImgLists`` writes
    ``matches.json`` there). Single machine only, as detectron2's.
    """

    def __init__(self, dataset_name, output_dir=None):
        super().__init__(dataset_name)
        self._dataset_name = dataset_name
        self._output_dir = output_dir
        gt_dir, _ = _cityscapes_metadata(dataset_name)
        self._ground_truth = _GroundTruthFiles(dataset_name, gt_dir)
        self._gt_files = {}

    def reset(self):
        super().reset()
        self._gt_files = {}

    def process(self, inputs, outputs):
        for inp in inputs:
            key, gt_file = self._ground_truth(inp["file_name"])
            self._gt_files[key] = gt_file
        super().process(inputs, outputs)

    def evaluate(self):
        comm.synchronize()
        gathered = comm.gather(self._gt_files, dst=0)
        if not comm.is_main_process():
            return {}
        import cityscapesscripts.evaluation.evalInstanceLevelSemanticLabeling as cityscapes_eval

        gt_files = sorted({k: v for part in gathered for k, v in part.items()}.values())
        if not gt_files:
            logger.warning(
                f"[OfficialCityscapesInstanceEvaluator] no images of "
                f"'{self._dataset_name}' were processed."
            )
            self._working_dir.cleanup()
            return {}
        args = cityscapes_eval.args
        args.predictionPath = os.path.abspath(self._temp_dir)
        args.predictionWalk = None
        args.JSONOutput = False
        args.colorized = False
        args.quiet = True
        args.gtInstancesFile = os.path.join(self._temp_dir, "gtInstances.json")
        logger.info(
            f"Evaluating {len(gt_files)} images with cityscapesscripts under {self._temp_dir} ..."
        )
        predictions = [cityscapes_eval.getPrediction(gt, args) for gt in gt_files]
        cityscapes_eval.setInstanceLabels(args)
        gt_instances = cityscapes_eval.getGtInstances(gt_files, args)
        matches = cityscapes_eval.matchGtWithPreds(predictions, gt_files, gt_instances, args)
        ap = cityscapes_eval.evaluateMatches(matches, args)[0]
        self._working_dir.cleanup()
        return _report(ap, len(gt_files), self._dataset_name, self._output_dir, "official")
