from .checks import startup_guard
from .cli import argument_parser, load, resolve_device, setup, user_errors
from .launch import launch
from .trainer import AutocastTrainer, FinetuneTrainer, autocast_context

__all__ = [
    "AutocastTrainer",
    "FinetuneTrainer",
    "argument_parser",
    "launch",
    "load",
    "startup_guard",
    "autocast_context",
    "resolve_device",
    "setup",
    "user_errors",
]
