"""engine.resolve: one step settles what depends on the machine and the data."""

import os

import pytest
import torch
from omegaconf import OmegaConf

from detectron2.config import instantiate
from detectron2.data import MetadataCatalog

from d2_finetune.config import load_config
from d2_finetune.engine.checks import check_config
from d2_finetune.engine.resolve import (
    default_num_workers,
    prepare_config,
    resolve_config,
    resolve_num_classes,
)
from d2_finetune.errors import ConfigError

from conftest import DEMO_CONFIG, REPO, tiny_overrides

RECIPE = os.path.join(REPO, "configs", "cityscapes_ft.py")


def _cfg(num_classes, names):
    return OmegaConf.create(
        {
            "model": {"roi_heads": {"num_classes": num_classes}},
            "dataloader": {"train": {"dataset": {"names": names}}},
        }
    )


def test_the_class_count_is_read_from_the_training_datasets_and_must_match_them():
    MetadataCatalog.get("test_ncls_a").set(thing_classes=["a", "b", "c"])
    MetadataCatalog.get("test_ncls_b").set(thing_classes=["x", "y", "z"])
    MetadataCatalog.get("test_ncls_c").set(thing_classes=["x", "y"])
    cfg = _cfg(None, ["test_ncls_a", "test_ncls_b"])
    assert resolve_num_classes(cfg) == 3 and cfg.model.roi_heads.num_classes == 3
    assert resolve_num_classes(_cfg(3, "test_ncls_a")) == 3
    with pytest.raises(
        ConfigError, match=r"different numbers of classes test_ncls_a: 3, test_ncls_c: 2"
    ):
        resolve_num_classes(_cfg(None, ["test_ncls_a", "test_ncls_c"]))
    with pytest.raises(
        ConfigError,
        match=r"class count of the training dataset 'test_ncls_unregistered', "
        r"which has no thing_classes: register it first",
    ):
        resolve_num_classes(_cfg(None, "test_ncls_unregistered"))
    with pytest.raises(
        ConfigError, match=r"names no registered dataset; set model\.roi_heads\.num_classes"
    ):
        resolve_num_classes(_cfg(None, None))
    # One rule, one severity: the same error as the checkpointer's (test_checkpoint_classes.py).
    with pytest.raises(
        ConfigError,
        match=r"^The training data \(test_ncls_a\) has 3 classes \['a', 'b', "
        r"'c'\] but the model predicts 5: set "
        r"model\.roi_heads\.num_classes=3\.$",
    ):
        resolve_num_classes(_cfg(5, "test_ncls_a"))


def test_resolution_settles_device_workers_pin_memory_and_the_schedule(cityscapes_root, tmp_path):
    cfg = load_config(
        DEMO_CONFIG,
        tiny_overrides(
            cityscapes_root,
            str(tmp_path),
            **{
                "train.device": "auto",
                "dataloader.train.num_workers": "auto",
                "dataloader.test.num_workers": "auto",
                "train.epochs": 2,
                "train.step_epochs": [1],
                "train.repeat": 1,
                "train.max_iter": "null",
                "lr_multiplier.steps": [],
                "train.eval_period": "1 epoch",
                "train.checkpointer.period": "2 epochs",
                "train.val_loss_period": "0.5 epochs",
            },
        ),
    )
    check_config(cfg)
    assert cfg.dataloader.train.pin_memory is True
    resolve_config(cfg)
    assert cfg.train.device == ("cuda" if torch.cuda.is_available() else "cpu")
    assert (
        cfg.dataloader.train.num_workers == cfg.dataloader.test.num_workers == default_num_workers()
    )
    assert cfg.dataloader.train.pin_memory is torch.cuda.is_available()
    # 6 training images at batch 2: 3 iterations per epoch.
    assert (cfg.train.max_iter, list(cfg.lr_multiplier.steps)) == (6, [3])
    assert (cfg.train.eval_period, cfg.train.checkpointer.period, cfg.train.val_loss_period) == (
        3,
        6,
        2,
    )
    assert cfg.model.roi_heads.num_classes == 8


def test_a_length_given_with_epochs_keeps_the_steps_in_place(cityscapes_root, tmp_path):
    """train.max_iter on an epoch schedule (e.g. a short trial of the recipe) sets the length;
    the LR steps stay at the same fraction of it."""
    cfg = prepare_config(
        DEMO_CONFIG,
        tiny_overrides(
            cityscapes_root,
            str(tmp_path),
            **{
                "train.epochs": 8,
                "train.step_epochs": [7],
                "train.max_iter": 40,
                "lr_multiplier.steps": [],
            },
        ),
    )
    assert (cfg.train.max_iter, list(cfg.lr_multiplier.steps)) == (40, [35])


@pytest.mark.parametrize(
    "overrides,message",
    [
        (
            ["train.epochs=null", "train.max_iter=null"],
            r"The config states no schedule: set train\.epochs \(with train\.step_epochs\) or "
            r"train\.max_iter \(with lr_multiplier\.steps\)\.",
        ),
        (
            ["lr_multiplier.steps=[100]"],
            r"lr_multiplier\.steps=\[100\] with train\.epochs=8: with a schedule in epochs give "
            r"the steps in epochs, as train\.step_epochs \(or set train\.epochs=null to count "
            r"iterations\)\.",
        ),
        (["train.eval_period=-1 epochs"], r"train\.eval_period must be a non-negative integer"),
        (
            ["train.checkpointer.period=0 epochs"],
            r"train\.checkpointer\.period must be a positive number of epochs, got '0 epochs'",
        ),
        (["optimizer.reference_batch=0"], r"optimizer\.reference_batch must be a positive integer"),
    ],
)
def test_schedules_that_cannot_be_are_refused(overrides, message):
    with pytest.raises(ConfigError, match=message):
        check_config(load_config(RECIPE, overrides))


def test_an_epoch_period_where_an_iteration_count_is_expected_is_refused():
    with pytest.raises(
        ConfigError, match=r"train\.log_period must be an integer \(it is 20\), got '2 epochs'"
    ):
        load_config(RECIPE, ["train.log_period=2 epochs"])


def test_the_recipe_resolves_to_the_tutorials_iterations():
    """configs/cityscapes_ft.py states the tutorial's schedule in epochs; on Cityscapes' 2,975
    training images it is 23,800 iterations, the step at 20,825, evaluation every 2,975."""
    from d2_finetune.solver import resolve_schedule

    cfg = load_config(RECIPE)
    rows = dict(resolve_schedule(cfg, dataset_size=2975))
    assert cfg.train.max_iter == 23800 and list(cfg.lr_multiplier.steps) == [20825]
    assert cfg.train.eval_period == cfg.train.checkpointer.period == 2975
    assert rows["iterations per epoch"] == "ceil(2975 x 8 / 8) = 2975"


def test_the_optimizer_instantiates_outside_the_trainer():
    """optimizer.reference_batch is an argument of the optimizer's target: instantiate() works
    on a loaded config, and the LR follows the linear scaling rule."""
    model = torch.nn.Linear(2, 2)
    cfg = load_config(RECIPE, ["optimizer.reference_batch=4"])
    cfg.optimizer.params.model = model
    optimizer = instantiate(cfg.optimizer)
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 * 8 / 4)
    assert optimizer.param_groups[0]["momentum"] == 0.9
    cfg = load_config(RECIPE)
    cfg.optimizer.params.model = model
    assert instantiate(cfg.optimizer).param_groups[0]["lr"] == 0.01


def test_a_dataset_base_without_a_best_metric():
    cfg = load_config(RECIPE)
    del cfg.dataloader.best_metric
    with pytest.raises(
        ConfigError,
        match=r"^train\.best_metric\.name=\$\{dataloader\.best_metric\} "
        r"cannot be resolved \(.*\): the config's dataset base names "
        r"no dataloader\.best_metric\. Set train\.best_metric\.name",
    ):
        check_config(cfg)
    cfg.train.best_metric.name = "bbox/AP"
    check_config(cfg)


@pytest.mark.parametrize(
    "config,metric",
    [
        ("cityscapes_ft.py", "cityscapes/AP"),
        ("voc_ft.py", "voc/bbox/AP50"),
        ("kitti_ft.py", "kitti/bbox/AP_moderate"),
        ("coco_custom_ft.py", "coco/segm/AP"),
    ],
)
def test_each_dataset_base_names_the_default_best_metric(config, metric):
    assert load_config(os.path.join(REPO, "configs", config)).train.best_metric.name == metric
