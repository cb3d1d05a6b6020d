"""Starting a run's processes, and reporting an error once however many processes hit it.

:func:`launch` is detectron2's ``launch`` (one process per GPU, or per CPU slot with gloo) with
one difference the user sees: bad input met by the processes of a run (a corrupt image, a
diverged loss, an unreadable record) is printed once, as one ``ERROR:`` line, by the launching
process. Each worker that meets a :class:`UserError` writes its message to a folder the
launching process created (:func:`report_in_launcher`) and exits with status 2 without printing;
when a worker fails, the launcher gives the others a few seconds to end on their own, ends the
rest, and raises the lowest rank's reported error. Errors that are bugs keep torch's traceback.
"""

import glob
import logging
import os
import tempfile
from datetime import timedelta

import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from detectron2.engine.launch import _distributed_worker, _find_free_port
from detectron2.utils import comm

from ..errors import ConfigError, UserError

__all__ = ["launch", "report_in_launcher"]

# Where a launched worker writes the message of the UserError it stopped on.
ERROR_DIR_ENV = "D2FT_ERROR_DIR"
# After the first worker fails: how long the others may take to end on their own (those that
# met the same error at the same iteration write their report and logs) before they are ended.
GRACE_SECONDS = 5
# detectron2's default: how long a collective may wait for the slowest process.
DEFAULT_TIMEOUT = timedelta(minutes=30)


class WorkerError(UserError):
    """A UserError met by a worker process, reported to the launching process."""


def launch(main, args, timeout=DEFAULT_TIMEOUT):
    """Run ``main(args)`` in ``args.num_gpus`` processes on each of ``args.num_machines``
    machines (in this process when there is one in all).

    Raises:
        WorkerError: the message of the lowest rank that stopped on a UserError.
        torch.multiprocessing.spawn.ProcessException: a worker failed otherwise (a bug, a signal).
    """
    world_size = args.num_gpus * args.num_machines
    if world_size == 1:
        return main(args)
    dist_url = args.dist_url
    if dist_url == "auto":
        if args.num_machines > 1:
            raise ConfigError(
                "--dist-url auto picks a port on this machine and works on one machine only: "
                "with --num-machines > 1 give the first machine's address, e.g. "
                "--dist-url tcp://<first machine>:29500, the same on every machine."
            )
        dist_url = f"tcp://127.0.0.1:{_find_free_port()}"
    with tempfile.TemporaryDirectory(prefix="d2ft_errors_") as folder:
        os.environ[ERROR_DIR_ENV] = folder
        spawn_log = logging.getLogger("torch.multiprocessing.spawn")
        spawn_level = spawn_log.level
        spawn_log.setLevel(logging.ERROR)  # "Terminating process ..." for each ended worker
        try:
            context = mp.start_processes(
                _distributed_worker,
                nprocs=args.num_gpus,
                args=(
                    main,
                    world_size,
                    args.num_gpus,
                    args.machine_rank,
                    dist_url,
                    (args,),
                    timeout,
                ),
                daemon=False,
                join=False,
            )
            while not context.join(grace_period=GRACE_SECONDS):
                pass
        except ProcessException as failure:
            message = _first_report(folder)
            if message is None:
                raise
            raise WorkerError(message) from failure
        finally:
            os.environ.pop(ERROR_DIR_ENV, None)
            spawn_log.setLevel(spawn_level)


def report_in_launcher(message):
    """In a worker started by :func:`launch`: leave ``message`` for the launching process to
    print, and return True; elsewhere (one process, or another launcher) return False."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if not folder or comm.get_world_size() == 1 or not os.path.isdir(folder):
        return False
    path = os.path.join(folder, f"rank{comm.get_rank()}.txt")
    with open(path + ".tmp", "w", encoding="utf-8") as f:
        f.write(message)
    os.replace(path + ".tmp", path)
    return True


def _first_report(folder):
    reports = glob.glob(os.path.join(folder, "rank*.txt"))
    if not reports:
        return None
    first = min(reports, key=lambda p: int(os.path.basename(p)[4:-4]))
    with open(first, encoding="utf-8") as f:
        return f.read()
