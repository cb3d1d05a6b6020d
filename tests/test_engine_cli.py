import argparse

import pytest
import torch

from d2_finetune.engine import FinetuneTrainer, setup


@pytest.fixture
def restore_sharing_strategy():
    before = torch.multiprocessing.get_sharing_strategy()
    yield
    torch.multiprocessing.set_sharing_strategy(before)


def _first_batch(cfg):
    return next(iter(FinetuneTrainer.build_train_loader(cfg)))


def test_setup_sets_how_loader_workers_share_tensors(tiny_cfg, tmp_path, restore_sharing_strategy):
    args = argparse.Namespace(config_file="", eval_only=False, num_gpus=1, opts=[])
    batches = {}
    for strategy in ("file_descriptor", "file_system"):
        cfg = tiny_cfg(
            output_dir=str(tmp_path / strategy),
            **{"train.tensor_sharing": strategy, "dataloader.train.num_workers": 1},
        )
        setup(cfg, args)
        assert torch.multiprocessing.get_sharing_strategy() == strategy
        batches[strategy] = _first_batch(cfg)
    # The same samples arrive either way.
    for a, b in zip(batches["file_descriptor"], batches["file_system"], strict=True):
        assert a["file_name"] == b["file_name"]
        assert torch.equal(a["image"], b["image"])
        assert torch.equal(a["instances"].gt_boxes.tensor, b["instances"].gt_boxes.tensor)
        assert torch.equal(a["instances"].gt_masks.data, b["instances"].gt_masks.data)
