"""Training as a SLURM job (submitit): one task per GPU, requeued on preemption and time limits.

:func:`plan_submission` turns ``scripts/submit.py``'s options and the config into what would be
submitted -- sbatch parameters and the ``scripts/train_net.py`` command each task runs --
checking everything it can first, so bad input is refused before anything is submitted or
written. :func:`submit` hands it to submitit, which writes the job's submission and the logs of
each task to ``<train.output_dir>/submitit/<job id>_<task>_log.{out,err}``; the job ids are
appended to ``<train.output_dir>/submitit/jobs.txt``.

Each task runs ``scripts/train_net.py`` in its own process (:class:`.job.TrainJob`), which joins the
job's other tasks (:func:`.processes.processes_from_env`: rank from SLURM, the rendezvous at the
first node). SLURM signals the job ``--signal-delay-s`` seconds before its time limit (SIGUSR2,
``#SBATCH --signal``), and on preemption where the cluster sends it
(``SlurmctldParameters=preempt_send_user_signal``): every process stops after the same iteration
and saves a complete checkpoint (:mod:`.preemption`), then the first task rewrites the job's
submission with ``--resume`` and requeues it (``scontrol requeue``, through submitit). A job
that SLURM itself restarts (a node failure, a preemption without the signal) resumes from the
last complete checkpoint: ``$SLURM_RESTART_COUNT`` > 0 adds ``--resume``.
"""

import argparse
import datetime
import os
import shlex
import sys

import torch

from ..config import load_config
from ..errors import ConfigError, UserError
from . import preemption
from .checks import (
    check_config,
    check_init_checkpoint,
    check_output_dir,
    check_shared_output_dir,
)
from .job import TrainJob

__all__ = [
    "Plan",
    "describe",
    "plan_submission",
    "submit",
    "submit_argument_parser",
]

SUBMITIT_FOLDER = "submitit"
DEFAULT_SIGNAL_DELAY_S = 120
DEFAULT_MAX_TIMEOUTS = 10


def submit_argument_parser(description=None):
    parser = argparse.ArgumentParser(
        description=description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config-file", default="", metavar="FILE", help="path to the config")
    where = parser.add_argument_group("where and how long (sbatch)")
    where.add_argument("--partition", help="SLURM partition (sinfo lists them); required")
    where.add_argument("--nodes", type=int, help="machines; required")
    where.add_argument(
        "--gpus-per-node",
        type=int,
        help="GPUs per machine, one training process each; 0 for a CPU run",
    )
    where.add_argument(
        "--tasks-per-node",
        type=int,
        help="processes per machine of a CPU run (train.device=cpu); default 1",
    )
    where.add_argument("--timeout-min", type=int, help="time limit in minutes; required")
    where.add_argument(
        "--cpus-per-task",
        type=int,
        help="CPU cores per process (data loading workers); default SLURM's",
    )
    where.add_argument("--mem-gb", type=float, help="memory per machine, GB")
    where.add_argument("--account", help="SLURM account to charge")
    where.add_argument("--qos", help="SLURM quality of service")
    where.add_argument("--constraint", help="SLURM node features, e.g. a100")
    where.add_argument("--job-name", help="default: d2ft_<config name>")
    where.add_argument(
        "--setup",
        action="append",
        default=[],
        metavar="COMMAND",
        help="shell command run before the tasks start (module load ...); repeatable",
    )
    where.add_argument(
        "--signal-delay-s",
        type=int,
        default=DEFAULT_SIGNAL_DELAY_S,
        help="seconds before the time limit at which the job saves and requeues "
        "itself; room for an iteration, an evaluation and a checkpoint",
    )
    where.add_argument(
        "--max-timeouts",
        type=int,
        default=DEFAULT_MAX_TIMEOUTS,
        help="how many times the job requeues itself at its time limit (preemptions do not count)",
    )
    where.add_argument(
        "--cluster",
        choices=["slurm", "local"],
        default="slurm",
        help="local: run the job on this machine through submitit's local "
        "executor (no SLURM), e.g. to try a submission",
    )
    where.add_argument(
        "--output-is-shared",
        action="store_true",
        help="train.output_dir looks local to this machine (/tmp, tmpfs) but the "
        "job's nodes share it (a SLURM cluster of this one machine)",
    )
    run = parser.add_argument_group("the run")
    run.add_argument(
        "--resume", action="store_true", help="continue from last_checkpoint in train.output_dir"
    )
    run.add_argument("--eval-only", action="store_true", help="evaluate train.init_checkpoint")
    run.add_argument("--debug", action="store_true", help="show full tracebacks")
    run.add_argument(
        "--dry-run", action="store_true", help="print what would be submitted, and submit nothing"
    )
    run.add_argument(
        "--wait", action="store_true", help="wait for the job to end and report how it ended"
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, default=[], help="config overrides, dotted.key=value"
    )
    return parser


class Plan:
    """What :func:`submit` submits: ``parameters`` for submitit's executor of ``cluster``
    (SLURM's sbatch names), and the ``scripts/train_net.py`` command line each task runs."""

    def __init__(
        self,
        cluster,
        folder,
        parameters,
        script,
        argv,
        output_dir,
        world_size,
        max_timeouts,
        notes=(),
    ):
        self.cluster = cluster
        self.folder = folder  # submitit's: submissions and logs, named by job id
        self.parameters = parameters
        self.script = script
        self.argv = argv
        self.output_dir = output_dir
        self.world_size = world_size
        self.max_timeouts = max_timeouts
        self.notes = list(notes)

    @property
    def task_command(self):
        return shlex.join([sys.executable, self.script, *self.argv])


def _positive(value, option, allow_zero=False):
    if value is not None and (value < 0 or (value == 0 and not allow_zero)):
        raise ConfigError(
            f"{option} must be {'0 or more' if allow_zero else 'at least 1'}, got {value}."
        )


def plan_submission(args, script):
    """Check the options and the config and return the :class:`Plan`; writes nothing.

    Raises:
        ConfigError: a partition, node count or time limit missing, GPUs asked for a CPU-only
            run (or none for a GPU run), a config the job would refuse, an output folder the
            job's nodes cannot write.
    """
    if not args.config_file:
        raise ConfigError(
            "No config file given: pass --config-file, e.g. configs/cityscapes_ft.py."
        )
    slurm = args.cluster == "slurm"
    for option in ("--partition", "--nodes", "--timeout-min"):
        if slurm and getattr(args, option[2:].replace("-", "_")) is None:
            raise ConfigError(f"{option} is missing: {_MISSING[option]}")
    for option in (
        "--nodes",
        "--tasks-per-node",
        "--timeout-min",
        "--cpus-per-task",
        "--signal-delay-s",
    ):
        _positive(getattr(args, option[2:].replace("-", "_")), option)
    _positive(args.gpus_per_node, "--gpus-per-node", allow_zero=True)
    _positive(args.max_timeouts, "--max-timeouts", allow_zero=True)
    nodes = args.nodes or 1
    if not slurm and nodes != 1:
        raise ConfigError(
            f"--cluster local runs on this machine only: --nodes {nodes} needs a SLURM cluster."
        )
    timeout_min = args.timeout_min or 60
    if args.signal_delay_s >= timeout_min * 60:
        raise ConfigError(
            f"--signal-delay-s {args.signal_delay_s} is not shorter than the time limit "
            f"(--timeout-min {timeout_min}): the job would be signalled before it starts."
        )

    overrides = [o for o in args.opts if not o.startswith("train.output_dir=")]
    cfg = load_config(args.config_file, args.opts)
    device = str(cfg.train.get("device", "auto"))
    tasks = _tasks_per_node(args, device, slurm)
    world_size = nodes * tasks
    check_config(cfg, world_size=world_size)
    check_init_checkpoint(cfg, resume=args.resume)
    output_dir = os.path.abspath(os.path.expanduser(cfg.train.output_dir))
    if slurm and not args.output_is_shared:
        check_shared_output_dir(output_dir)
    check_output_dir(output_dir, create=False)

    argv = ["--config-file", os.path.abspath(args.config_file)]
    argv += [
        flag
        for flag, on in (
            ("--resume", args.resume),
            ("--eval-only", args.eval_only),
            ("--debug", args.debug),
        )
        if on
    ]
    argv += [*overrides, f"train.output_dir={output_dir}"]

    name = args.job_name or "d2ft_" + os.path.splitext(os.path.basename(args.config_file))[0]
    folder = os.path.join(output_dir, SUBMITIT_FOLDER)
    notes = []
    if slurm:
        parameters = {
            "job_name": name,
            "partition": args.partition,
            "nodes": nodes,
            "ntasks_per_node": tasks,
            "time": timeout_min,
            "signal_delay_s": args.signal_delay_s,
            # A task that fails ends the others at once, instead of leaving them
            # waiting for it in a collective.
            "srun_args": ["--kill-on-bad-exit=1"],
            # Requeueing (by the job itself, or by SLURM after a node failure or a
            # preemption) needs it where the cluster's default is not to requeue.
            "additional_parameters": {"requeue": True},
        }
        if args.gpus_per_node:
            parameters["gpus_per_node"] = args.gpus_per_node
        optional = {
            "account": args.account,
            "qos": args.qos,
            "constraint": args.constraint,
            "cpus_per_task": args.cpus_per_task,
            "mem": None if args.mem_gb is None else _memory(args.mem_gb),
            "setup": args.setup or None,
        }
        parameters.update({k: v for k, v in optional.items() if v is not None})
        if args.cpus_per_task is None:
            notes.append(
                "--cpus-per-task not given: each task gets SLURM's default CPUs "
                "(often 1), which starves data loading; give the node's cores per GPU."
            )
    else:
        parameters = {
            "tasks_per_node": tasks,
            "timeout_min": timeout_min,
            "signal_delay_s": args.signal_delay_s,
        }
        if args.gpus_per_node:
            parameters["gpus_per_node"] = args.gpus_per_node
        if args.setup:
            parameters["setup"] = args.setup
    return Plan(
        args.cluster,
        folder,
        parameters,
        os.path.abspath(script),
        argv,
        output_dir,
        world_size,
        args.max_timeouts,
        notes,
    )


_MISSING = {
    "--partition": "the SLURM partition to run on (sinfo lists them).",
    "--nodes": "how many machines the job runs on (1 for the GPUs of one machine).",
    "--timeout-min": "the job's time limit in minutes, within the partition's (sinfo shows it); "
    "a job that reaches it saves a checkpoint and requeues itself.",
}


def _memory(gb):
    return f"{int(gb)}GB" if gb == int(gb) else f"{int(gb * 1024)}MB"


def _tasks_per_node(args, device, slurm):
    """Processes per machine: one per GPU; ``--tasks-per-node`` for a CPU run."""
    gpus = args.gpus_per_node
    if device == "cpu":
        if gpus:
            raise ConfigError(
                f"--gpus-per-node {gpus} asks for GPUs, but train.device=cpu runs on the CPU: "
                "drop --gpus-per-node (CPU processes: --tasks-per-node), or set "
                "train.device=auto to train on the GPUs."
            )
        return args.tasks_per_node or 1
    if not gpus:
        raise ConfigError(
            f"No GPUs asked for a run on train.device={device}: pass --gpus-per-node G (one "
            "process per GPU), or set train.device=cpu for a CPU-only run."
        )
    if args.tasks_per_node not in (None, gpus):
        raise ConfigError(
            f"--tasks-per-node {args.tasks_per_node} with --gpus-per-node {gpus}: a GPU run has "
            "one process per GPU; drop --tasks-per-node."
        )
    if not slurm and gpus > torch.cuda.device_count():
        raise ConfigError(
            f"--gpus-per-node {gpus} but this machine has "
            f"{torch.cuda.device_count()} GPU(s) (--cluster local)."
        )
    return gpus


def describe(plan, sbatch=False):
    """What the plan submits, for people: the parameters, optionally the sbatch script
    submitit would write, and the command each task runs."""
    where = "SLURM" if plan.cluster == "slurm" else "this machine (submitit's local executor)"
    lines = [
        f"Job for {where}: {plan.world_size} training process(es)",
        "parameters: " + " ".join(f"{k}={_show(v)}" for k, v in plan.parameters.items()),
        f"files and logs: {plan.folder}/<job id>_<task>_log.{{out,err}}",
    ]
    if sbatch and plan.cluster == "slurm":
        lines += ["sbatch script:", *("  " + line for line in _sbatch_text(plan).splitlines())]
    lines += [
        "each task runs (rank from SLURM, rendezvous at the first node):"
        if plan.cluster == "slurm"
        else "each task runs:",
        "  " + plan.task_command,
    ]
    lines += [
        f"on {preemption.stop_signal().name} ({plan.parameters['signal_delay_s']} s "
        "before the time limit, or a preemption) the job saves a complete checkpoint and "
        f"requeues itself with --resume (at most {plan.max_timeouts} times at a time "
        "limit)."
    ]
    lines += [f"note: {n}" for n in plan.notes]
    return "\n".join(lines)


def _show(value):
    if isinstance(value, dict):
        return ",".join(k if v is True else f"{k}={_show(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ",".join(shlex.quote(str(v)) for v in value)
    return shlex.quote(str(value))


def _submitit_command(folder):
    return " ".join(
        [shlex.quote(sys.executable), "-u -m submitit.core._submit", shlex.quote(str(folder))]
    )


def _sbatch_text(plan):
    from submitit.slurm.slurm import _make_sbatch_string

    return _make_sbatch_string(
        command=_submitit_command(plan.folder), folder=plan.folder, **plan.parameters
    )


def submit(plan, wait=False):
    """Submit the plan through submitit; return the job. With ``wait``, wait for its end:
    a job that did not complete raises a :class:`UserError` with the first ``ERROR:`` line of
    its tasks' logs, or the path of its logs."""
    import submitit

    if plan.cluster == "slurm":
        try:
            executor = submitit.SlurmExecutor(folder=plan.folder, max_num_timeout=plan.max_timeouts)
        except RuntimeError as e:
            raise ConfigError(
                f"Cannot submit to SLURM from this machine ({e}): run scripts/submit.py on a "
                "login node of the cluster, or pass --cluster local to run the job here."
            ) from None
    else:
        executor = submitit.LocalExecutor(folder=plan.folder, max_num_timeout=plan.max_timeouts)
    os.makedirs(plan.folder, exist_ok=True)
    executor.update_parameters(**plan.parameters)
    job_fn = TrainJob(plan.script, plan.argv)
    saved = os.environ.get("MASTER_PORT")
    if plan.cluster == "local" and saved is None:
        from detectron2.engine.launch import _find_free_port

        os.environ["MASTER_PORT"] = str(_find_free_port())  # inherited by the local tasks
    try:
        job = executor.submit(job_fn)
    finally:
        if saved is None:
            os.environ.pop("MASTER_PORT", None)
    record = os.path.join(plan.folder, "jobs.txt")
    with open(record, "a", encoding="utf-8") as f:
        f.write(
            f"{job.job_id}\t{datetime.datetime.now().isoformat(timespec='seconds')}\t"
            f"{plan.cluster}\t{plan.task_command}\n"
        )
    logs = os.path.join(plan.folder, f"{job.job_id}_<task>_log.{{out,err}}")
    print(
        f"Submitted job {job.job_id}: {plan.world_size} process(es); logs in {logs}; job ids "
        f"in {record}",
        flush=True,
    )
    for note in plan.notes:
        print(f"note: {note}", flush=True)
    if wait:
        _wait(job, logs)
    return job


def _wait(job, logs):
    job.wait()
    tasks = [job.task(t) for t in range(job.num_tasks)]
    if not all(task.paths.result_pickle.exists() for task in tasks):
        line = _first_error_line(job)  # a task stopped on bad input, without a result
        if line:
            raise UserError(line)
    try:
        job.results()  # waits a while for results a shared file system shows late
    except Exception as e:
        raise UserError(
            _first_error_line(job)
            or f"Job {job.job_id} ended without completing ({type(e).__name__}); its logs: {logs}"
        ) from None
    print(f"Job {job.job_id} completed.", flush=True)


def _first_error_line(job):
    for task in range(job.num_tasks):
        paths = job.task(task).paths
        for path in (paths.stderr, paths.stdout):
            try:
                with open(path, encoding="utf-8", errors="replace") as f:
                    for line in f:
                        if line.startswith("ERROR: "):
                            return line[len("ERROR: ") :].rstrip("\n")
            except OSError:
                continue
    return None
