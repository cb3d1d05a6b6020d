from detectron2.data import DatasetCatalog, MetadataCatalog

from d2_finetune.config import load_config
from d2_finetune.data import register_cityscapes, register_datasets

from conftest import DEMO_CONFIG

ORDER = ["person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"]


def test_registration_is_idempotent_and_keeps_official_class_order(cityscapes_root):
    names = register_cityscapes(cityscapes_root)
    assert names == [
        "cityscapes_ft_instance_train",
        "cityscapes_ft_instance_val",
        "cityscapes_ft_instance_test",
    ]
    assert register_cityscapes(cityscapes_root) == names  # twice is harmless
    meta = MetadataCatalog.get("cityscapes_ft_instance_train")
    assert meta.thing_classes == ORDER
    assert meta.evaluator_type == "cityscapes_instance"
    assert meta.gt_dir.endswith("cityscapes/gtFine/train")
    assert meta.thing_colors[0] == [220, 20, 60]  # cityscapesscripts' colour for person
    dicts = DatasetCatalog.get("cityscapes_ft_instance_train")
    assert len(dicts) == 6
    assert all(0 <= a["category_id"] < 8 for d in dicts for a in d["annotations"])


def test_root_defaults_to_the_environment(cityscapes_root, monkeypatch):
    monkeypatch.setenv("DETECTRON2_DATASETS", cityscapes_root)
    register_cityscapes()
    assert MetadataCatalog.get("cityscapes_ft_instance_val").image_dir.startswith(cityscapes_root)
    assert len(DatasetCatalog.get("cityscapes_ft_instance_val")) == 3


def test_reregistering_with_another_root_points_to_it(cityscapes_root, tmp_path):
    register_cityscapes(str(tmp_path))
    assert MetadataCatalog.get("cityscapes_ft_instance_train").image_dir.startswith(str(tmp_path))
    register_cityscapes(cityscapes_root)
    assert len(DatasetCatalog.get("cityscapes_ft_instance_train")) == 6


def test_register_datasets_runs_what_the_config_asks(cityscapes_root):
    cfg = load_config(DEMO_CONFIG, [f"dataloader.register.root={cityscapes_root}"])
    assert "cityscapes_ft_instance_val" in register_datasets(cfg)
    assert MetadataCatalog.get("cityscapes_ft_instance_val").image_dir.startswith(cityscapes_root)
