"""Command-line plumbing shared by the scripts: arguments, config setup, error reporting."""
import contextlib
import logging
import sys

import torch

from detectron2.engine import default_argument_parser, default_setup
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..config import load_config
from ..errors import ConfigError, UserError

__all__ = ["argument_parser", "setup", "user_errors", "resolve_device"]


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


def resolve_device(cfg):
    """Turn ``train.device="auto"`` into cuda or cpu; refuse cuda where there is none."""
    device = cfg.train.get("device", "auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"train.device={device} but no CUDA device is available; use train.device=cpu "
            "or train.device=auto."
        )
    cfg.train.device = device
    return cfg


def setup(args):
    """Load the config with the command-line overrides, set up logging, save the config."""
    if not args.config_file:
        raise ConfigError("No config file given: pass --config-file, e.g. configs/cityscapes_ft.py.")
    cfg = load_config(args.config_file, args.opts)
    resolve_device(cfg)
    default_setup(cfg, args)
    setup_logger(cfg.train.output_dir, distributed_rank=comm.get_rank(), name="d2_finetune",
                 abbrev_name="d2ft")
    return cfg


@contextlib.contextmanager
def user_errors(debug=False):
    """Report a :class:`UserError` as one line on stderr and exit with status 2.

    Errors raised in ``launch`` worker processes were already reported by the worker; the
    parent then only passes on the exit status.
    """
    try:
        yield
    except UserError as e:
        if debug:
            raise
        logging.getLogger("d2_finetune").debug("user error", exc_info=True)
        print(f"ERROR: {e}", file=sys.stderr, flush=True)
        sys.exit(2)
    except torch.multiprocessing.ProcessExitedException as e:
        sys.exit(e.exit_code or 1)
