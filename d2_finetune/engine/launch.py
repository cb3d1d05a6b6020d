"""Starting a run's processes, and reporting an error once however many processes hit it.

:func:`launch` decides how the processes of a run start:

* started by someone else -- torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``,
  ``MASTER_ADDR`` ...), a SLURM step of several tasks (``srun``, or a job of
  ``scripts/submit.py``) or submitit's local executor: this process joins their group and runs
  ``main`` once (:func:`processes_from_env`);
* otherwise as detectron2's ``launch`` does: one process per GPU (or per CPU slot with gloo)
  spawned here, on each of ``--num-machines`` machines.

Either way bad input met by the processes of a run (a corrupt image, a diverged loss, an
unreadable record) is printed once, as one ``ERROR:`` line. Spawned here, each worker that
meets a :class:`UserError` writes its message to a folder the launching process created
(:func:`report_in_launcher`) and exits with status 2 without printing; when a worker fails, the
launcher gives the others a few seconds to end on their own, ends the rest, and raises the
lowest rank's reported error. Started by someone else, there is no launcher of ours: the first
process to meet the error prints it (they count reports in the process group's key-value
store), and a process that then fails only because another one stopped (a collective that
lost its peer) exits with status 1 without a traceback on the console. Errors before the
processes are connected (the config, checked alike by every process) are printed by rank 0.
Errors that are bugs keep their traceback.

The stop signal (:mod:`.preemption`) sets a flag in every process from its start; the
launching process passes it on to the workers it spawned.
"""

import glob
import logging
import os
import signal
import sys
import tempfile
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from detectron2.engine.launch import _distributed_worker, _find_free_port
from detectron2.utils import comm

from ..errors import ConfigError, UserError
from . import preemption
from .processes import gpu_of, joined, processes_from_env, set_joined

__all__ = ["WorkerError", "launch", "report_in_launcher"]

logger = logging.getLogger(__name__)

# Where a launched worker writes the message of the UserError it stopped on.
ERROR_DIR_ENV = "D2FT_ERROR_DIR"
# After the first worker fails: how long the others may take to end on their own (those that
# met the same error at the same iteration write their report and logs) before they are ended.
GRACE_SECONDS = 5
# detectron2's default: how long a collective may wait for the slowest process.
DEFAULT_TIMEOUT = timedelta(minutes=30)


# Key counting the processes that reported an error, in the store of a group started by
# someone else (torchrun, SLURM).
ERROR_COUNT_KEY = "d2ft/errors_reported"


class WorkerError(UserError):
    """A UserError met by a worker process, reported to the launching process."""


def launch(main, args, timeout=DEFAULT_TIMEOUT):
    """Run ``main(args)`` in every process of the run: in this one when it was started by
    torchrun, SLURM or submitit (see :func:`processes_from_env`), else in ``args.num_gpus``
    processes started here on each of ``args.num_machines`` machines (in this process when
    there is one in all).

    Raises:
        WorkerError: the message of the lowest rank that stopped on a UserError.
        torch.multiprocessing.spawn.ProcessException: a worker failed otherwise (a bug, a signal).
    """
    preemption.install_handler()
    processes = processes_from_env()
    if processes is not None:
        return _join(main, args, processes, timeout)
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
                _worker,
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
            stop = preemption.stop_signal()
            previous = signal.signal(stop, lambda signum, frame: _forward(context, signum))
            try:
                while not context.join(grace_period=GRACE_SECONDS):
                    pass
            finally:
                signal.signal(stop, previous)
        except ProcessException as failure:
            message = _first_report(folder)
            if message is None:
                raise
            raise WorkerError(message) from failure
        finally:
            os.environ.pop(ERROR_DIR_ENV, None)
            spawn_log.setLevel(spawn_level)


def _worker(local_rank, *args):
    """A spawned worker: the stop signal sets a flag from the start, then detectron2's worker."""
    preemption.install_handler()
    _distributed_worker(local_rank, *args)
    _leave_group()


def _leave_group():
    """Destroy this process's process groups once its work is done, while the interpreter is
    still whole. A process that exits with them alive can abort (SIGABRT, "terminate called
    without an active exception") when Gloo's threads outlive the interpreter
    (pytorch/pytorch#179291): after a successful run, the launcher would report a crash.
    Every process of the run calls it at the same point, the end of ``main``."""
    if dist.is_initialized():
        dist.destroy_process_group()


def _forward(context, signum):
    """Pass the stop signal the launching process received on to its workers."""
    for process in context.processes:
        if process.is_alive():
            try:
                os.kill(process.pid, signum)
            except ProcessLookupError:
                pass


def report_in_launcher(message):
    """Whether another process prints ``message`` for this one: in a worker spawned by
    :func:`launch`, leave it for the launching process and return True; among processes started
    by someone else (torchrun, SLURM), return True unless this process is the first to report
    an error (rank 0 before the processes are connected); in one process return False."""
    folder = os.environ.get(ERROR_DIR_ENV)
    if not folder or not os.path.isdir(folder):
        try:
            processes = processes_from_env() if joined() is None else joined()
        except ConfigError:  # the environment itself is at fault: every process says so
            return False
        return (
            processes is not None and processes.world_size > 1 and not _first_report_here(processes)
        )
    if comm.get_world_size() == 1:
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


def _join(main, args, processes, timeout):
    """Run ``main(args)`` in this process as one of ``processes``: connect to the others (gloo on
    CPUs, NCCL on GPUs, as detectron2's workers do), create detectron2's per-machine group."""
    if processes.world_size == 1:
        return main(args)
    has_gpu = torch.cuda.is_available()
    if has_gpu:
        torch.cuda.set_device(gpu_of(processes))
    try:
        dist.init_process_group(
            backend="NCCL" if has_gpu else "GLOO",
            init_method=processes.dist_url,
            world_size=processes.world_size,
            rank=processes.rank,
            timeout=timeout,
        )
    except Exception:
        logger.error(f"Process group URL: {processes.dist_url} (started by {processes.launcher})")
        raise
    set_joined(processes)
    comm.create_local_process_group(processes.local_world_size)
    comm.synchronize()
    try:
        result = main(args)
    except Exception:
        if _error_reported():
            # Most likely a collective that lost the process which stopped on that error.
            _log_only(traceback.format_exc())
            sys.exit(1)
        raise
    _leave_group()
    return result


def _store():
    return dist.distributed_c10d._get_default_store()


def _first_report_here(processes):
    """Whether this process is the first of ``processes`` to report an error."""
    if not dist.is_initialized():
        return processes.rank == 0
    try:
        return _store().add(ERROR_COUNT_KEY, 1) == 1
    except Exception:  # the store lived in rank 0, which has ended
        return processes.rank == 0


def _error_reported():
    """Whether any process of the joined group reported an error."""
    try:
        return _store().add(ERROR_COUNT_KEY, 0) > 0
    except Exception:  # the store lived in rank 0, which has ended on an error or a bug
        return joined() is not None and joined().rank != 0


def _log_only(text):
    """Append ``text`` to the run's log files, not to the console."""
    from .cli import _write_to_log_files

    _write_to_log_files(text)
