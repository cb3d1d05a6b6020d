"""engine.launch: processes started as detectron2 does, or by torchrun, SLURM or submitit and
joined; an error reported once in every case. Runs of several processes are bounded in time
(their process groups killed past it) and compared by value: weights and predictions equal
those of --num-gpus 2."""

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest

from d2_finetune.engine.launch import (
    ERROR_DIR_ENV,
    PORT_RANGE,
    Processes,
    WorkerError,
    expand_hostlist,
    launch,
    processes_from_env,
    report_in_launcher,
    use_processes_from_env,
)
from d2_finetune.errors import ConfigError, DatasetError

from conftest import (
    DEMO_CONFIG,
    REPO,
    TWO_PROCESS_ENV,
    assert_same_training,
    error_lines,
    final_weights,
    run_command,
    two_process_overrides,
)


def args(num_gpus=2, num_machines=1, dist_url="auto"):
    return argparse.Namespace(
        num_gpus=num_gpus, num_machines=num_machines, machine_rank=0, dist_url=dist_url
    )


def test_auto_dist_url_on_several_machines_is_refused():
    with pytest.raises(
        ConfigError,
        match=r"--dist-url auto picks a port on this machine and works "
        r"on one machine only: with --num-machines > 1 give the "
        r"first machine's address, e.g\. --dist-url "
        r"tcp://<first machine>:29500",
    ):
        launch(lambda a: None, args(num_machines=2))


def test_one_process_runs_in_this_process():
    seen = []
    assert launch(lambda a: seen.append(os.getpid()) or "done", args(num_gpus=1)) == "done"
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
    a = args()
    a.failing = failing
    with pytest.raises(WorkerError, match=rf"^bad input met by rank {expected}$"):
        launch(fail_on_rank, a)
    out, err = capfd.readouterr()
    assert "ERROR" not in out + err and "Traceback" not in out + err
    assert ERROR_DIR_ENV not in os.environ


# ---------------------------------------------------------------------------------------------
# Processes started by someone else: the environment says who this process is

TORCHRUN = {
    "RANK": "3",
    "WORLD_SIZE": "4",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "2",
    "GROUP_RANK": "1",
    "MASTER_ADDR": "node7",
    "MASTER_PORT": "29500",
    "TORCHELASTIC_RUN_ID": "x",
}
# Task 5 of a job of 2 nodes x 4 GPUs, as SLURM describes it to the task (submitit's job).
SLURM = {
    "SUBMITIT_EXECUTOR": "slurm",
    "SLURM_JOB_ID": "4242",
    "SLURM_JOB_NODELIST": "gpu[07-08]",
    "SLURM_JOB_NUM_NODES": "2",
    "SLURM_NTASKS": "8",
    "SLURM_NODEID": "1",
    "SLURM_PROCID": "5",
    "SLURM_LOCALID": "1",
}


def test_nothing_started_this_process_so_launch_starts_them():
    assert processes_from_env({}) is None
    # A batch script or an salloc shell: SLURM variables, but no step of several tasks.
    batch_step = {**SLURM, "SUBMITIT_EXECUTOR": "", "SLURM_STEP_NUM_TASKS": "1"}
    assert processes_from_env(batch_step) is None
    assert processes_from_env({k: v for k, v in SLURM.items() if k != "SUBMITIT_EXECUTOR"}) is None


def test_torchrun_environment():
    assert processes_from_env(TORCHRUN) == Processes(
        "torchrun",
        rank=3,
        world_size=4,
        local_rank=1,
        local_world_size=2,
        machine_rank=1,
        num_machines=2,
        dist_url="env://",
    )
    # One process per machine (no LOCAL_RANK, e.g. a Kubernetes PyTorchJob).
    single = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "a", "MASTER_PORT": "1"}
    assert processes_from_env(single)[1:7] == (1, 2, 0, 1, 1, 2)


def test_slurm_environment_meets_at_the_first_node_on_a_port_from_the_job_id(monkeypatch):
    processes = processes_from_env(SLURM)
    assert processes[:7] == ("SLURM", 5, 8, 1, 4, 1, 2)
    host, port = processes.dist_url[len("tcp://") :].split(":")
    assert host == "gpu07" and PORT_RANGE[0] <= int(port) < PORT_RANGE[1]
    # The same in every task of the job, another for another job, $MASTER_PORT if set.
    assert (
        processes_from_env(
            {**SLURM, "SLURM_PROCID": "0", "SLURM_NODEID": "0", "SLURM_LOCALID": "0"}
        ).dist_url
        == processes.dist_url
    )
    assert processes_from_env({**SLURM, "SLURM_JOB_ID": "4243"}).dist_url != processes.dist_url
    assert processes_from_env({**SLURM, "MASTER_PORT": "12345"}).dist_url == "tcp://gpu07:12345"
    # srun without submitit: a step of several tasks, described by the step's variables.
    step = {k: v for k, v in SLURM.items() if k != "SUBMITIT_EXECUTOR"}
    step.update(
        SLURM_STEP_NUM_TASKS="8", SLURM_STEP_NUM_NODES="2", SLURM_STEP_NODELIST="gpu[07-08]"
    )
    assert processes_from_env(step) == processes


def test_submitit_local_environment():
    env = {
        "SUBMITIT_EXECUTOR": "local",
        "SUBMITIT_LOCAL_GLOBALID": "1",
        "SUBMITIT_LOCAL_LOCALID": "1",
        "SUBMITIT_LOCAL_NTASKS": "2",
        "SUBMITIT_LOCAL_JOB_ID": "777",
        "MASTER_PORT": "29999",
    }
    assert processes_from_env(env) == Processes(
        "submitit's local executor", 1, 2, 1, 2, 0, 1, "tcp://127.0.0.1:29999"
    )


@pytest.mark.parametrize(
    "text,hosts",
    [
        ("node1", ["node1"]),
        ("gpu[01-03,07],login1", ["gpu01", "gpu02", "gpu03", "gpu07", "login1"]),
        ("a-[9-11]-ib", ["a-9-ib", "a-10-ib", "a-11-ib"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
    ],
)
def test_slurm_host_lists_expand_in_order(text, hosts):
    assert expand_hostlist(text) == hosts


@pytest.mark.parametrize(
    "env,message",
    [
        (
            {"RANK": "0", "WORLD_SIZE": "2"},
            r"^\$RANK, \$WORLD_SIZE set, as torchrun sets them, but not \$MASTER_ADDR, "
            r"\$MASTER_PORT: "
            r"start the processes with torchrun, or unset RANK and WORLD_SIZE to let "
            r"scripts/train_net\.py start them \(--num-gpus\)\.$",
        ),
        ({**TORCHRUN, "RANK": "two"}, r"^\$RANK='two' is not an integer\.$"),
        (
            {**SLURM, "SLURM_NTASKS": "3"},
            r"^SLURM started 3 tasks on 2 nodes: training needs the same number of processes "
            r"on every "
            r"node \(--ntasks-per-node, one per GPU\)\.$",
        ),
        (
            {**SLURM, "SLURM_PROCID": "2"},  # tasks dealt out cyclically: rank 2 on the second node
            r"^SLURM started this process as rank 2 of 8, local rank 1 of 4 on machine 1 of "
            r"2: training "
            r"needs the same number of processes on every machine, numbered machine by machine "
            r"\(SLURM: --ntasks-per-node and --distribution=block\)\.$",
        ),
        (
            {**SLURM, "SLURM_JOB_NODELIST": "gpu[07-"},
            r"^Cannot read the SLURM node list 'gpu\[07-': unbalanced brackets\.$",
        ),
    ],
)
def test_an_environment_that_does_not_add_up_is_refused(env, message):
    with pytest.raises(ConfigError, match=message):
        processes_from_env(env)


def test_options_that_contradict_torchrun_are_refused(monkeypatch):
    for key, value in TORCHRUN.items():
        monkeypatch.setenv(key, value)
    a = args(num_gpus=1, dist_url="auto")
    assert use_processes_from_env(a) is not None
    assert (a.num_gpus, a.num_machines, a.machine_rank, a.dist_url) == (2, 2, 1, "env://")
    with pytest.raises(
        ConfigError,
        match=r"^--num-gpus 4: this process was started by torchrun, "
        r"which started 4 processes \(2 per machine on 2 "
        r"machine\(s\)\); leave --num-gpus out, the processes "
        r"come from torchrun\.$",
    ):
        use_processes_from_env(args(num_gpus=4))
    with pytest.raises(
        ConfigError,
        match=r"^--dist-url tcp://h:1: this process was started by "
        r"torchrun, whose processes meet at env://",
    ):
        use_processes_from_env(args(num_gpus=1, dist_url="tcp://h:1"))


def test_a_slurm_task_has_the_cores_slurm_gave_it(monkeypatch):
    """Loader workers ("auto") come from these cores: a SLURM task is one training process,
    often bound to its own --cpus-per-task cores, which are not shared by the node's tasks."""
    import importlib

    from d2_finetune.engine.launch import cores_per_process

    launch_module = importlib.import_module("d2_finetune.engine.launch")

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "10")
    assert cores_per_process() == len(os.sched_getaffinity(0))  # not joined: its own cores
    monkeypatch.setattr(launch_module, "_joined", processes_from_env(SLURM))
    assert cores_per_process() == 10


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
        procs.append(
            subprocess.Popen(
                command,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                env=env,
                start_new_session=True,
            )
        )
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
    proc = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=ENV,
        start_new_session=True,
    )
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


def logged_iteration(out, iteration):
    path = os.path.join(out, "metrics.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip().endswith("}")]
    return any(row.get("iteration", -1) >= iteration for row in rows)


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
