from .cli import argument_parser, resolve_device, setup, user_errors
from .trainer import AutocastTrainer, FinetuneTrainer, autocast_context

__all__ = [
    "AutocastTrainer",
    "FinetuneTrainer",
    "argument_parser",
    "autocast_context",
    "resolve_device",
    "setup",
    "user_errors",
]
