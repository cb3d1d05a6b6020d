"""d2_finetune.checkpoint.report: the record of a load as the log shows it, a table of the
tensors and one of the class map."""

import logging

import pytest
from checkpoint_support import CITY, build, coco_checkpoints

from d2_finetune.checkpoint import FinetuneCheckpointer


@pytest.fixture(scope="module")
def coco(tmp_path_factory):
    return coco_checkpoints(tmp_path_factory)


def test_the_log_shows_the_transfer_as_tables(coco, caplog):
    log = logging.getLogger("d2_finetune.checkpoint")
    log.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="d2_finetune.checkpoint"):
            FinetuneCheckpointer(build(), target_classes=CITY).load(coco["pkl"])
    finally:
        log.removeHandler(caplog.handler)
    text = caplog.text
    assert f"Loaded {coco['pkl']} (detectron2 model-zoo pkl, sha256 " in text
    assert (
        "| roi_heads.box_predictor.cls_score.weight | (81, 256)      | (9, 256)      | "
        "transplanted 8 rows, 1 fresh  |" in text
    )
    assert f"| {len(coco['state']) - 6} other tensors" in text
    assert "| rider      | (fresh)" in text and "| motorcycle | motorcycle" in text
