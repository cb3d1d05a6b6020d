"""Running an exported model: ``model.ts`` (TorchScript) or ``model.onnx`` (onnxruntime on the
CPU) with the ``export.json`` beside it; no config and no detectron2 model are built.

Around the graph it does what the config's test pipeline does: the recorded resize and channel
order before (as the test mapper), and :func:`d2_finetune.postprocess.postprocess` after (as
the eager model's forward), so it returns the same detectron2 ``Instances`` as eager
prediction and evaluation.
"""

import copy
import logging
import os

import numpy as np
import torch

from detectron2.data import Metadata
from detectron2.data import transforms as T

from ..postprocess import postprocess, raw_instances
from .errors import EXPORT_EXTRA, ExportError
from .manifest import format_of, read_manifest, resize_augmentations, resize_policy, resized_shape

__all__ = [
    "ExportedModel",
    "ExportedPredictor",
    "evaluate_exported",
    "load_exported",
    "is_exported_model",
    "load_graph",
]

logger = logging.getLogger(__name__)


def is_exported_model(path):
    """Whether ``path`` names an exported model (``.ts`` or ``.onnx``) rather than weights."""
    return isinstance(path, str) and os.path.splitext(path)[1].lower() in (".ts", ".onnx")


class _TorchScriptGraph:
    def __init__(self, path, outputs):
        import torchvision  # noqa: F401  (registers the torchvision::nms / roi_align ops)

        self.module = torch.jit.load(path, map_location="cpu").eval()
        self.outputs = outputs

    @torch.no_grad()
    def __call__(self, image):
        return dict(zip(self.outputs, self.module(image)))


class _OnnxGraph:
    def __init__(self, path, outputs, threads=0):
        try:
            import onnxruntime
        except ImportError as e:
            raise ExportError(f"Running {path} needs onnxruntime: {EXPORT_EXTRA}.") from e
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3  # errors only
        try:
            self.session = onnxruntime.InferenceSession(
                path, options, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise ExportError(f"onnxruntime cannot load {path}: {e}") from e
        names = [o.name for o in self.session.get_outputs()]
        if names != list(outputs):
            raise ExportError(
                f"{path} returns {names}, not the outputs {list(outputs)} its "
                "export.json records: export again."
            )
        self.outputs = outputs
        self.input_name = self.session.get_inputs()[0].name

    def __call__(self, image):
        values = self.session.run(None, {self.input_name: image.numpy()})
        return {name: torch.from_numpy(v) for name, v in zip(self.outputs, values)}


def load_graph(path, fmt, outputs, threads=0):
    """The graph in ``path``, as a function from a ``(3, H, W)`` float32 image to its named
    outputs (``outputs``, in the graph's order)."""
    if fmt == "onnx":
        return _OnnxGraph(path, outputs, threads)
    try:
        return _TorchScriptGraph(path, outputs)
    except RuntimeError as e:
        raise ExportError(f"TorchScript cannot load {path}: {e}") from e


class ExportedModel(torch.nn.Module):
    """An exported model with the interface of a detectron2 model in inference.

    ``model(batched_inputs)`` takes what the config's test loader gives (``"image"``: a
    ``(3, H, W)`` tensor already resized by the test mapper, ``"height"``, ``"width"``: the
    original size) and returns ``[{"instances": Instances}]`` on the original images, so
    detectron2's ``inference_on_dataset`` and our evaluators run on it unchanged.

    Args:
        model_path (str): ``model.ts`` or ``model.onnx``, with its ``export.json`` beside it.
        threads (int): onnxruntime's threads (0: its default, one per core).
    """

    def __init__(self, model_path, threads=0):
        super().__init__()
        self.path = model_path
        self.manifest = read_manifest(model_path)
        self.format = format_of(model_path)
        self.classes = list(self.manifest["classes"])
        self.input_format = self.manifest["input"]["format"]
        self.resize = self.manifest["input"]["resize"]
        self.mask_threshold = self.manifest.get("postprocess", {}).get("mask_threshold", 0.5)
        self.graph = load_graph(model_path, self.format, self.manifest["outputs"], threads)

    def metadata(self):
        """detectron2 ``Metadata`` for the Visualizer: the class names (and colours) exported."""
        colors = self.manifest.get("thing_colors")
        fields = {"thing_classes": self.classes}
        if colors:
            fields["thing_colors"] = [tuple(c) for c in colors]
        return Metadata(name=self.manifest.get("dataset") or "exported", **fields)

    def run(self, image, height, width):
        """One preprocessed ``(3, h, w)`` image through the graph and the post-processing."""
        outputs = self.graph(image.to(torch.float32).contiguous())
        size = outputs.pop("image_size")
        raw = raw_instances(outputs, size.tolist())
        return postprocess(raw, height, width, self.mask_threshold)

    @torch.no_grad()
    def forward(self, batched_inputs):
        results = []
        for inputs in batched_inputs:
            image = inputs["image"]
            height = int(inputs.get("height", image.shape[-2]))
            width = int(inputs.get("width", image.shape[-1]))
            expected = resized_shape(self.resize, height, width)
            if image.dim() != 3 or image.shape[0] != 3 or tuple(image.shape[-2:]) != expected:
                raise ExportError(
                    f"An image of {height}x{width} reached the exported model as "
                    f"{'x'.join(str(v) for v in image.shape)}, but {self.path} was exported for "
                    f"3x{expected[0]}x{expected[1]} (export.json input.resize: "
                    f"{_describe(self.resize)}): evaluate with the test resize of the config it "
                    "was exported from, or export again with this one."
                )
            results.append({"instances": self.run(image, height, width)})
        return results

    def check_config(self, cfg):
        """Refuse a config whose test data this export does not fit: other classes, another
        channel order or another test resize than the export's."""
        names = cfg.dataloader.test.dataset.names
        from detectron2.data import MetadataCatalog

        for name in [names] if isinstance(names, str) else list(names):
            classes = MetadataCatalog.get(name).get("thing_classes")
            if classes is not None and list(classes) != self.classes:
                raise ExportError(
                    f"{self.path} predicts the classes {self.classes} (export.json), but the "
                    f"test dataset {name} has {list(classes)}: evaluate on data with the "
                    "export's classes."
                )
        fmt = cfg.dataloader.test.mapper.get("image_format", self.input_format)
        if fmt != self.input_format:
            raise ExportError(
                f"dataloader.test.mapper.image_format={fmt}, but {self.path} takes "
                f"{self.input_format} images (export.json input.format)."
            )
        resize = resize_policy(cfg)
        if resize != self.resize:
            raise ExportError(
                f"The config's test resize ({_describe(resize)}) is not the one {self.path} was "
                f"exported with ({_describe(self.resize)}, export.json input.resize): evaluate "
                "with the config it was exported from, or export again."
            )


class ExportedPredictor:
    """:class:`d2_finetune.predict.Predictor` for an exported model: a BGR ``(H, W, 3)`` uint8
    image in, ``Instances`` on that image out."""

    def __init__(self, model):
        self.model = model
        self.augmentations = resize_augmentations(model.resize)

    def preprocess(self, image_bgr):
        """The graph's input for an image: channel order, resize, ``(3, h, w)`` float32."""
        if not isinstance(image_bgr, np.ndarray) or image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
            shape = getattr(image_bgr, "shape", type(image_bgr).__name__)
            raise ExportError(f"Exported models take (H, W, 3) BGR images, got {shape}.")
        height, width = image_bgr.shape[:2]
        new_h, new_w = resized_shape(self.model.resize, height, width)
        if min(height, width, new_h, new_w) < 1:
            raise ExportError(
                f"An image of {height}x{width} cannot be predicted: the export's resize "
                f"({_describe(self.model.resize)}) makes it {new_h}x{new_w}."
            )
        image = image_bgr[:, :, ::-1] if self.model.input_format == "RGB" else image_bgr
        aug_input = T.AugInput(np.ascontiguousarray(image))
        self.augmentations(aug_input)
        return torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))

    @torch.no_grad()
    def __call__(self, image_bgr):
        tensor = self.preprocess(image_bgr)
        return self.model.run(tensor, *image_bgr.shape[:2])


def load_exported(cfg, model_path=None):
    """The exported model ``model_path`` (default ``train.init_checkpoint``), after checking
    that it fits the config's test data (classes, channel order, resize): what
    :func:`d2_finetune.engine.load_for_inference` gives for a ``.ts`` or ``.onnx`` file."""
    model = ExportedModel(model_path or cfg.train.init_checkpoint)
    model.check_config(cfg)
    logger.info(f"Running the exported model {model.path} ({model.format})")
    return model


def evaluate_exported(cfg, model_path=None):
    """An exported model (see :func:`load_exported`) over the config's test loader and
    evaluators, as ``scripts/train_net.py --eval-only train.init_checkpoint=model.onnx`` runs
    it."""
    from ..engine.evaluate import evaluate

    model = load_exported(cfg, model_path)
    cfg = copy.deepcopy(cfg)
    if "amp" in cfg.train:
        cfg.train.amp.enabled = False  # exported graphs run as exported, in float32
    return evaluate(cfg, model)


def _describe(resize):
    if not resize:
        return "no resize"
    parts = []
    for step in resize:
        if step["type"] == "Resize":
            parts.append(f"Resize to {step['shape'][0]}x{step['shape'][1]}")
        else:
            parts.append(
                f"ResizeShortestEdge({step['short_edge_length']}, max_size={step['max_size']})"
            )
    return ", ".join(parts)
