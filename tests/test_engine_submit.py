"""engine.submit and scripts/submit.py: a training run as a SLURM job through submitit.

Without a cluster: what would be submitted (--dry-run, and a stand-in sbatch that records the
script it gets), bad input refused before anything is submitted, and jobs of 2 tasks run end
to end by submitit's local executor: one signalled mid-training, which saves, requeues itself
and ends with the weights and predictions of the uninterrupted --num-gpus 2 run; one that meets
bad input. Every job is bounded in time, its process group killed past it.
"""

import json
import os
import pickle
import runpy
import shlex
import signal
import stat
import subprocess
import sys
import time

import pytest

from d2_finetune.engine.job import TrainJob
from d2_finetune.engine.submit import describe, plan_submission, submit, submit_argument_parser
from d2_finetune.errors import ConfigError

from conftest import (
    DEMO_CONFIG,
    REPO,
    TWO_PROCESS_ENV,
    assert_one_error_line,
    assert_same_training,
    logged_iteration,
    run_script,
    start_command,
    two_process_overrides,
)

TIMEOUT = 180  # seconds for a job; each takes about 20-40 on 2 cores
TRAIN_NET = os.path.join(REPO, "scripts", "train_net.py")
SUBMIT = os.path.join(REPO, "scripts", "submit.py")
ENV = TWO_PROCESS_ENV


def run_submit_here(argv, capsys):
    """scripts/submit.py run in this process (it only checks and prints here): its exit status
    and output, as a CompletedProcess."""
    saved, sys.argv = sys.argv, [SUBMIT, *argv]
    try:
        runpy.run_path(SUBMIT, run_name="__main__")
        status = 0
    except SystemExit as e:
        status = e.code
    finally:
        sys.argv = saved
    out, err = capsys.readouterr()
    return subprocess.CompletedProcess(argv, status, out, err)


def parse(*argv):
    return submit_argument_parser().parse_args(list(argv))


def gpu_job(out, *extra, config=DEMO_CONFIG):
    """2 nodes x 4 GPUs of a batch that 8 processes divide, on a shared-looking folder."""
    return [
        "--config-file",
        config,
        "--nodes",
        "2",
        "--gpus-per-node",
        "4",
        "--partition",
        "gpu",
        "--timeout-min",
        "90",
        "--output-is-shared",
        *extra,
        "dataloader.train.total_batch_size=8",
        "train.device=auto",
        "train.init_checkpoint=''",
        f"train.output_dir={out}",
    ]


def test_dry_run_prints_the_sbatch_script_and_the_command_of_each_task(tmp_path, capsys):
    out = tmp_path / "run"
    proc = run_submit_here(
        [
            *gpu_job(out, "--account", "proj", "--cpus-per-task", "8", "--dry-run"),
            "train.max_iter=300",
        ],
        capsys,
    )
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for line in [
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --gpus-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --time=90",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --account=proj",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --job-name=d2ft_cityscapes_demo",
        "#SBATCH --requeue",
        f"#SBATCH --output={out}/submitit/%j_0_log.out",
        "export SUBMITIT_EXECUTOR=slurm",
    ]:
        assert f"\n  {line}\n" in text, line
    srun = next(line for line in text.splitlines() if line.strip().startswith("srun "))
    assert "--kill-on-bad-exit=1" in srun
    assert srun.endswith(f"-m submitit.core._submit {out}/submitit")
    lines = text.splitlines()
    task = lines[lines.index("each task runs (rank from SLURM, rendezvous at the first node):") + 1]
    assert shlex.split(task) == [
        sys.executable,
        TRAIN_NET,
        "--config-file",
        DEMO_CONFIG,
        "dataloader.train.total_batch_size=8",
        "train.device=auto",
        "train.init_checkpoint=''",
        "train.max_iter=300",
        f"train.output_dir={out}",
    ]
    assert "note: --cpus-per-task" not in text
    assert lines[-1] == "Nothing submitted (--dry-run)."
    assert not out.exists()  # nothing written


def test_a_relative_output_dir_and_config_become_absolute_and_resume_is_passed_on(
    tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    config = os.path.relpath(DEMO_CONFIG)
    plan = plan_submission(parse(*gpu_job("rel/out", "--resume", config=config)), TRAIN_NET)
    assert plan.argv[:3] == ["--config-file", DEMO_CONFIG, "--resume"]
    assert plan.argv[-1] == f"train.output_dir={tmp_path}/rel/out"
    assert plan.folder == f"{tmp_path}/rel/out/submitit"
    assert "note: --cpus-per-task not given" in describe(plan)


def test_a_cpu_run_has_tasks_per_node_and_no_gpus(tmp_path):
    plan = plan_submission(
        parse(
            "--config-file",
            DEMO_CONFIG,
            "--nodes",
            "1",
            "--tasks-per-node",
            "2",
            "--partition",
            "cpu",
            "--timeout-min",
            "30",
            "--output-is-shared",
            "train.device=cpu",
            "train.init_checkpoint=''",
            f"train.output_dir={tmp_path}",
        ),
        TRAIN_NET,
    )
    assert plan.world_size == 2 and plan.parameters["ntasks_per_node"] == 2
    assert "gpus_per_node" not in plan.parameters


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["--nodes", "1", "--gpus-per-node", "1", "--timeout-min", "60"],
            r"^--partition is missing: the SLURM partition to run on \(sinfo lists them\)\.$",
        ),
        (
            ["--partition", "p", "--gpus-per-node", "1", "--timeout-min", "60"],
            r"^--nodes is missing: how many machines the job runs on \(1 for the GPUs of one "
            r"machine\)\.$",
        ),
        (
            ["--partition", "p", "--nodes", "1", "--gpus-per-node", "1"],
            r"^--timeout-min is missing: the job's time limit in minutes, within the partition's",
        ),
        (
            [
                "--partition",
                "p",
                "--nodes",
                "1",
                "--gpus-per-node",
                "2",
                "--timeout-min",
                "60",
                "train.device=cpu",
            ],
            r"^--gpus-per-node 2 asks for GPUs, but train\.device=cpu runs on the CPU: drop "
            r"--gpus-per-node \(CPU processes: --tasks-per-node\), or set train\.device=auto "
            r"to train "
            r"on the GPUs\.$",
        ),
        (
            ["--partition", "p", "--nodes", "1", "--timeout-min", "60", "train.device=auto"],
            r"^No GPUs asked for a run on train\.device=auto: pass --gpus-per-node G \(one "
            r"process per "
            r"GPU\), or set train\.device=cpu for a CPU-only run\.$",
        ),
        (
            [
                "--partition",
                "p",
                "--nodes",
                "1",
                "--gpus-per-node",
                "2",
                "--tasks-per-node",
                "3",
                "--timeout-min",
                "60",
                "train.device=auto",
            ],
            r"^--tasks-per-node 3 with --gpus-per-node 2: a GPU run has one process per GPU",
        ),
        (
            ["--partition", "p", "--nodes", "0", "--gpus-per-node", "2", "--timeout-min", "60"],
            r"^--nodes must be at least 1, got 0\.$",
        ),
        (
            [
                "--partition",
                "p",
                "--nodes",
                "1",
                "--gpus-per-node",
                "2",
                "--timeout-min",
                "2",
                "train.device=auto",
            ],
            r"^--signal-delay-s 120 is not shorter than the time limit \(--timeout-min 2\)",
        ),
        (
            [
                "--partition",
                "p",
                "--nodes",
                "2",
                "--gpus-per-node",
                "2",
                "--timeout-min",
                "60",
                "train.device=auto",
            ],  # the demo's batch of 2 over 4 processes
            r"^dataloader\.train\.total_batch_size=2 is not divisible by the 4 processes",
        ),
        (
            ["--cluster", "local", "--nodes", "2", "--tasks-per-node", "1", "train.device=cpu"],
            r"^--cluster local runs on this machine only: --nodes 2 needs a SLURM cluster\.$",
        ),
    ],
    ids=[
        "no partition",
        "no node count",
        "no time limit",
        "GPUs for a CPU run",
        "no GPUs for a GPU run",
        "tasks other than GPUs",
        "zero nodes",
        "signal after the limit",
        "batch not divisible",
        "local on two nodes",
    ],
)
def test_bad_options_are_refused_before_anything_is_submitted(argv, message, tmp_path):
    out = tmp_path / "run"
    with pytest.raises(ConfigError, match=message):
        plan_submission(
            parse(
                "--config-file",
                DEMO_CONFIG,
                "--output-is-shared",
                *argv,
                "train.init_checkpoint=''",
                f"train.output_dir={out}",
            ),
            TRAIN_NET,
        )
    assert not out.exists()


def test_an_output_folder_that_cannot_be_created_is_refused_before_submitting(tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    with pytest.raises(
        ConfigError,
        match=rf"^train\.output_dir={blocker}/out is not writable "
        rf"\(Not a directory: {blocker}\): choose a folder you "
        r"can write to\.$",
    ):
        plan_submission(parse(*gpu_job(blocker / "out")), TRAIN_NET)


def test_bad_input_is_one_error_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    proc = run_submit_here(
        [
            "--config-file",
            DEMO_CONFIG,
            "--nodes",
            "1",
            "--gpus-per-node",
            "1",
            "--timeout-min",
            "60",
            f"train.output_dir={out}",
        ],
        capsys,
    )
    assert_one_error_line(proc, r"^ERROR: --partition is missing: the SLURM partition to run on")
    assert not out.exists()


def test_without_slurm_on_this_machine_nothing_is_submitted(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # no srun
    plan = plan_submission(parse(*gpu_job(tmp_path / "run")), TRAIN_NET)
    with pytest.raises(
        ConfigError,
        match=r"^Cannot submit to SLURM from this machine \(Could "
        r"not detect \"srun\", are you indeed on a slurm "
        r"cluster\?\): run scripts/submit\.py on a login node "
        r"of the cluster, or pass --cluster local to run the "
        r"job here\.$",
    ):
        submit(plan)
    assert not (tmp_path / "run").exists()


def test_submission_through_sbatch(tmp_path, monkeypatch, capsys):
    """A stand-in sbatch that answers as SLURM's does: submitit hands it the script the dry run
    printed; the job id is recorded; the submission is the task's train_net.py command, and
    its requeue adds --resume."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, body in [
        ("srun", "exit 0"),
        ("sbatch", 'cp "$1" "$(dirname "$0")/script.sh"; echo "Submitted batch job 4242"'),
    ]:
        path = bin_dir / name
        path.write_text(f"#!/bin/sh\n{body}\n")
        path.chmod(path.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    out = tmp_path / "run"
    plan = plan_submission(parse(*gpu_job(out)), TRAIN_NET)
    job = submit(plan)
    assert job.job_id == "4242"
    printed = capsys.readouterr().out
    assert printed.startswith(
        f"Submitted job 4242: 8 process(es); logs in {out}/submitit/4242_<task>_log.{{out,err}}"
    )
    script = (bin_dir / "script.sh").read_text()
    shown = describe(plan, sbatch=True).split("sbatch script:\n", 1)[1].split("\neach task runs")[0]
    assert script.rstrip("\n").splitlines() == [line[2:] for line in shown.splitlines()]
    for line in [
        "#SBATCH --nodes=2",
        "#SBATCH --ntasks-per-node=4",
        "#SBATCH --partition=gpu",
        "#SBATCH --signal=USR2@120",
        "#SBATCH --time=90",
    ]:
        assert line + "\n" in script
    with open(out / "submitit" / "jobs.txt") as f:
        job_id, _, cluster, command = f.read().rstrip("\n").split("\t")
    assert (job_id, cluster, command) == ("4242", "slurm", plan.task_command)
    with open(out / "submitit" / "4242_submitted.pkl", "rb") as f:
        submission = pickle.load(f)
    assert isinstance(submission.function, TrainJob) and submission.function.argv == plan.argv
    assert submission.function.checkpoint().function.argv == ["--resume", *plan.argv]


# ---------------------------------------------------------------------------------------------
# Jobs of 2 tasks on this machine (submitit's local executor)


def local_job(root, init, out):
    """The run of conftest's two_process_reference, as a job of 2 tasks on this machine."""
    return [
        "--config-file",
        DEMO_CONFIG,
        "--cluster",
        "local",
        "--tasks-per-node",
        "2",
        "--timeout-min",
        "20",
        "--wait",
        *two_process_overrides(root, init, out),
    ]


def job_id(stdout):
    return stdout.split("Submitted job ", 1)[1].split(":", 1)[0]


def task_log(out, job, task, stream="out"):
    with open(os.path.join(out, "submitit", f"{job}_{task}_log.{stream}")) as f:
        return f.read()


def test_a_job_of_two_tasks_signalled_mid_training_ends_as_num_gpus_2(
    two_process_reference, cityscapes_root, tiny_init, tmp_path
):
    """A job of 2 tasks on this machine, SIGUSR2 to the second task only, mid-training: both
    tasks stop after the same iteration with a complete checkpoint, the first requeues the job
    with --resume, and the requeued job trains, evaluates and ends with the weights and
    predictions of the uninterrupted --num-gpus 2 run (seeded, data loaded in the processes)."""
    out = tmp_path / "signalled"
    command = [
        sys.executable,
        os.path.join(REPO, "scripts", "submit.py"),
        *local_job(cityscapes_root, tiny_init, out),
    ]
    proc = start_command(command, merge_output=True, env=ENV)
    try:
        deadline = time.time() + TIMEOUT
        task = None
        while proc.poll() is None and time.time() < deadline:
            task = task or task_process(proc.pid, rank=1)
            if task and logged_iteration(out, 1):
                os.kill(task, signal.SIGUSR2)
                break
            time.sleep(0.02)
        stdout = proc.communicate(timeout=max(deadline - time.time(), 1))[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, stdout[-3000:]
    job = job_id(stdout)
    assert stdout.rstrip().endswith(f"Job {job} completed.")
    assert "Rank of current process: 0. World size: 2" in task_log(out, job, 0)

    with open(out / "log.txt") as f:
        log = f.read()
    stopped = int(log.split("Stopped after iteration ", 1)[1].split()[0])
    assert 1 <= stopped < 5
    with open(out / "log.txt.rank1") as f:
        assert f"Stopped after iteration {stopped} on SIGUSR2" in f.read()
    first = task_log(out, job, 0, "out") + task_log(out, job, 0, "err")
    assert "Caught signal SIGUSR2" in first and "this job is preempted." in first
    assert f"Requeued job {job} (10 remaining timeouts)" in first
    assert f"Starting training from iteration {stopped + 1}" in log
    with open(out / "submitit" / f"{job}_submitted.pkl", "rb") as f:
        assert pickle.load(f).function.argv[0] == "--resume"
    with open(out / "metrics.json") as f:
        assert any("cityscapes/AP" in json.loads(line) for line in f)
    assert_same_training(out, two_process_reference)


def task_process(group, rank):
    """The pid of the job's task ``rank``: a process of the process group ``group`` that
    submitit's local executor started with that rank."""
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            if os.getpgid(int(pid)) != group:
                continue
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if f"SUBMITIT_LOCAL_GLOBALID={rank}".encode() in env:
            return int(pid)
    return None


def test_a_job_that_meets_bad_input_ends_with_its_one_error_line(
    cityscapes_root, tiny_init, tmp_path
):
    """Corrupt images, met in training by one task or both: one ERROR line in the tasks' logs
    (the first task to meet it; the other leaves without a traceback), and --wait prints it."""
    import shutil

    root = tmp_path / "corrupt"
    shutil.copytree(cityscapes_root, root)
    for image in (root / "cityscapes" / "leftImg8bit" / "train").rglob("*.png"):
        image.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    out = tmp_path / "run"
    proc = run_script(
        "submit", local_job(root, tiny_init, out), timeout=TIMEOUT, check=False, env=ENV
    )
    line = assert_one_error_line(
        proc,
        r"^ERROR: Cannot use image .*_leftImg8bit\.png: OpenCV "
        r"cannot decode it",
    )
    job = job_id(proc.stdout)
    logs = "".join(task_log(out, job, task, stream) for task in (0, 1) for stream in ("out", "err"))
    assert [x for x in logs.splitlines() if x.startswith("ERROR:")] == [line]
    assert "Traceback" not in logs
