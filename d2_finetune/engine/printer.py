"""The console's progress line: detectron2's CommonMetricPrinter, safe when training stops early."""

from detectron2.utils.events import CommonMetricPrinter

__all__ = ["MetricPrinter"]


class MetricPrinter(CommonMetricPrinter):
    """detectron2's console printer. Training stopped early writes twice at one iteration;
    before IterationTimer has timed 3 iterations, detectron2's own ETA estimate then divides
    by the zero iterations between the two writes."""

    def _get_eta(self, storage):
        if self._last_write is not None and self._last_write[0] == storage.iter:
            return None
        return super()._get_eta(storage)
