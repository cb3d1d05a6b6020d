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
import zlib
from datetime import timedelta
from typing import NamedTuple

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.multiprocessing.spawn import ProcessException

from detectron2.engine.launch import _distributed_worker, _find_free_port
from detectron2.utils import comm

from ..errors import ConfigError, UserError
from . import preemption

__all__ = [
    "Processes",
    "cores_per_process",
    "expand_hostlist",
    "launch",
    "processes_from_env",
    "report_in_launcher",
    "use_processes_from_env",
]

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
# Rendezvous ports derived from a job id, when MASTER_PORT does not give one.
PORT_RANGE = (20000, 60000)


class WorkerError(UserError):
    """A UserError met by a worker process, reported to the launching process."""


class Processes(NamedTuple):
    """The processes of a run started by someone else, and where this one stands among them."""

    launcher: str  # "torchrun", "SLURM", "submitit's local executor"
    rank: int
    world_size: int
    local_rank: int
    local_world_size: int
    machine_rank: int
    num_machines: int
    dist_url: str  # where the processes meet: "env://" (torchrun) or tcp://<first host>:<port>


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
            processes = processes_from_env() if _joined is None else _joined
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


# ---------------------------------------------------------------------------------------------
# Processes started by someone else: torchrun, SLURM, submitit

_joined = None  # the Processes this one joined, once it did


def processes_from_env(environ=None):
    """The processes this one belongs to when torchrun, SLURM or submitit started them, read from
    the environment; None when nothing started this process as one of several (then
    :func:`launch` starts the run's processes itself).

    * torchrun and launchers like it: ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``,
      and ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE`` (the processes on this machine); they meet at
      ``env://``.
    * A job of ``scripts/submit.py`` (``$SUBMITIT_EXECUTOR`` is ``slurm``), or any SLURM step of
      several tasks (``srun``): ``SLURM_PROCID``, ``SLURM_LOCALID``, ``SLURM_NODEID``, the task
      and node counts and the node list; they meet at the first node, on ``$MASTER_PORT`` or a
      port derived from the job id, the same in every task.
    * submitit's local executor: its ``SUBMITIT_LOCAL_*`` variables, on this machine.

    Raises:
        ConfigError: the variables are incomplete or contradict each other.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env or "WORLD_SIZE" in env:
        return _from_torchrun(env)
    executor = env.get("SUBMITIT_EXECUTOR")
    if executor == "local":
        return _from_submitit_local(env)
    if executor == "slurm" or _int(env, "SLURM_STEP_NUM_TASKS", 1) > 1:
        return _from_slurm(env)
    return None


def use_processes_from_env(args):
    """Fit ``args`` (``--num-gpus``, ``--num-machines``, ``--machine-rank``, ``--dist-url``) to
    the processes someone else started, refusing values that contradict them; returns those
    :class:`Processes`, or None when :func:`launch` is to start the processes itself."""
    processes = processes_from_env()
    if processes is None:
        return None
    given = {
        "--num-gpus": (args.num_gpus, 1, processes.local_world_size),
        "--num-machines": (args.num_machines, 1, processes.num_machines),
        "--machine-rank": (args.machine_rank, 0, processes.machine_rank),
    }
    for option, (value, default, actual) in given.items():
        if value not in (default, actual):
            raise ConfigError(
                f"{option} {value}: this process was started by {processes.launcher}, which "
                f"started {processes.world_size} processes ({processes.local_world_size} per "
                f"machine on {processes.num_machines} machine(s)); leave {option} out, the "
                f"processes come from {processes.launcher}."
            )
    if args.dist_url not in ("auto", processes.dist_url):
        raise ConfigError(
            f"--dist-url {args.dist_url}: this process was started by {processes.launcher}, "
            f"whose processes meet at {processes.dist_url}; leave --dist-url out."
        )
    args.num_gpus = processes.local_world_size
    args.num_machines = processes.num_machines
    args.machine_rank = processes.machine_rank
    args.dist_url = processes.dist_url
    return processes


def expand_hostlist(text):
    """SLURM's compressed host list, expanded in order: ``"gpu[01-03,07],login1"`` gives
    gpu01, gpu02, gpu03, gpu07, login1; ``"r[1-2]n[1-2]"`` gives r1n1, r1n2, r2n1, r2n2."""
    hosts, item, depth = [], "", 0
    for char in text + ",":
        if char == "," and depth == 0:
            if item:
                hosts.extend(_expand_host(item, text))
            item = ""
            continue
        depth += {"[": 1, "]": -1}.get(char, 0)
        if depth not in (0, 1):
            raise ConfigError(f"Cannot read the SLURM node list {text!r}: unbalanced brackets.")
        item += char
    if depth:
        raise ConfigError(f"Cannot read the SLURM node list {text!r}: unbalanced brackets.")
    return hosts


def _expand_host(item, text):
    names = [""]
    while item:
        if item[0] == "[":
            end = item.index("]")
            choices = []
            for part in item[1:end].split(","):
                low, _, high = part.partition("-")
                if not low.isdigit() or (high and not high.isdigit()):
                    raise ConfigError(
                        f"Cannot read the SLURM node list {text!r}: {part!r} is not "
                        "a number or a range of numbers."
                    )
                if not high:
                    choices.append(low)
                else:
                    choices += [f"{n:0{len(low)}d}" for n in range(int(low), int(high) + 1)]
            names = [name + choice for name in names for choice in choices]
            item = item[end + 1 :]
        else:
            end = item.find("[")
            end = len(item) if end < 0 else end
            names = [name + item[:end] for name in names]
            item = item[end:]
    return names


def _int(env, name, default=None):
    value = env.get(name)
    if value is None:
        if default is None:
            raise KeyError(name)
        return default
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"${name}={value!r} is not an integer.") from None


def _require(env, names, launcher, undo):
    missing = [n for n in names if n not in env]
    if missing:
        raise ConfigError(
            f"{', '.join('$' + n for n in names if n in env)} set, as {launcher} sets them, but "
            f"not {', '.join('$' + n for n in missing)}: {undo}"
        )


def _checked(processes):
    p = processes
    if not (
        0 <= p.rank < p.world_size
        and 0 <= p.local_rank < p.local_world_size
        and p.world_size == p.local_world_size * p.num_machines
        and p.rank == p.machine_rank * p.local_world_size + p.local_rank
    ):
        raise ConfigError(
            f"{p.launcher} started this process as rank {p.rank} of {p.world_size}, local rank "
            f"{p.local_rank} of {p.local_world_size} on machine {p.machine_rank} of "
            f"{p.num_machines}: training needs the same number of processes on every machine, "
            "numbered machine by machine (SLURM: --ntasks-per-node and --distribution=block)."
        )
    return p


def _from_torchrun(env):
    _require(
        env,
        ["RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"],
        "torchrun",
        "start the processes with torchrun, or unset RANK and WORLD_SIZE to let "
        "scripts/train_net.py start them (--num-gpus).",
    )
    rank, world_size = _int(env, "RANK"), _int(env, "WORLD_SIZE")
    if "LOCAL_RANK" in env:
        _require(
            env,
            ["LOCAL_RANK", "LOCAL_WORLD_SIZE"],
            "torchrun",
            "start the processes with torchrun, which sets both.",
        )
        local_rank, local_world_size = _int(env, "LOCAL_RANK"), _int(env, "LOCAL_WORLD_SIZE")
    else:  # one process per machine (e.g. a Kubernetes PyTorchJob)
        local_rank, local_world_size = 0, 1
    machine_rank = _int(env, "GROUP_RANK", rank // max(local_world_size, 1))
    return _checked(
        Processes(
            "torchrun",
            rank,
            world_size,
            local_rank,
            local_world_size,
            machine_rank,
            world_size // max(local_world_size, 1),
            "env://",
        )
    )


def _port(env, job_id):
    if "MASTER_PORT" in env:
        return _int(env, "MASTER_PORT")
    low, high = PORT_RANGE
    return low + zlib.crc32(str(job_id).encode()) % (high - low)


def _from_slurm(env):
    names = ["SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID"]
    _require(
        env,
        names + ["SLURM_JOB_ID"],
        "SLURM",
        "run the processes with srun, or through scripts/submit.py.",
    )
    tasks = _int(env, "SLURM_STEP_NUM_TASKS", _int(env, "SLURM_NTASKS", 1))
    nodes = _int(
        env, "SLURM_STEP_NUM_NODES", _int(env, "SLURM_JOB_NUM_NODES", _int(env, "SLURM_NNODES", 1))
    )
    hostlist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST")
    if not hostlist:
        raise ConfigError(
            "SLURM started this process without $SLURM_JOB_NODELIST: run it with "
            "srun, or through scripts/submit.py."
        )
    hosts = expand_hostlist(hostlist)
    if tasks % nodes:
        raise ConfigError(
            f"SLURM started {tasks} tasks on {nodes} nodes: training needs the same number of "
            "processes on every node (--ntasks-per-node, one per GPU)."
        )
    url = f"tcp://{hosts[0]}:{_port(env, env['SLURM_JOB_ID'])}"
    return _checked(
        Processes(
            "SLURM",
            _int(env, "SLURM_PROCID"),
            tasks,
            _int(env, "SLURM_LOCALID"),
            tasks // nodes,
            _int(env, "SLURM_NODEID"),
            nodes,
            url,
        )
    )


def _from_submitit_local(env):
    names = [
        "SUBMITIT_LOCAL_GLOBALID",
        "SUBMITIT_LOCAL_LOCALID",
        "SUBMITIT_LOCAL_NTASKS",
        "SUBMITIT_LOCAL_JOB_ID",
    ]
    _require(env, names, "submitit's local executor", "submit the job with scripts/submit.py.")
    tasks = _int(env, "SUBMITIT_LOCAL_NTASKS")
    url = f"tcp://127.0.0.1:{_port(env, env['SUBMITIT_LOCAL_JOB_ID'])}"
    return _checked(
        Processes(
            "submitit's local executor",
            _int(env, "SUBMITIT_LOCAL_GLOBALID"),
            tasks,
            _int(env, "SUBMITIT_LOCAL_LOCALID"),
            tasks,
            0,
            1,
            url,
        )
    )


def _join(main, args, processes, timeout):
    """Run ``main(args)`` in this process as one of ``processes``: connect to the others (gloo on
    CPUs, NCCL on GPUs, as detectron2's workers do), create detectron2's per-machine group."""
    global _joined
    if processes.world_size == 1:
        return main(args)
    has_gpu = torch.cuda.is_available()
    if has_gpu:
        torch.cuda.set_device(_gpu_of(processes))
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
    _joined = processes
    comm.create_local_process_group(processes.local_world_size)
    comm.synchronize()
    try:
        return main(args)
    except Exception:
        if _error_reported():
            # Most likely a collective that lost the process which stopped on that error.
            _log_only(traceback.format_exc())
            sys.exit(1)
        raise


def cores_per_process():
    """The CPU cores this training process may use (for its loader workers): its own in a SLURM
    task (``$SLURM_CPUS_PER_TASK``: each task is one process, often bound to its cores alone),
    else the cores it may run on shared by the training processes of its machine."""
    if _joined is not None and _joined.launcher == "SLURM":
        try:
            return max(int(os.environ["SLURM_CPUS_PER_TASK"]), 1)
        except (KeyError, ValueError):
            pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(cores // max(comm.get_local_size(), 1), 1)


def _gpu_of(processes):
    """The GPU of this process: its local rank, or the one GPU SLURM bound to its task."""
    count = torch.cuda.device_count()
    if count >= processes.local_world_size:
        return processes.local_rank
    if count == 1:
        return 0
    raise ConfigError(
        f"{processes.launcher} started {processes.local_world_size} processes on this machine, "
        f"which has {count} GPUs visible to each: one GPU per process is needed."
    )


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
        return _joined is not None and _joined.rank != 0


def _log_only(text):
    """Append ``text`` to the run's log files, not to the console."""
    from .cli import _write_to_log_files

    _write_to_log_files(text)
