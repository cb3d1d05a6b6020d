"""The error of the export and of loading or running an exported model."""

from ..errors import UserError

__all__ = ["ExportError", "EXPORT_EXTRA"]

# What to install for ONNX: the optional dependencies of setup.py's "export" extra.
EXPORT_EXTRA = "pip install 'd2_finetune[export]' (onnx and onnxruntime)"


class ExportError(UserError):
    """A model that cannot be exported, or an exported model that cannot be used as asked."""
