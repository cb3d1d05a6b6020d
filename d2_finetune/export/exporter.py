"""Exporting a config's model: TorchScript or ONNX by tracing, checked against the eager model,
with ``export.json`` beside it.

The traced function is ``GeneralizedRCNN.inference(..., do_postprocess=False)`` through
detectron2's ``TracingAdapter``: one ``(3, H, W)`` float32 image in the model's channel order,
0-255, already resized; normalisation, padding, backbone, RPN, box head with its score
threshold and NMS, mask head, in the graph. Out: boxes in the input's pixels, scores, classes,
28x28 mask probabilities per box and the input size; the resize before it and
:func:`d2_finetune.postprocess.postprocess` after it run outside (docs/export.md).

ONNX goes through PyTorch's TorchScript-based exporter (``dynamo=False``): the dynamo exporter
fails on detectron2's R-CNN (on a data-dependent branch in the RPN, and by pytorch#175732 on
torchvision's ``roi_align``). Its opset must be 16 or later: RoiAlign gained
``coordinate_transformation_mode`` there, and before it "aligned" RoIAlign (detectron2's
ROIAlignV2) is exported as the unaligned one, off by half a pixel without an error.
"""

import contextlib
import copy
import logging
import os
import shutil
import warnings

import numpy as np
import torch

from detectron2.data.detection_utils import read_image
from detectron2.export import TracingAdapter
from detectron2.modeling import GeneralizedRCNN
from detectron2.utils.registry import locate

from ..checkpoint.files import sha256
from ..engine.resolve import prepare_config
from ..engine.weights import load_for_inference
from ..postprocess import SUPPORTED_FIELDS, postprocess, raw_instances
from .compare import match_instances, summarize, within
from .errors import EXPORT_EXTRA, ExportError
from .manifest import (
    MANIFEST,
    MODEL_FILES,
    build_manifest,
    dataset_classes,
    eval_dataset,
    resize_augmentations,
    resize_policy,
    resized_shape,
    thresholds,
    write_manifest,
)
from .runtime import load_graph

__all__ = [
    "DEFAULT_OPSET",
    "FORMATS",
    "MAX_OPSET",
    "MIN_OPSET",
    "check_request",
    "export_config",
    "export_model",
]

logger = logging.getLogger(__name__)

FORMATS = tuple(MODEL_FILES)
DEFAULT_OPSET = 17
MIN_OPSET = 16  # RoiAlign's coordinate_transformation_mode ("half_pixel" = aligned)
MAX_OPSET = 20  # the newest opset of PyTorch's TorchScript-based exporter
# How closely the exported graph must reproduce the eager model on the export's check images.
TOLERANCE = dict(box=1.0, score=1e-3, mask_iou=0.98, min_matched=0.95)


def export_config(config_file, overrides=()):
    """The config of ``config_file`` resolved for export: the model built in float32 on the CPU,
    in NCHW, where tracing happens (datasets registered, for the class names)."""
    settings = {"train.device": "cpu", "train.channels_last": False, "train.amp.enabled": False}
    return prepare_config(config_file, overrides, training=False, settings=settings)


def export_model(
    cfg, output_dir, fmt, opset=DEFAULT_OPSET, sample_image=None, model=None, source=None
):
    """Export ``cfg``'s model to ``output_dir/model.ts`` or ``model.onnx`` and ``export.json``.

    Args:
        cfg: the LazyConfig; its model is built on the CPU with ``train.init_checkpoint``
            (unless ``model`` is given), its test dataset names the classes and its test
            mapper gives the resize recorded for the graph's input.
        fmt (str): ``"torchscript"`` or ``"onnx"``.
        opset (int): the ONNX opset, 16 to 20.
        sample_image (str): an image to trace with (default: the test set's first image).
        model: an eager model to export instead of building ``cfg``'s (it is moved to the CPU
            and put in eval mode).
        source (dict): recorded in ``export.json`` (e.g. the config file and overrides).
    Returns:
        dict: the manifest written to ``export.json``.
    """
    check_request(fmt, opset)
    _check_output_dir(output_dir, fmt)
    if model is None:
        _check_architecture(cfg)
    resize = resize_policy(cfg)
    classes = dataset_classes(cfg)
    created = not os.path.isdir(output_dir)
    path = os.path.join(output_dir, MODEL_FILES[fmt])
    tmp = path + ".tmp"
    try:
        try:
            os.makedirs(output_dir, exist_ok=True)
        except OSError as e:
            raise ExportError(f"--output {output_dir} cannot be created ({e.strerror}).") from e
        if model is None:
            cfg = copy.deepcopy(cfg)
            cfg.train.output_dir = output_dir  # inference_weights.json: how the weights loaded
            model = load_for_inference(cfg)
        model = model.to("cpu").eval()
        _check_model(model)
        input_format = cfg.model.get("input_format", "BGR")
        sample, sample_name = _sample_input(cfg, sample_image, resize, input_format)
        adapter = TracingAdapter(model, [{"image": sample}], _raw_inference).eval()
        outputs = _output_names(adapter, sample)
        with _tracing_quietly():
            _write(adapter, sample, tmp, fmt, opset, outputs)
        graph = load_graph(tmp, fmt, outputs)
        fixed = resize[-1]["shape"] if resize and resize[-1]["type"] == "Resize" else None
        verification = _verify(model, graph, sample, fixed)
        model_sha256 = sha256(tmp)
        os.replace(tmp, path)
    except BaseException:
        if created:
            shutil.rmtree(output_dir, ignore_errors=True)
        raise
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)

    manifest = build_manifest(
        cfg,
        model,
        fmt=fmt,
        model_file=os.path.basename(path),
        model_sha256=model_sha256,
        classes=classes,
        resize=resize,
        fixed_size=fixed,
        outputs=outputs,
        verification=verification,
        traced_with=sample_name,
        opset=opset,
        source=source,
    )
    write_manifest(output_dir, manifest)
    logger.info(
        f"Exported {type(model).__name__} to {path} and {MANIFEST}; checked against the "
        f"eager model at {manifest['input']['checked_sizes']}: {verification}"
    )
    return manifest


def check_request(fmt, opset):
    """Refuse a format or opset that cannot be exported, or ONNX without its packages."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt}: choose torchscript or onnx.")
    if fmt != "onnx":
        return
    if not MIN_OPSET <= int(opset) <= MAX_OPSET:
        raise ExportError(
            f"--opset {opset}: ONNX export needs opset {MIN_OPSET} to {MAX_OPSET}. Before 16, "
            "RoiAlign has no coordinate_transformation_mode and the aligned RoIAlign of "
            "detectron2's ROIAlignV2 would be exported as the unaligned one (boxes and masks off "
            f"by half a pixel); {MAX_OPSET} is the newest of PyTorch's TorchScript-based exporter."
        )
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as e:
        raise ExportError(
            f"ONNX export needs onnx and onnxruntime ({e.name} is missing): {EXPORT_EXTRA}."
        ) from e


def _check_output_dir(output_dir, fmt):
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ExportError(f"--output {output_dir} is a file: give a folder.")
    for other, name in MODEL_FILES.items():
        if other != fmt and os.path.exists(os.path.join(output_dir, name)):
            raise ExportError(
                f"--output {output_dir} holds a {other} export ({name}), whose export.json this "
                f"{fmt} export would replace: export into another folder."
            )


def _check_architecture(cfg):
    """Refuse a model other than a GeneralizedRCNN before building it and loading weights."""
    target = cfg.model.get("_target_")
    if isinstance(target, str):
        target = locate(target)
    if not (isinstance(target, type) and issubclass(target, GeneralizedRCNN)):
        raise ExportError(_not_rcnn(getattr(target, "__name__", str(target))))


def _not_rcnn(name):
    return (
        f"The config's model is {name}: the export traces detectron2's GeneralizedRCNN "
        "(Faster / Mask R-CNN), whose outputs the shared post-processing maps to the image."
    )


def _check_model(model):
    name = type(model).__name__
    if not isinstance(model, GeneralizedRCNN):
        raise ExportError(_not_rcnn(name))
    if model.proposal_generator is None:
        raise ExportError(
            f"The config's {name} takes precomputed proposals "
            "(model.proposal_generator=None), which an exported graph cannot."
        )


def _raw_inference(model, inputs):
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


def _output_names(adapter, sample):
    """The graph's outputs, in order: the Instances' fields, then ``image_size``."""
    try:
        with torch.no_grad(), _tracing_quietly():
            adapter(sample)
    except Exception as e:
        raise _untraceable(adapter.model, e) from e
    try:
        (instances,) = adapter.outputs_schema.schemas[0].schemas
        names = list(instances.keys)
        assert adapter.outputs_schema.schemas[0].keys == ["instances"]
        assert all(size == 1 for size in instances.sizes)
    except (AttributeError, ValueError, AssertionError):
        raise ExportError(
            f"{type(adapter.model).__name__} does not return one Instances per "
            "image, which the export needs."
        ) from None
    unknown = [n for n in names if n not in SUPPORTED_FIELDS]
    if unknown:
        raise ExportError(
            f"The config's model predicts {', '.join(unknown)}, which exported models do not "
            f"post-process (they handle {', '.join(SUPPORTED_FIELDS)})."
        )
    return names + ["image_size"]


def _untraceable(model, error):
    return ExportError(
        f"The config's {type(model).__name__} cannot be traced for export: "
        f"{type(error).__name__}: {str(error).strip().splitlines()[-1]}"
    )


def _write(adapter, sample, path, fmt, opset, outputs):
    try:
        if fmt == "torchscript":
            traced = torch.jit.trace(adapter, (sample,), check_trace=False)
            torch.jit.save(traced, path)
            return
        dynamic = {"image": {1: "height", 2: "width"}}
        dynamic.update({name: {0: "instances"} for name in outputs if name != "image_size"})
        torch.onnx.export(
            adapter,
            (sample,),
            path,
            dynamo=False,
            opset_version=int(opset),
            input_names=["image"],
            output_names=outputs,
            dynamic_axes=dynamic,
        )
    except ExportError:
        raise
    except Exception as e:
        what = "to ONNX" if fmt == "onnx" else "by tracing"
        raise ExportError(
            f"The config's {type(adapter.model).__name__} cannot be exported {what}: "
            f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
            + (" (--format torchscript may still work)" if fmt == "onnx" else "")
        ) from e
    finally:
        adapter.eval()  # torch.onnx.export restores the mode it found


def _verify(model, graph, sample, fixed_size):
    """Compare the exported graph with the eager model on the trace image and, unless the
    resize fixes one input size, on the image resized to another height and width, neither a
    multiple of the padding's 32 (tracing can freeze a shape)."""
    images = [sample]
    if fixed_size is None:
        h, w = sample.shape[-2:]
        images.append(
            torch.nn.functional.interpolate(
                sample[None],
                size=(h * 3 // 4 + 5, w * 3 // 4 + 3),
                mode="bilinear",
                align_corners=False,
            )[0].round()
        )
    thresh = float(thresholds(model)["score_threshold"])
    results = []
    for index, image in enumerate(images):
        h, w = image.shape[-2:]
        with torch.no_grad():
            eager = postprocess(model.inference([{"image": image}], do_postprocess=False)[0], h, w)
        try:
            outputs = graph(image)
            size = outputs.pop("image_size").tolist()
            exported = postprocess(raw_instances(outputs, size), h, w)
        except Exception as e:
            error = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:300]}"
            if index == 0:
                raise ExportError(
                    f"The exported graph fails on the image it was traced with ({error})."
                ) from e
            raise ExportError(_frozen_message(image, sample, error)) from e
        result = match_instances(eager, exported, min_score=thresh)
        ok, why = within(summarize([result]), **TOLERANCE)
        if not ok:
            if index == 0:
                raise ExportError(
                    f"The exported graph does not reproduce the eager model on the "
                    f"image it was traced with: {why}."
                )
            raise ExportError(_frozen_message(image, sample, why))
        results.append(result)
    summary = summarize(results)
    summary.pop("images")
    summary["sizes"] = [list(image.shape[-2:]) for image in images]
    return {k: (round(v, 6) if isinstance(v, float) else v) for k, v in summary.items()}


def _frozen_message(image, sample, why):
    return (
        f"The traced graph does not generalise from the {sample.shape[-2]}x{sample.shape[-1]} "
        f"input it was traced with to {image.shape[-2]}x{image.shape[-1]} ({why}): the "
        "config's model turns an image size into a constant when traced, so it cannot be "
        "exported for images of other sizes. A test resize to one fixed size "
        "(dataloader.test.mapper.augmentations=[Resize]) can be exported."
    )


def _sample_input(cfg, sample_image, resize, input_format):
    """The image to trace with, resized like the test mapper, in the model's channel order."""
    name = sample_image
    if name is None:
        name = _first_test_image(cfg)
    if name is None:
        rng = np.random.default_rng(0)
        image = rng.integers(0, 256, size=(512, 1024, 3), dtype=np.uint8)
        name = "random noise"
    else:
        try:
            image = read_image(name, format=input_format)
        except Exception as e:
            raise ExportError(f"--sample-image {name} cannot be read as an image ({e}).") from e
    from detectron2.data.transforms import AugInput

    if min(resized_shape(resize, *image.shape[:2])) < 1:
        raise ExportError(
            f"The trace image {name} of {image.shape[0]}x{image.shape[1]} "
            "resizes to nothing with the config's test resize."
        )
    aug_input = AugInput(image)
    resize_augmentations(resize)(aug_input)
    tensor = torch.as_tensor(np.ascontiguousarray(aug_input.image.transpose(2, 0, 1)))
    return tensor.to(torch.float32), name


def _first_test_image(cfg):
    from detectron2.data import DatasetCatalog

    try:
        dicts = DatasetCatalog.get(eval_dataset(cfg))
        return dicts[0]["file_name"] if dicts else None
    except Exception as e:  # no images on this machine: trace with noise
        logger.info(f"Tracing with random noise: the test set's images are not available ({e}).")
        return None


@contextlib.contextmanager
def _tracing_quietly():
    """Without the warnings that tracing a detectron2 model gives by design, which the export's
    check of the graph against the eager model makes moot: one per Python value taken from a
    tensor (asserts, shape checks); torch.jit's and the TorchScript-based ONNX exporter's
    deprecation (docs/export.md, known limits); ONNX advanced indexing, wrong for negative
    indices (the mask head indexes by box and class, never negative); detectron2's meshgrid."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        for message in (
            ".*is deprecated",
            "You are using the legacy TorchScript-based ONNX",
            "The feature will be removed",
            "Exporting aten::index operator",
            "torch.meshgrid",
        ):
            warnings.filterwarnings("ignore", message=message)
        yield
