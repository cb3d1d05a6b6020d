"""The processes of a run started by someone else -- torchrun, SLURM, submitit -- read from
the environment, and where this process stands among them."""

import os
import zlib
from typing import NamedTuple

import torch

from detectron2.utils import comm

from ..errors import ConfigError

__all__ = [
    "Processes",
    "cores_per_process",
    "expand_hostlist",
    "gpu_of",
    "joined",
    "processes_from_env",
    "set_joined",
    "use_processes_from_env",
]

# Rendezvous ports derived from a job id, when MASTER_PORT does not give one.
PORT_RANGE = (20000, 60000)


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


_joined = None  # the Processes this one joined, once it did


def set_joined(processes):
    """Record that this process joined ``processes`` (their group is connected)."""
    global _joined
    _joined = processes


def joined():
    """The :class:`Processes` this one joined, or None when it joined none."""
    return _joined


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


def gpu_of(processes):
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
