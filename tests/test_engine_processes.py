"""engine.processes: the processes torchrun, SLURM or submitit started, read from the
environment; contradicting options and environments are refused with the variable at fault."""

import os

import pytest

from d2_finetune.engine.processes import (
    PORT_RANGE,
    Processes,
    cores_per_process,
    expand_hostlist,
    processes_from_env,
    use_processes_from_env,
)
from d2_finetune.errors import ConfigError

from conftest import launch_args

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
    a = launch_args(num_gpus=1, dist_url="auto")
    assert use_processes_from_env(a) is not None
    assert (a.num_gpus, a.num_machines, a.machine_rank, a.dist_url) == (2, 2, 1, "env://")
    with pytest.raises(
        ConfigError,
        match=r"^--num-gpus 4: this process was started by torchrun, "
        r"which started 4 processes \(2 per machine on 2 "
        r"machine\(s\)\); leave --num-gpus out, the processes "
        r"come from torchrun\.$",
    ):
        use_processes_from_env(launch_args(num_gpus=4))
    with pytest.raises(
        ConfigError,
        match=r"^--dist-url tcp://h:1: this process was started by "
        r"torchrun, whose processes meet at env://",
    ):
        use_processes_from_env(launch_args(num_gpus=1, dist_url="tcp://h:1"))


def test_a_slurm_task_has_the_cores_slurm_gave_it(monkeypatch):
    """Loader workers ("auto") come from these cores: a SLURM task is one training process,
    often bound to its own --cpus-per-task cores, which are not shared by the node's tasks."""
    import importlib

    processes_module = importlib.import_module("d2_finetune.engine.processes")

    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "10")
    assert cores_per_process() == len(os.sched_getaffinity(0))  # not joined: its own cores
    monkeypatch.setattr(processes_module, "_joined", processes_from_env(SLURM))
    assert cores_per_process() == 10
