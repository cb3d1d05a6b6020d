"""What each task of a SLURM job runs: ``scripts/train_net.py`` in its own process, requeued
with ``--resume`` after a stop on the signal (:mod:`.preemption`) or a restart by SLURM."""

import os
import runpy
import sys

from . import preemption

__all__ = ["TrainJob", "task_argv", "with_resume"]


try:  # submitit is a dependency; without it, plans and dry runs still work
    from submitit.helpers import Checkpointable as _Checkpointable
except ImportError:  # pragma: no cover
    _Checkpointable = object


class TrainJob(_Checkpointable):
    """The function each task of a job runs: ``scripts/train_net.py`` with ``argv``, in this
    process, which joins the job's other tasks. After a stop on the signal, the first task
    requeues the job with ``--resume`` (:meth:`checkpoint` gives submitit that submission)."""

    def __init__(self, script, argv):
        self.script = script
        self.argv = list(argv)

    def __call__(self):
        import submitit
        from submitit.core.job_environment import SignalHandler
        from submitit.core.utils import DelayedSubmission

        # The signal now only sets a flag: every process stops at the same iteration.
        # (submitit's own handler would requeue from wherever the first task is.)
        preemption.install_handler()
        env = submitit.JobEnvironment()
        # Started now, it tells a signal at the time limit from a preemption.
        requeue = SignalHandler(env, env.paths, DelayedSubmission.load(env.paths.submitted_pickle))
        argv = task_argv(self.argv)
        saved = sys.argv
        sys.argv = [self.script, *argv]
        try:
            runpy.run_path(self.script, run_name="__main__")
        finally:
            sys.argv = saved
        stopped = preemption.stopped_at()
        if stopped is None:
            return None
        if env.global_rank != 0:
            print(
                f"Stopped after iteration {stopped} on the signal; the first task requeues "
                "the job.",
                flush=True,
            )
            sys.exit(0)
        print(
            f"Stopped after iteration {stopped} on the signal: requeueing the job with --resume.",
            flush=True,
        )
        requeue.checkpoint_and_try_requeue(preemption.stop_signal())
        return None

    def checkpoint(self, *args, **kwargs):
        """The submission that continues this job: the same command with ``--resume``."""
        from submitit.core.utils import DelayedSubmission

        return DelayedSubmission(TrainJob(self.script, with_resume(self.argv)))


def task_argv(argv, environ=None):
    """The command line a task runs: ``argv``, with ``--resume`` when SLURM restarted the job
    (``$SLURM_RESTART_COUNT`` > 0: a node failure, a preemption without the signal), which then
    continues from its last complete checkpoint."""
    env = os.environ if environ is None else environ
    try:
        restarts = int(env.get("SLURM_RESTART_COUNT") or 0)
    except ValueError:
        restarts = 0
    return with_resume(argv) if restarts > 0 else list(argv)


def with_resume(argv):
    """``argv`` of scripts/train_net.py with ``--resume`` (before the overrides)."""
    return list(argv) if "--resume" in argv else ["--resume", *argv]
