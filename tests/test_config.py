import os
import textwrap

import pytest
from omegaconf import OmegaConf

from detectron2.config import LazyConfig, instantiate

from d2_finetune.config import load_config
from d2_finetune.errors import ConfigError
from d2_finetune.solver import resolve_schedule

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEAF = os.path.join(REPO, "configs", "cityscapes_ft.py")
LEAF_MMDET = os.path.join(REPO, "configs", "cityscapes_ft_mmdet_style.py")
COCO_URL = (
    "detectron2://COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_3x/137849600/model_final_f10217.pkl"
)


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_both_inheritance_styles_resolve_to_the_same_config():
    a = load_config(LEAF)
    b = load_config(LEAF_MMDET)
    assert LazyConfig.to_py(a) == LazyConfig.to_py(b)
    assert OmegaConf.to_container(a, resolve=True) == OmegaConf.to_container(b, resolve=True)


def test_leaf_states_the_tutorial_recipe():
    cfg = load_config(LEAF)
    assert cfg.model.roi_heads.num_classes == 8
    assert cfg.train.init_checkpoint == COCO_URL
    assert cfg.optimizer.lr == 0.01
    assert cfg.optimizer.momentum == 0.9
    assert cfg.optimizer.weight_decay == 1e-4
    assert cfg.dataloader.train.total_batch_size == 8
    # 8 epochs of RepeatDataset(8), the step after epoch 7: iterations come from the data.
    assert (cfg.train.epochs, cfg.train.repeat, list(cfg.train.step_epochs)) == (8, 8, [7])
    resolve_schedule(cfg, dataset_size=2975)  # Cityscapes' train split
    assert cfg.train.max_iter == 23800
    assert list(cfg.lr_multiplier.steps) == [20825]
    assert cfg.lr_multiplier.warmup_iters == 500
    assert cfg.lr_multiplier.warmup_factor == 0.001
    assert cfg.lr_multiplier.max_iter == 23800  # interpolated from train.max_iter
    assert cfg.model.backbone.bottom_up.freeze_at == 2
    aug = cfg.dataloader.train.mapper.augmentations[0]
    assert list(aug.short_edge_length) == list(range(800, 1025, 32))
    assert aug.max_size == 2048
    assert cfg.dataloader.test.mapper.augmentations[0].short_edge_length == 1024


def test_one_num_classes_reaches_box_and_mask_heads():
    cfg = load_config(LEAF)
    model = instantiate(cfg.model)
    assert model.roi_heads.box_predictor.cls_score.out_features == 9  # 8 + background
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 8 * 4
    assert model.roi_heads.mask_head.predictor.out_channels == 8
    cfg = load_config(LEAF, ["model.roi_heads.num_classes=3"])
    model = instantiate(cfg.model)
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    assert model.roi_heads.mask_head.predictor.out_channels == 3


def test_mmdet_style_deep_merge_and_delete(tmp_path):
    write(
        tmp_path / "base_a.py",
        """
        from detectron2.config import LazyCall as L
        from torch.nn import Linear
        head = L(Linear)(in_features=4, out_features=2, bias=True)
        train = dict(max_iter=10, amp=dict(enabled=False, dtype="float16"))
    """,
    )
    write(
        tmp_path / "base_b.py",
        """
        optimizer = dict(lr=0.1, momentum=0.9)
    """,
    )
    leaf = write(
        tmp_path / "leaf.py",
        """
        _base_ = ["base_a.py", "base_b.py"]
        head = dict(out_features=5)
        train = dict(amp=dict(enabled=True), log_period=7)
        optimizer = dict(_delete_=True, lr=0.5)
    """,
    )
    cfg = load_config(leaf)
    assert instantiate(cfg.head).out_features == 5
    assert cfg.head.in_features == 4
    assert cfg.train == {
        "max_iter": 10,
        "amp": {"enabled": True, "dtype": "float16"},
        "log_period": 7,
    }
    assert dict(cfg.optimizer) == {"lr": 0.5}


def test_base_paths_are_relative_to_the_file_and_nest(tmp_path):
    (tmp_path / "sub").mkdir()
    write(tmp_path / "root.py", "train = dict(max_iter=1, seed=3)\n")
    write(tmp_path / "sub" / "mid.py", '_base_ = "../root.py"\ntrain = dict(max_iter=2)\n')
    leaf = write(tmp_path / "leaf.py", '_base_ = ["sub/mid.py"]\ntrain = dict(max_iter=3)\n')
    cfg = load_config(leaf)
    assert dict(cfg.train) == {"max_iter": 3, "seed": 3}


def test_duplicate_key_among_bases_is_an_error(tmp_path):
    write(tmp_path / "a.py", "train = dict(max_iter=1)\n")
    write(tmp_path / "b.py", "train = dict(max_iter=2)\n")
    leaf = write(tmp_path / "leaf.py", '_base_ = ["a.py", "b.py"]\n')
    with pytest.raises(ConfigError, match=r"'train' is defined by two _base_ files.*a\.py.*b\.py"):
        load_config(leaf)


def test_missing_base_file_names_the_referrer(tmp_path):
    leaf = write(tmp_path / "leaf.py", '_base_ = ["_base_/nope.py"]\n')
    with pytest.raises(ConfigError, match=r"not found: .*_base_/nope\.py \(named in .*leaf\.py\)"):
        load_config(leaf)


def test_inheritance_cycle_is_an_error(tmp_path):
    write(tmp_path / "a.py", '_base_ = "b.py"\n')
    write(tmp_path / "b.py", '_base_ = "a.py"\n')
    with pytest.raises(ConfigError, match="cycle"):
        load_config(str(tmp_path / "a.py"))


def test_misspelled_config_file_suggests_the_right_one():
    with pytest.raises(
        ConfigError, match=r"not found: .*cityscape_ft\.py.*Did you mean .*cityscapes_ft\.py"
    ):
        load_config(os.path.join(REPO, "configs", "cityscape_ft.py"))


def test_non_python_config_is_refused(tmp_path):
    path = tmp_path / "cfg.yaml"
    path.write_text("a: 1\n")
    with pytest.raises(ConfigError, match=r"must be a Python \(\.py\) LazyConfig"):
        load_config(str(path))


def test_syntax_error_names_file_and_line(tmp_path):
    bad = write(tmp_path / "bad.py", "train = dict(\n  max_iter=1,\n  oops oops\n)\n")
    with pytest.raises(ConfigError, match=r"bad\.py has a syntax error at line 3"):
        load_config(bad)


def test_runtime_error_in_config_names_file_and_line(tmp_path):
    bad = write(tmp_path / "bad.py", "x = 1\ntrain = dict(max_iter=undefined_name)\n")
    with pytest.raises(ConfigError, match=r"bad\.py, line 2 failed to load: NameError"):
        load_config(bad)


def test_unknown_argument_merged_into_a_lazycall_is_an_error(tmp_path):
    leaf = write(
        tmp_path / "leaf.py",
        """
        _base_ = ["%s"]
        model = dict(roi_heads=dict(num_clases=8))
    """
        % os.path.join(REPO, "configs", "_base_", "models", "mask_rcnn_r50_fpn.py"),
    )
    with pytest.raises(
        ConfigError, match=r"unknown key 'model\.roi_heads\.num_clases'.*Did you mean: num_classes"
    ):
        load_config(leaf)


def test_overrides_apply_with_types():
    cfg = load_config(
        LEAF,
        [
            "train.max_iter=100",
            "optimizer.lr=1",
            "lr_multiplier.steps=[50]",
            "train.output_dir=/tmp/x",
            "train.amp.enabled=true",
        ],
    )
    assert cfg.train.max_iter == 100 and cfg.lr_multiplier.max_iter == 100
    assert cfg.optimizer.lr == 1.0 and isinstance(cfg.optimizer.lr, float)
    assert list(cfg.lr_multiplier.steps) == [50]
    assert cfg.train.amp.enabled is True


@pytest.mark.parametrize(
    "override, message",
    [
        ("model.roi_heads.no_such_key=1", r"StandardROIHeads .*takes no argument 'no_such_key'"),
        ("train.max_iterr=5", r"no key 'train\.max_iterr'.*Did you mean: max_iter"),
        ("trian.max_iter=5", r"no key 'trian'.*Did you mean: train"),
        ("train.log_period=abc", r"train\.log_period must be an integer .*got 'abc'"),
        ("train.amp.enabled=3", r"train\.amp\.enabled must be true or false"),
        ("lr_multiplier.steps=5", r"lr_multiplier\.steps must be a list"),
        ("train.max_iter.x=1", r"train\.max_iter is a value, not a group"),
        ("train.max_iter", r"write it as dotted\.key=value"),
    ],
)
def test_bad_overrides_are_refused(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(LEAF, [override])


def test_keys_that_take_a_word_or_a_mapping():
    cfg = load_config(LEAF, ["train.class_map={rider:person}", "dataloader.train.num_workers=3"])
    assert dict(cfg.train.class_map) == {"rider": "person"}
    assert cfg.dataloader.train.num_workers == 3
    assert load_config(LEAF, ["train.class_map=null"]).train.class_map is None


def test_override_of_a_lazycall_parameter_not_yet_set_is_accepted():
    cfg = load_config(LEAF, ["model.roi_heads.box_predictor.cls_agnostic_bbox_reg=true"])
    model = instantiate(cfg.model)
    assert model.roi_heads.box_predictor.bbox_pred.out_features == 4


def test_voc_and_kitti_configs_do_not_load_cityscapesscripts():
    """Heavy imports wait until used: loading the VOC or KITTI config (and their evaluators'
    classes) leaves cityscapesscripts unimported. In a fresh interpreter."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from d2_finetune.config import load_config\n"
        "for name in ('voc_ft.py', 'kitti_ft.py'):\n"
        f"    load_config({os.path.join(REPO, 'configs')!r} + '/' + name)\n"
        "print(sorted(m for m in sys.modules if m.startswith('cityscapesscripts')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
