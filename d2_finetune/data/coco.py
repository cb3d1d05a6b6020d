"""Any COCO-format dataset (one json of images, annotations and categories)."""
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco import load_coco_json

from ..errors import DatasetError

__all__ = ["register_coco_dataset"]


def register_coco_dataset(name, json_file, image_root):
    """Register a COCO-format dataset under ``name``; calling it again is harmless.

    Class names come from the json's categories (sorted by id); detectron2's loader maps the
    category ids to contiguous ones and keeps the mapping in the metadata for evaluation.
    """
    if name in DatasetCatalog.list():
        if MetadataCatalog.get(name).get("json_file") == json_file:
            return [name]
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    if not os.path.isfile(json_file):
        raise DatasetError(f"Dataset '{name}': annotation file not found: {json_file}")
    DatasetCatalog.register(name, lambda: load_coco_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(
        json_file=json_file, image_root=image_root, evaluator_type="coco"
    )
    # load_coco_json fills thing_classes and the id mapping into the metadata when it runs;
    # do it now so the model's class count and the transfer can read them before training.
    DatasetCatalog.get(name)
    return [name]
