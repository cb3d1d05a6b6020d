"""FinetuneCheckpointer: detectron2's DetectionCheckpointer for fine-tuning.

A load reads the file (:mod:`.files`), plans each tensor's fate (:mod:`.plan`), checks the plan
(raising before the model is touched), applies it and records it (:mod:`.report`). Saving is
atomic and keeps the class names.
"""

import json
import logging
import os

import torch

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.checkpoint.c2_model_loading import align_and_update_state_dicts
from fvcore.common.checkpoint import Checkpointer, _IncompatibleKeys, _strip_prefix_if_present

from ..errors import CheckpointError
from ..fileio import PARTIAL_SUFFIX, atomic_write
from .classes import check_class_init, check_class_map
from .convert import CONVERTED_FROM_KEY, Requirements, check_model
from .files import local_checkpoint_file, read_checkpoint, sha256
from .plan import CLASS_NAMES_KEY, make_plan
from .report import (
    PROBLEM_TITLES,
    describe_item,
    describe_problems,
    fresh_tensors,
    make_report,
    report_table,
)

__all__ = ["FinetuneCheckpointer"]

logger = logging.getLogger(__name__)


class FinetuneCheckpointer(DetectionCheckpointer):
    """A DetectionCheckpointer for fine-tuning: strict, class-aware, recorded and safe.

    ``load(path)`` loads every tensor of the checkpoint into the model. Only the
    class-dependent layers may differ in shape: those of :func:`.layers.class_layers`, and any other
    tensor outside the backbone whose first dimension is u * (K + b) in the model and
    u * (K_checkpoint + b) in the checkpoint (b in {0, 1}, the other dimensions equal; these
    are re-initialised, as their row layout is unknown). Any other shape mismatch, missing or
    unexpected tensor is an error listing them, raised before the model is changed; with
    ``strict=False`` it is logged and the tensors that fit are loaded.

    With a ``class_map`` (see :func:`.classes.match_classes`; ``class_synonyms`` come from the
    training dataset's metadata), each target class matched to a source class gets that class's
    rows of the class-dependent layers (``cls_score`` row, its box_dim ``bbox_pred`` rows, its
    mask channel) and the background row is carried over; unmatched
    classes keep their fresh initialisation. A class-agnostic layer of the checkpoint gives
    its rows to every matched class; a class-agnostic layer of the model loads only from a
    class-agnostic one. Source class names come from the checkpoint's ``thing_classes`` entry,
    else are COCO's 80 names when the head has 80 classes. With ``class_map=None`` a
    class-dependent layer loads as-is when its shape fits and is re-initialised otherwise.

    Each load returns a report (format, sha256, class map, and the tensors loaded, transplanted
    with their row mapping, re-initialised and ignored, with shapes), logs it as a table and
    saves it as ``transfer.json`` in ``save_dir`` (``transfer_resume.json`` when resuming, which
    keeps the record of how the run started). Resuming must load everything as saved.
    Checkpoints saved by this checkpointer carry ``target_classes`` as ``thing_classes``.
    """

    def __init__(
        self,
        model,
        save_dir="",
        *,
        target_classes=None,
        class_map="auto",
        class_synonyms=None,
        class_init=None,
        image_format=None,
        strict=True,
        record_name="transfer.json",
        **checkpointables,
    ):
        super().__init__(model, save_dir, **checkpointables)
        self.record_name = record_name
        self.target_classes = list(target_classes) if target_classes is not None else None
        self.class_map = check_class_map(class_map)
        self.class_synonyms = dict(class_synonyms or {})
        self.class_init = check_class_init(class_init)
        self.image_format = image_format
        self.strict = strict
        self.report = None
        self._resuming = False
        self._source = None
        self._file_info = None

    # -- saving ---------------------------------------------------------------------------------

    def save(self, name, *, tag_last=True, **kwargs):
        """Save as detectron2 does, plus the class names (so a later load knows them), and
        atomically: the file is written under a temporary name and renamed when complete, and
        only then named in ``last_checkpoint`` (unless ``tag_last=False``). A crash mid-write
        leaves the previous checkpoints and ``last_checkpoint`` as they were.

        In a multi-process run every process calls it (checkpointables may gather the state of
        each process, e.g. their random generators); only the main process writes.
        """
        if not self.save_dir:
            return
        states = {key: obj.state_dict() for key, obj in self.checkpointables.items()}
        if not self.save_to_disk:
            return
        if self.target_classes is not None:
            kwargs.setdefault(CLASS_NAMES_KEY, list(self.target_classes))
        data = {"model": self.model.state_dict(), **states}
        data.update(kwargs)
        basename = f"{name}.pth"
        path = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {path}")
        atomic_write(path, lambda f: torch.save(data, f))
        if tag_last:
            self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        atomic_write(
            os.path.join(self.save_dir, "last_checkpoint"),
            lambda f: f.write(last_filename_basename.encode()),
        )

    def remove_partial_files(self):
        """Delete what an interrupted save left behind (``*.pth.tmp``)."""
        if self.save_dir and os.path.isdir(self.save_dir):
            for name in os.listdir(self.save_dir):
                if name.endswith(PARTIAL_SUFFIX):
                    os.remove(os.path.join(self.save_dir, name))

    # -- loading --------------------------------------------------------------------------------

    def resume_or_load(self, path, *, resume=True):
        """detectron2's resume_or_load; a resume must find the checkpoint to fit exactly."""
        self._resuming = bool(resume and self.has_checkpoint())
        try:
            return super().resume_or_load(path, resume=resume)
        finally:
            self._resuming = False

    def load(self, path, checkpointables=None):
        """Load ``path`` (a file, or a ``detectron2://`` / ``https://`` URL) into the model and
        the named checkpointables (all when None).

        Returns:
            dict: the transfer report; ``{}`` when ``path`` is empty (nothing loaded).
        """
        if not path:
            logger.info("No checkpoint given: the model keeps its initialisation.")
            return {}
        local = local_checkpoint_file(path, self.path_manager)
        self._source = path
        self.report = None
        try:
            # fvcore's load: the URL is already resolved, which DetectionCheckpointer.load redoes.
            Checkpointer.load(self, local, checkpointables)
        finally:
            self._source = None
        return self.report

    def _load_file(self, filename):
        checkpoint, fmt = read_checkpoint(filename)
        self._file_info = {
            "local_path": os.path.abspath(filename),
            "sha256": sha256(filename),
            "format": fmt,
            "author": checkpoint.get("__author__"),
            "converted_from": checkpoint.get(CONVERTED_FROM_KEY),
        }
        return checkpoint

    def _load_model(self, checkpoint):
        state = checkpoint.pop("model")
        _strip_prefix_if_present(state, "module.")
        if checkpoint.pop("matching_heuristics", False):
            state = align_and_update_state_dicts(
                self.model.state_dict(),
                state,
                c2_conversion=checkpoint.get("__author__") == "Caffe2",
            )
        names = checkpoint.pop(CLASS_NAMES_KEY, None)
        converted = checkpoint.pop(CONVERTED_FROM_KEY, None)
        if converted and converted.get("requires") and not self._resuming:
            # Weights converted from torchvision or MMDetection need the model settings they
            # were trained with (input format and normalisation, ResNet stride, RoIAlign, ...).
            check_model(
                self.model,
                Requirements.from_dict(converted["requires"]),
                self._file_info["local_path"],
                image_format=self.image_format,
            )
        plan = make_plan(
            self.model,
            state,
            names,
            target_classes=self.target_classes,
            class_map=self.class_map,
            synonyms=self.class_synonyms,
            class_init=self.class_init,
            filename=self._file_info["local_path"],
        )
        report = make_report(
            plan,
            source=self._source,
            file_info=self._file_info,
            resumed=self._resuming,
            strict=self.strict,
            class_map=self.class_map,
            class_init=self.class_init,
            target_classes=self.target_classes,
        )
        self._check(plan, report)
        self._apply(report, state)
        self.report = report
        self._record(report)
        return _IncompatibleKeys(missing_keys=[], unexpected_keys=[], incorrect_shapes=[])

    def _check(self, plan, report):
        """Raise, before the model is touched, when the checkpoint does not fit (see the class
        docstring); a resume must fit exactly."""
        source = self._file_info["local_path"]
        self._check_normalisation(source, plan.normalisation)
        problems = describe_problems(plan.problems)
        if self._resuming:
            unfit = fresh_tensors(report) + [e["key"] for e in report["transplanted"]]
            if problems or unfit:
                detail = problems or "class-dependent layers differ: " + ", ".join(unfit)
                raise CheckpointError(
                    f"Cannot resume from {source}: it does not fit the model ({detail}). "
                    "Resuming needs a checkpoint written by this same config; to start from it "
                    f"instead, drop --resume and set train.init_checkpoint={source}."
                )
        if not problems:
            return
        log = logger.error if self.strict else logger.warning
        for kind, items in plan.problems.items():
            for item in items:
                log(f"Checkpoint {source}: {PROBLEM_TITLES[kind]}: {describe_item(kind, item)}")
        message = (
            f"{source} does not fit the model outside its class-dependent layers: {problems}. "
            "The checkpoint was most likely trained with another architecture (e.g. another "
            "ResNet depth or FPN width) than the config describes: use the config that matches "
            "it, or set train.strict_transfer=False to load the tensors that fit and start the "
            "others from scratch (all are listed in transfer.json)."
        )
        if self.strict:
            raise CheckpointError(message)
        log(message)

    def _check_normalisation(self, source, differences):
        """The checkpoint's saved pixel_mean/pixel_std must be the config's: a model fed inputs
        normalised otherwise than in its training starts from features it never saw, and
        nothing else fails. An error when ``strict``, else a warning (the config's values are
        kept)."""
        if not differences:
            return

        def overrides(index):
            return [f"model.{d[0]}=[{','.join(f'{v:g}' for v in d[index])}]" for d in differences]

        message = (
            f"{source} was trained on inputs normalised with {' '.join(overrides(1))}, but the "
            f"config has {' '.join(overrides(2))}: the model would see inputs normalised otherwise "
            f"than in its training. Set {' and '.join(overrides(1))} (with the model.input_format "
            "the weights were trained with), or set train.strict_transfer=False to keep the "
            "config's values."
        )
        if self.strict:
            raise CheckpointError(message)
        logger.warning(message)

    # -- applying -------------------------------------------------------------------------------

    def _apply(self, report, state):
        """Load the planned tensors: those loaded as saved, and the transplanted rows over the
        model's fresh ones."""
        model_state = self.model.state_dict()
        keep = {e["key"] for e in report["loaded"]}
        for entry in report["transplanted"]:
            key = entry["key"]
            rows = torch.tensor(entry["rows"], dtype=torch.long)
            value = model_state[key].detach().clone()
            value[rows[:, 0]] = state[key][rows[:, 1]].to(dtype=value.dtype)
            state[key] = value
            keep.add(key)
        for key in list(state):
            if key not in keep:
                del state[key]
        incompatible = self.model.load_state_dict(state, strict=False)
        assert not incompatible.unexpected_keys, incompatible.unexpected_keys

    # -- recording ------------------------------------------------------------------------------

    def _record(self, report):
        logger.info(report_table(report))
        if not (self.save_dir and self.save_to_disk):
            return
        name = "transfer_resume.json" if report["resumed"] else self.record_name
        self.path_manager.mkdirs(self.save_dir)
        path = os.path.join(self.save_dir, name)
        atomic_write(path, lambda f: f.write(json.dumps(report, indent=1).encode()))
        logger.info(f"Transfer record written to {path}")
