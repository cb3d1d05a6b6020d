"""Training hooks: best checkpoint with early stopping, validation loss, plots."""

import json
import logging
import math
import os
import zlib
from collections import defaultdict

import torch

from detectron2.engine import hooks
from detectron2.engine.hooks import HookBase
from detectron2.utils import comm

from ..errors import CheckpointError
from ..fileio import atomic_write
from .distributed import decided_on_main

__all__ = ["BestCheckpointer", "ValidationLoss", "PlotWriter"]

logger = logging.getLogger(__name__)


class BestCheckpointer(hooks.BestCheckpointer):
    """detectron2's BestCheckpointer that also records the best metric in ``model_best.json``,
    survives ``--resume``, and stops training after ``patience`` evaluations without
    improvement (``patience=0``: never).

    Runs on every process, so that all save and stop together: each decision (the record read
    on resume, whether an evaluation improved, whether to stop) is taken on the main process,
    which has the evaluation results and the record, and shared with the others
    (:func:`.distributed.decided_on_main`). Only the main process writes files.
    """

    def __init__(
        self,
        eval_period,
        checkpointer,
        val_metric,
        mode="max",
        patience=0,
        file_prefix="model_best",
    ):
        super().__init__(eval_period, checkpointer, val_metric, mode, file_prefix)
        self.patience = patience
        self.evals_without_improvement = 0
        self._record = os.path.join(checkpointer.save_dir, file_prefix + ".json")

    def before_train(self):
        # A resumed run continues the record; a run from iteration 0 starts a new one.
        if self.trainer.start_iter == 0:
            return
        state = decided_on_main(self._read_record)
        if state is not None:
            self.best_metric, self.best_iter, self.evals_without_improvement = state

    def _read_record(self):
        if not os.path.isfile(self._record):
            return None
        try:
            with open(self._record) as f:
                state = json.load(f)
            if state.get("metric") != self._val_metric:
                return None
            value, iteration = state["value"], state["iteration"]
            return (
                None if value is None else float(value),
                None if iteration is None else int(iteration),
                int(state.get("evals_without_improvement", 0)),
            )
        except (ValueError, TypeError, KeyError, AttributeError) as e:
            raise CheckpointError(
                f"Cannot read the best-checkpoint record {self._record} ({type(e).__name__}: "
                f"{e}). Restore it, or delete it together with {self._file_prefix}.pth to "
                "choose the best checkpoint anew from the next evaluation."
            ) from e

    def _best_so_far(self):
        if self.best_metric is None:
            return "no valid value yet"
        return f"the best {self.best_metric:.4f} at iteration {self.best_iter}"

    def _decide(self):
        """On the main process: the latest evaluation's verdict, or None without one."""
        latest = self.trainer.storage.latest().get(self._val_metric)
        if latest is None:
            overall = self.trainer.evaluation_metrics
            if not overall:  # no evaluation has run (train.eval_after_train=False)
                return None
            self._logger.warning(
                f"Metric {self._val_metric} was not computed by the evaluators, so no best "
                "checkpoint is kept; set train.best_metric.name to one of: " + ", ".join(overall)
            )
            return None
        value, iteration = latest
        # detectron2 logs the evaluation after training at max_iter; its weights are those of
        # the last iteration, max_iter - 1, as in model_final.pth.
        iteration = min(iteration, self.trainer.max_iter - 1)
        improved = not (math.isnan(value) or math.isinf(value)) and (
            self.best_metric is None or self._compare(value, self.best_metric)
        )
        return {"value": value, "iteration": iteration, "improved": improved}

    def _best_checking(self):
        verdict = decided_on_main(self._decide)
        if verdict is None:
            return
        value, iteration = verdict["value"], verdict["iteration"]
        if verdict["improved"]:
            self.best_metric, self.best_iter = value, iteration
            self.evals_without_improvement = 0
            # Not named in last_checkpoint: --resume continues from the latest periodic
            # checkpoint, not from the best one.
            self._checkpointer.save(
                self._file_prefix,
                tag_last=False,
                iteration=iteration,
                best_metric={self._val_metric: value},
            )
            self._logger.info(
                f"New best {self._val_metric} = {value:.4f} at iteration {iteration}: "
                f"saved {self._file_prefix}.pth"
            )
        else:
            self.evals_without_improvement += 1
            self._logger.info(
                f"{self._val_metric} = {value:.4f}, not better than {self._best_so_far()} "
                f"({self.evals_without_improvement} evaluation(s) without improvement)"
            )
        if comm.is_main_process():
            record = {
                "metric": self._val_metric,
                "value": self.best_metric,
                "iteration": self.best_iter,
                "evals_without_improvement": self.evals_without_improvement,
            }
            atomic_write(self._record, lambda f: f.write(json.dumps(record).encode()))
        if self.patience and self.evals_without_improvement >= self.patience:
            self.trainer.request_stop(
                f"Early stopping at iteration {self.trainer.iter}: {self._val_metric} has not "
                f"improved for {self.evals_without_improvement} evaluations (patience "
                f"{self.patience}); {self._best_so_far()}"
                + ("." if self.best_metric is None else f", kept in {self._file_prefix}.pth.")
            )


class ValidationLoss(HookBase):
    """Every ``period`` iterations, the training losses on a fixed validation subset.

    The model runs in training mode (so it computes its losses) without gradients, one image
    at a time; the random sampling of anchors and proposals is seeded by the image (its file
    name), so values from different iterations compare, and do not depend on how the images
    are spread over processes. Losses are averaged over all images of all processes and stored
    as ``val_<loss name>`` and ``val_total_loss`` next to the training losses.
    """

    def __init__(self, period, model, data_loader, seed=0):
        self._period = period
        self._model = model
        self._loader = data_loader
        self._seed = seed

    @torch.no_grad()
    def compute(self):
        sums, count = defaultdict(float), 0
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            for batch in self._loader:
                torch.manual_seed(self._seed + zlib.crc32(batch[0]["file_name"].encode()))
                losses = self._model(batch)
                for k, v in losses.items():
                    sums[k] += float(v) * len(batch)
                count += len(batch)
        gathered = comm.all_gather((dict(sums), count))
        total = sum(c for _, c in gathered)
        if total == 0:
            return {}
        keys = sorted({k for s, _ in gathered for k in s})
        result = {"val_" + k: sum(s.get(k, 0.0) for s, _ in gathered) / total for k in keys}
        result["val_total_loss"] = sum(result.values())
        return result

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if self._period > 0 and (
            next_iter % self._period == 0 or next_iter == self.trainer.max_iter
        ):
            was_training = self._model.training
            self._model.train()
            losses = self.compute()
            self._model.train(was_training)
            if losses:
                self.trainer.storage.put_scalars(**losses, smoothing_hint=False)
                logger.info(
                    "Validation loss: " + "  ".join(f"{k}: {v:.4g}" for k, v in losses.items())
                )


class PlotWriter(HookBase):
    """PNG plots of the run in ``<output_dir>/plots/``: losses, learning rate and evaluation
    metrics over iterations, redrawn from ``metrics.json`` after each evaluation and at the end.

    Args:
        json_writer: the run's detectron2 JSONWriter; flushed first so the latest values
            (e.g. this iteration's evaluation) are in the file.
    """

    def __init__(self, json_writer, eval_period):
        self._json_writer = json_writer
        self._period = eval_period

    def after_step(self):
        next_iter = self.trainer.iter + 1
        if self._period > 0 and next_iter % self._period == 0:
            self.write()

    def after_train(self):
        self.write()

    def write(self):
        if not comm.is_main_process():
            return {}
        self._json_writer.write()
        metrics_file = self._json_writer._file_handle.name
        return plot_metrics(
            metrics_file,
            os.path.join(os.path.dirname(metrics_file), "plots"),
            self.trainer.evaluation_metrics,
        )


def _read_metrics(metrics_file):
    rows = []
    with open(metrics_file) as f:
        for line in f:
            line = line.strip()
            if line:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a line cut short by a crash
    return rows


def plot_metrics(metrics_file, plot_dir, metrics=()):
    """Draw ``losses.png``, ``lr.png`` and ``metrics.png`` (the evaluation ``metrics`` named)
    from a detectron2 ``metrics.json``: one line per logged value, one point per iteration it
    was logged at.

    Returns:
        dict: for each file written, ``{series name: (iterations, values)}`` as drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _read_metrics(metrics_file)
    series = defaultdict(list)
    for row in rows:
        for key, value in row.items():
            if key != "iteration" and isinstance(value, (int, float)):
                series[key].append((row["iteration"], value))
    os.makedirs(plot_dir, exist_ok=True)
    groups = {
        "losses.png": ("Losses", [k for k in series if "loss" in k]),
        "lr.png": ("Learning rate", [k for k in series if k == "lr"]),
        "metrics.png": ("Evaluation", [k for k in series if k in metrics]),
    }
    drawn = {}
    for name, (title, keys) in groups.items():
        if not keys:
            continue
        fig, ax = plt.subplots(figsize=(8, 4.5))
        drawn[name] = {}
        for key in sorted(keys):
            xs, ys = (list(v) for v in zip(*series[key]))
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, label=key)
            drawn[name][key] = (xs, ys)
        ax.set_xlabel("iteration")
        ax.set_title(title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.savefig(os.path.join(plot_dir, name), dpi=100, bbox_inches="tight")
        plt.close(fig)
    return drawn
