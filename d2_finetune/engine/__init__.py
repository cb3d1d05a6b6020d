"""Running a config: the command line (:mod:`.cli`), starting processes (:mod:`.launch`) or
joining those torchrun or SLURM started (:mod:`.processes`), SLURM jobs (:mod:`.submit`,
:mod:`.job`), resolving the config (:mod:`.resolve`), training (:mod:`.trainer` with :mod:`.steps`,
:mod:`.hooks`, :mod:`.amp`), evaluation (:mod:`.evaluate`) and weights (:mod:`.weights`)."""

from .amp import autocast_context
from .checks import startup_guard
from .cli import argument_parser, load, setup, user_errors
from .evaluate import evaluate
from .launch import launch
from .resolve import prepare_config, resolve_config
from .steps import AutocastTrainer
from .trainer import FinetuneTrainer
from .weights import load_for_inference

__all__ = [
    "AutocastTrainer",
    "FinetuneTrainer",
    "argument_parser",
    "autocast_context",
    "evaluate",
    "launch",
    "load",
    "load_for_inference",
    "prepare_config",
    "resolve_config",
    "setup",
    "startup_guard",
    "user_errors",
]
