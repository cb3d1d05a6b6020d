"""engine.launch: processes started as detectron2 does, or by torchrun, SLURM or submitit and
joined; an error reported once in every case. Runs of several processes are bounded in time
(their process groups killed past it) and compared by value: weights and predictions equal
those of --num-gpus 2."""

import glob
import os
import signal
import sys
import time

import pytest

from d2_finetune.engine.launch import ERROR_DIR_ENV, WorkerError, launch, report_in_launcher
from d2_finetune.errors import ConfigError, DatasetError

from conftest import (
    DEMO_CONFIG,
    REPO,
    TWO_PROCESS_ENV,
    assert_same_training,
    error_lines,
    final_weights,
    launch_args,
    logged_iteration,
    run_command,
    start_command,
    two_process_overrides,
)


def test_auto_dist_url_on_several_machines_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"--dist-url auto picks a port on this machine and works "
        r"on one machine only: with --num-machines > 1 give the "
        r"first machine's address, e.g\. --dist-url "
        r"tcp://<first machine>:29500",
    ):
        launch(lambda a: None, launch_args(num_machines=2))


def test_one_process_runs_in_this_process():
    seen = []
    assert launch(lambda a: seen.append(os.getpid()) or "done", launch_args(num_gpus=1)) == "done"
    assert seen == [os.getpid()]


def test_outside_a_launched_run_errors_are_printed_by_the_process_itself():
    assert report_in_launcher("a message") is False


def fail_on_rank(a):
    """Worker: ranks named in ``a.failing`` stop on a DatasetError naming their rank; the others
    wait for them in a collective, as training would."""
    from detectron2.utils import comm

    from d2_finetune.engine.cli import user_errors

    with user_errors():
        if comm.get_rank() in a.failing:
            raise DatasetError(f"bad input met by rank {comm.get_rank()}")
        comm.synchronize()


@pytest.mark.parametrize("failing,expected", [((1,), 1), ((0, 1), 0)])
def test_a_worker_error_is_raised_once_by_the_launcher(failing, expected, capfd):
    """Whichever processes meet the error, the launcher raises the lowest rank's message once;
    the workers print nothing themselves."""
    a = launch_args()
    a.failing = failing
    with pytest.raises(WorkerError, match=rf"^bad input met by rank {expected}$"):
        launch(fail_on_rank, a)
    out, err = capfd.readouterr()
    assert "ERROR" not in out + err and "Traceback" not in out + err
    assert ERROR_DIR_ENV not in os.environ


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)


def note_group_at_exit(a):
    """Worker: at the interpreter's exit, write whether this process still holds a process group."""
    import atexit

    import torch.distributed as dist

    from detectron2.utils import comm

    path = os.path.join(a.folder, f"rank{comm.get_rank()}.txt")
    atexit.register(lambda: _write(path, str(dist.is_initialized())))
    comm.synchronize()


def test_workers_leave_their_process_group_before_they_exit(tmp_path):
    """After a successful run each worker has destroyed its process groups before the interpreter
    ends: left alive, Gloo's threads can abort the process at exit (pytorch/pytorch#179291), and
    the launcher would report a crash of a run that succeeded."""
    a = launch_args()
    a.folder = str(tmp_path)
    launch(note_group_at_exit, a)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == {
        "rank0.txt": "False",
        "rank1.txt": "False",
    }


# ---------------------------------------------------------------------------------------------
# Runs: --num-gpus 2, torchrun, two "machines" on one host, the stop signal

TIMEOUT = 150  # seconds for one run; each takes about 15-25 on 2 cores
TRAIN_NET = os.path.join(REPO, "scripts", "train_net.py")
ENV = TWO_PROCESS_ENV


def overrides(root, init, out):
    return two_process_overrides(root, init, out)


def torchrun(*args):
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        TRAIN_NET,
        "--config-file",
        DEMO_CONFIG,
        *args,
    ]


def test_torchrun_trains_and_evaluates_as_num_gpus_2(
    two_process_reference, cityscapes_root, tiny_init, tmp_path
):
    out = str(tmp_path / "torchrun")
    proc = run_command(torchrun(*overrides(cityscapes_root, tiny_init, out)), TIMEOUT, env=ENV)
    assert "Rank of current process: 0. World size: 2" in proc.stdout + proc.stderr
    with open(os.path.join(out, "log.txt.rank1")) as f:
        assert "Rank of current process: 1. World size: 2" in f.read()
    assert_same_training(out, two_process_reference)


def test_two_machines_on_one_host_share_no_files(
    two_process_reference, cityscapes_root, tiny_init, tmp_path
):
    """--num-machines 2, one process each, each with its own output folder and dataset cache:
    they train and evaluate as --num-gpus 2 does; only the first machine writes checkpoints
    and results."""
    from detectron2.engine.launch import _find_free_port

    url = f"tcp://127.0.0.1:{_find_free_port()}"
    procs, outs = [], []
    for machine in (0, 1):
        outs.append(str(tmp_path / f"machine{machine}"))
        env = dict(ENV, D2FT_CACHE_DIR=str(tmp_path / f"cache{machine}"))
        command = [
            sys.executable,
            TRAIN_NET,
            "--config-file",
            DEMO_CONFIG,
            "--num-machines",
            "2",
            "--machine-rank",
            str(machine),
            "--dist-url",
            url,
            *overrides(cityscapes_root, tiny_init, outs[-1]),
        ]
        procs.append(start_command(command, merge_output=True, env=env))
    try:
        logs = [p.communicate(timeout=TIMEOUT)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
    assert [p.returncode for p in procs] == [0, 0], [log[-3000:] for log in logs]
    assert_same_training(outs[0], two_process_reference)
    with open(os.path.join(outs[1], "log.txt.rank1")) as f:
        assert "Rank of current process: 1. World size: 2" in f.read()
    assert not glob.glob(os.path.join(outs[1], "*.pth")) and not os.path.exists(
        os.path.join(outs[1], "metrics.json")
    )
    for machine in (0, 1):  # each parsed the annotations into its own cache
        assert os.listdir(tmp_path / f"cache{machine}"), machine


def test_the_stop_signal_to_train_net_stops_both_workers_after_one_iteration(
    cityscapes_root, tiny_init, tmp_path
):
    """kill -USR2 <train_net.py>: the launcher passes the signal on, and both workers stop after
    the same iteration, with a checkpoint of it named in last_checkpoint. (That --resume from
    such a checkpoint ends as the uninterrupted run: test_engine_submit.py, a job requeued.)"""
    out = str(tmp_path / "stopped")
    command = [
        sys.executable,
        TRAIN_NET,
        "--config-file",
        DEMO_CONFIG,
        "--num-gpus",
        "2",
        *overrides(cityscapes_root, tiny_init, out),
    ]
    proc = start_command(command, merge_output=True, env=ENV)
    try:
        deadline = time.time() + TIMEOUT
        while proc.poll() is None and time.time() < deadline and not logged_iteration(out, 1):
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGUSR2)
        log = proc.communicate(timeout=TIMEOUT)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, log[-3000:]
    stopped = final_weights(out)["iteration"]
    assert 1 <= stopped < 5
    message = (
        f"Stopped after iteration {stopped} on SIGUSR2 (preemption or time limit): "
        "model_final.pth holds this iteration's complete state"
    )
    assert message in log
    with open(os.path.join(out, "log.txt.rank1")) as f:
        assert message in f.read()  # the second process stopped there too
    with open(os.path.join(out, "last_checkpoint")) as f:
        assert f.read().strip() == "model_final.pth"
    assert not os.path.exists(os.path.join(out, "inference"))  # no evaluation before the end
    state = final_weights(out)
    assert len(state["rng"]["ranks"]) == 2  # the random state of both processes
    assert state["sampler"]["seed"] == 0


def test_torchrun_config_error_is_one_line(cityscapes_root, tiny_init, tmp_path):
    """Met by both processes before they connect: printed by rank 0 only."""
    proc = run_command(
        torchrun(*overrides(cityscapes_root, tiny_init, str(tmp_path / "o")), "train.max_iter=-5"),
        TIMEOUT,
        check=False,
        env=ENV,
    )
    assert_torchrun_failure(proc, r"^ERROR: train\.max_iter must be a positive integer, got -5\.$")


def test_torchrun_bad_input_met_in_training_is_one_line(cityscapes_root, tiny_init, tmp_path):
    """A corrupt image met by one process or both: the first prints the line; a process that
    fails because the other left (a collective without its peer) prints no traceback."""
    import shutil

    root = tmp_path / "corrupt"
    shutil.copytree(cityscapes_root, root)
    for image in (root / "cityscapes" / "leftImg8bit" / "train").rglob("*.png"):
        image.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    proc = run_command(
        torchrun(*overrides(root, tiny_init, str(tmp_path / "o"))), TIMEOUT, check=False, env=ENV
    )
    assert_torchrun_failure(
        proc,
        r"^ERROR: Cannot use image .*_leftImg8bit\.png: OpenCV cannot "
        r"decode it",
    )


def assert_torchrun_failure(proc, pattern):
    """One ERROR line from our processes; torchrun then reports the failed process with its
    own traceback (of torchrun's code, not ours) and exits with status 1."""
    import re

    assert proc.returncode == 1, (proc.stdout[-3000:], proc.stderr[-3000:])
    lines = error_lines(proc)
    assert len(lines) == 1 and re.search(pattern, lines[0]), lines
    text = proc.stdout + proc.stderr
    assert "exitcode  : 2" in text  # torchrun's report: the process that met it exited with 2
    assert text.count("Traceback") == text.count("ChildFailedError:") == 1
    assert "d2_finetune" not in text.split("Traceback", 1)[1].split("ChildFailedError:", 1)[0]
