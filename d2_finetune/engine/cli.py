"""Command-line plumbing shared by the scripts: arguments, config setup, error reporting."""

import contextlib
import logging
import os
import sys
import traceback

import torch

from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import load_config
from ..errors import ConfigError, UserError
from .checks import check_config, check_init_checkpoint, check_output_dir, check_world_size
from .launch import report_in_launcher
from .processes import use_processes_from_env

__all__ = ["argument_parser", "load", "setup", "user_errors"]


def argument_parser(description=None):
    """detectron2's argument parser, with ``--debug`` and a free port picked by default."""
    parser = default_argument_parser()
    if description:
        parser.description = description
    parser.set_defaults(dist_url="auto")
    parser.add_argument(
        "--debug", action="store_true", help="show full tracebacks for errors in the input"
    )
    return parser


def load(args):
    """The config of ``--config-file`` with the command-line overrides, checked against the
    command line (``--num-gpus``, ``--resume``); nothing is written, nothing resolved yet (see
    :func:`.resolve.resolve_config`, which every process runs after :func:`setup`)."""
    if not args.config_file:
        raise ConfigError(
            "No config file given: pass --config-file, e.g. configs/cityscapes_ft.py."
        )
    if use_processes_from_env(args) is None:  # else torchrun or SLURM started the processes
        check_world_size(args.num_gpus, args.num_machines)
    cfg = load_config(args.config_file, args.opts)
    check_config(cfg, world_size=args.num_gpus * args.num_machines)
    check_init_checkpoint(cfg, resume=getattr(args, "resume", False))
    return cfg


def setup(cfg, args):
    """Logging (console and ``<output_dir>/log.txt``), environment info, seeds, how loader
    workers share tensors (``train.tensor_sharing``); saves the config."""
    check_output_dir(cfg.train.output_dir)
    default_setup(cfg, args)
    setup_logger(
        cfg.train.output_dir,
        distributed_rank=comm.get_rank(),
        name="d2_finetune",
        abbrev_name="d2ft",
    )
    if cfg.train.get("tensor_sharing"):
        torch.multiprocessing.set_sharing_strategy(cfg.train.tensor_sharing)
    return cfg


@contextlib.contextmanager
def user_errors(debug=False):
    """Report a :class:`UserError` as one line, ``ERROR: <message>``, on stderr and exit with
    status 2; ``debug`` shows the traceback instead. The error is also written to the run's
    ``log.txt`` (when logging is set up), and other exceptions keep their traceback there too.

    In a worker process of a multi-process run the line is left to the launching process
    (see :mod:`.launch`), which prints it once for all processes.
    """
    try:
        yield
    except UserError as e:
        message = _short(e)
        _write_to_log_files(f"ERROR: {message}")
        if debug:
            raise
        if not report_in_launcher(message):
            print(f"ERROR: {message}", file=sys.stderr, flush=True)
        sys.exit(2)
    except torch.multiprocessing.ProcessExitedException as e:
        print(f"ERROR: {e}", file=sys.stderr, flush=True)
        sys.exit(1)
    except Exception:
        _write_to_log_files(traceback.format_exc())
        raise


def _write_to_log_files(text):
    """Append ``text`` to the files (not the console) that the project's logger writes to."""
    record = logging.LogRecord("d2_finetune", logging.ERROR, __file__, 0, text, None, None)
    for handler in logging.getLogger("d2_finetune").handlers:
        stream = getattr(handler, "stream", None)
        name = getattr(stream, "name", None)
        if isinstance(name, str) and os.path.isfile(name) and not stream.closed:
            handler.handle(record)


def _short(error):
    """The message of ``error``; for one re-raised from a DataLoader worker, only the original
    message, not the worker's traceback that PyTorch folds into it."""
    text = str(error)
    if "Original Traceback" in text:
        last = text.strip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return text
