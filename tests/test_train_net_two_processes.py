"""scripts/train_net.py --num-gpus 2 (gloo on the CPU): what runs during training -- evaluation,
the best checkpoint, early stopping, validation loss, plots, the NaN stop, kill -9 and --resume
-- ends as the one-process run does, with every process leaving the loop at the same iteration.

Each run is bounded in time (a process waiting on a collective fails the test); where a
two-process result must equal the one-process one, the test asserts equality.
"""

import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import (
    DEMO_CONFIG,
    REPO,
    assert_one_error_line,
    from_first_checkpoint,
    logged_sampler_seed,
    run_script,
    tiny_overrides,
)

TIMEOUT = 150  # seconds for one run; the slowest here takes about 25


def run(args, check=True):
    return run_script("train_net", args, timeout=TIMEOUT, check=check)


def two(overrides):
    return ["--config-file", DEMO_CONFIG, "--num-gpus", "2", *overrides]


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)


def metrics(out):
    with open(os.path.join(out, "metrics.json")) as f:
        return [json.loads(line) for line in f if line.strip()]


def rank1_log(out):
    with open(os.path.join(out, "log.txt.rank1")) as f:
        return f.read()


@pytest.fixture(scope="module")
def best_run(cityscapes_root, tiny_init, tmp_path_factory):
    """Two processes, 4 iterations, evaluating and measuring the validation loss after each and
    keeping the checkpoint of the lowest validation loss."""
    out = str(tmp_path_factory.mktemp("two_best") / "run")
    overrides = tiny_overrides(
        cityscapes_root,
        out,
        **{
            "train.init_checkpoint": tiny_init,
            "train.eval_period": 1,
            "train.checkpointer.period": 1,
            "train.checkpointer.max_to_keep": 10,
            "train.val_loss_period": 1,
            "train.val_loss_images": 3,
            "train.best_metric.name": "val_total_loss",
            "train.best_metric.mode": "min",
            "dataloader.test.batch_size": 1,
        },
    )
    proc = run(two(overrides))
    return out, overrides, proc


def test_best_checkpoint_is_the_lowest_validation_loss(best_run, tiny_cfg):
    """The validation loss logged by two processes equals the one-process value for each saved
    checkpoint, and the best checkpoint is the iteration where it is lowest."""
    from detectron2.utils.events import EventStorage

    from d2_finetune.checkpoint import FinetuneCheckpointer
    from d2_finetune.data.loaders import build_val_loss_loader
    from d2_finetune.engine.hooks import ValidationLoss
    from d2_finetune.modeling import build_model

    out, _, proc = best_run
    assert "World size: 2" in proc.stdout + proc.stderr
    logged = {r["iteration"]: r["val_total_loss"] for r in metrics(out) if "val_total_loss" in r}
    assert sorted(logged) == [0, 1, 2, 3]
    with open(os.path.join(out, "model_best.json")) as f:
        record = json.load(f)
    best = min(logged, key=logged.get)
    assert record["metric"] == "val_total_loss" and record["iteration"] == best
    assert record["value"] == pytest.approx(logged[best], rel=1e-9)

    cfg = tiny_cfg(**{"train.val_loss_images": 3})
    model = build_model(cfg)
    hook = ValidationLoss(1, model, build_val_loss_loader(cfg))
    single = {}
    for iteration in logged:
        FinetuneCheckpointer(model).load(os.path.join(out, f"model_{iteration:07d}.pth"))
        model.train()
        with EventStorage():
            single[iteration] = hook.compute()["val_total_loss"]
        assert single[iteration] == pytest.approx(logged[iteration], rel=1e-5), iteration
    assert min(single, key=single.get) == best
    assert len(set(round(v, 6) for v in single.values())) > 1  # training moved the loss
    at_best = weights(os.path.join(out, f"model_{best:07d}.pth"))["model"]
    kept = weights(os.path.join(out, "model_best.pth"))
    assert kept["iteration"] == best
    assert all(torch.equal(kept["model"][k], v) for k, v in at_best.items())


def test_evaluation_equals_one_process_evaluation_of_the_same_weights(best_run, tiny_cfg):
    """The last evaluation of the two-process run (of the final weights): the same predictions,
    and the same metrics, as one process evaluating model_final.pth."""
    from d2_finetune.engine import evaluate, load_for_inference

    out, _, _ = best_run
    single_out = os.path.join(os.path.dirname(out), "single_eval")
    cfg = tiny_cfg(
        output_dir=single_out,
        **{
            "train.init_checkpoint": os.path.join(out, "model_final.pth"),
            "dataloader.test.batch_size": 1,
        },
    )
    results = evaluate(cfg, load_for_inference(cfg))
    names = ("coco_instances_results.json", "cityscapes_instance_results.json")
    for name in names:
        with open(os.path.join(out, "inference", name)) as f:
            two_processes = json.load(f)
        with open(os.path.join(single_out, "inference", name)) as f:
            one_process = json.load(f)
        assert two_processes == one_process, name
    with open(os.path.join(out, "inference", names[0])) as f:
        assert len(json.load(f)) > 0  # there are predictions to compare
    last = [r for r in metrics(out) if "cityscapes/AP" in r][-1]
    assert last["cityscapes/AP"] == pytest.approx(results["cityscapes"]["AP"], abs=1e-9)
    assert last["coco/segm/AP"] == pytest.approx(results["coco/segm"]["AP"], abs=1e-9)


def test_plots_cover_every_logged_iteration(best_run):
    from d2_finetune.engine.hooks import plot_metrics

    out, _, _ = best_run
    drawn = plot_metrics(
        os.path.join(out, "metrics.json"),
        os.path.join(out, "replot"),
        ["cityscapes/AP", "coco/segm/AP"],
    )
    assert set(drawn) == {"losses.png", "lr.png", "metrics.png"}
    assert set(drawn["metrics.png"]) == {"cityscapes/AP", "coco/segm/AP"}
    assert drawn["losses.png"]["total_loss"][0] == [0, 1, 2, 3]
    assert drawn["losses.png"]["val_total_loss"][0] == [0, 1, 2, 3]
    # The evaluation after training is logged at max_iter, as detectron2 does.
    assert drawn["metrics.png"]["cityscapes/AP"][0] == [0, 1, 2, 4]
    logged = {r["iteration"]: r["total_loss"] for r in metrics(out) if "total_loss" in r}
    assert drawn["losses.png"]["total_loss"][1] == [logged[i] for i in range(4)]
    for name in drawn:  # the run's own plots, drawn by the main process during training
        assert os.path.getsize(os.path.join(out, "plots", name)) > 5000


def test_early_stopping_stops_both_processes_where_one_process_stops(
    cityscapes_root, tiny_init, tmp_path
):
    """With a learning rate too small to change a weight, every evaluation gives the same AP:
    patience 1 stops training at iteration 1, in one process and in two."""
    ends = {}
    for processes in (1, 2):
        out = str(tmp_path / f"p{processes}")
        overrides = tiny_overrides(
            cityscapes_root,
            out,
            **{
                "train.init_checkpoint": tiny_init,
                "train.eval_period": 1,
                "train.patience": 1,
                "train.max_iter": 8,
                "lr_multiplier.steps": [7],
                "optimizer.lr": 1e-20,
                "train.checkpointer.period": 100,
            },
        )
        proc = run(["--config-file", DEMO_CONFIG, "--num-gpus", str(processes), *overrides])
        message = next(line for line in proc.stdout.splitlines() if "Early stopping" in line)
        message = message.split("]: ", 1)[1]
        assert message.startswith(
            "Early stopping at iteration 1: cityscapes/AP has not improved "
            "for 1 evaluations (patience 1); the best "
        )
        if processes == 2:
            assert message in rank1_log(out)  # the second process left the loop there too
        with open(os.path.join(out, "model_best.json")) as f:
            ends[processes] = (
                json.load(f),
                weights(os.path.join(out, "model_final.pth"))["iteration"],
            )
    assert ends[1] == ends[2]
    assert ends[2][0]["iteration"] == 0 and ends[2][0]["evals_without_improvement"] == 1
    assert ends[2][1] == 1


def test_a_diverging_run_stops_both_processes_with_one_error_line(best_run, tmp_path):
    out, overrides, _ = best_run
    copy = str(tmp_path / "run")
    shutil.copytree(out, copy)
    proc = run(
        two(
            overrides
            + [
                f"train.output_dir={copy}",
                "train.max_iter=12",
                "lr_multiplier.steps=[11]",
                "optimizer.lr=1e12",
                "train.eval_period=0",
                "train.val_loss_period=0",
            ]
        ),
        check=False,
    )
    line = assert_one_error_line(proc, r"^ERROR: Training diverged at iteration (\d+) ")
    iteration = line.split("iteration ", 1)[1].split(" ", 1)[0]
    assert f"Training diverged at iteration {iteration} " in rank1_log(copy)
    with open(os.path.join(copy, "last_checkpoint")) as f:
        named = f.read().strip()
    assert named in line
    kept = weights(os.path.join(copy, named))
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_bad_input_met_by_both_processes_is_one_error_line(best_run, cityscapes_root, tmp_path):
    """A corrupt training image (docs/errors.md row 33) is met by one process or both; the user
    sees one line, not one per process, and no traceback."""
    _, overrides, _ = best_run
    root = tmp_path / "corrupt"
    shutil.copytree(cityscapes_root, root)
    for image in (root / "cityscapes" / "leftImg8bit" / "train").rglob("*.png"):
        image.write_bytes(b"\x89PNG\r\n\x1a\n" + os.urandom(64))
    proc = run(
        two(
            overrides + [f"dataloader.register.root={root}", f"train.output_dir={tmp_path / 'run'}"]
        ),
        check=False,
    )
    assert_one_error_line(
        proc, r"^ERROR: Cannot use image .*_leftImg8bit\.png: OpenCV cannot decode it"
    )


def start(args, log):
    return subprocess.Popen(
        [sys.executable, os.path.join(REPO, "scripts", "train_net.py"), *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def kill_group_when(proc, condition):
    """SIGKILL the run and its worker processes as soon as ``condition()`` holds, as a crash of
    the machine would; False if the run ended first."""
    deadline = time.time() + TIMEOUT
    while proc.poll() is None and time.time() < deadline:
        if condition():
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            return True
        time.sleep(0.001)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    return False


def test_a_killed_run_resumes_to_the_weights_of_an_uninterrupted_one(
    cityscapes_root, tiny_init, tmp_path
):
    """Two processes, the default random seed (train.seed=-1): killed with SIGKILL while writing
    a checkpoint, then --resume, the run ends with the weights of an uninterrupted run from the
    same start -- the same data order (the sampler's seed) and the same random streams of both
    processes, restored from the checkpoint."""

    def overrides(out):
        return tiny_overrides(
            cityscapes_root,
            out,
            **{
                "train.init_checkpoint": tiny_init,
                "train.seed": -1,
                "train.max_iter": 4,
                "lr_multiplier.steps": [3],
                "train.checkpointer.period": 1,
                "train.checkpointer.max_to_keep": 20,
                "train.eval_after_train": False,
            },
        )

    out = str(tmp_path / "killed")

    def writing_after_1():
        return os.path.isfile(os.path.join(out, "model_0000001.pth")) and glob.glob(
            os.path.join(out, "*.pth.*.tmp")
        )

    with open(tmp_path / "log.txt", "w") as log:
        proc = start(two(overrides(out)), log)
        assert kill_group_when(proc, writing_after_1), "the run ended before it could be killed"
    seed = logged_sampler_seed(tmp_path / "log.txt")
    resumed = run(two(["--resume", *overrides(out)]))
    assert f"Continuing the data order of sampler seed {seed} " in resumed.stdout

    # The uninterrupted run: from the first checkpoint of the same run, in a folder of its own.
    reference = from_first_checkpoint(out, tmp_path / "reference")
    straight = run(two(["--resume", *overrides(reference)]))
    assert f"Continuing the data order of sampler seed {seed} " in straight.stdout
    assert "Starting training from iteration 1" in straight.stdout

    final, expected = (
        weights(os.path.join(folder, "model_final.pth")) for folder in (out, reference)
    )
    assert final["iteration"] == expected["iteration"] == 3
    for key, value in expected["model"].items():
        assert torch.equal(final["model"][key], value), key
