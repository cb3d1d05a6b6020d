"""Pascal VOC 2007/2012 detection from the standard ``VOCdevkit`` layout.

Records come from detectron2's ``load_voc_instances`` and the metadata is that of its
``register_pascal_voc`` (``dirname``, ``split``, ``year``, ``thing_classes``), so detectron2's
``PascalVOCDetectionEvaluator`` scores them; missing folders, files and unknown class names are
reported as :class:`DatasetError`.
"""

import functools
import os
import xml.etree.ElementTree as ET

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.pascal_voc import CLASS_NAMES, load_voc_instances

from ..errors import DatasetError
from .common import dataset_root, registered_as

__all__ = ["VOC_CLASSES", "VOC_SPLITS", "register_voc", "load_voc"]

VOC_CLASSES = list(CLASS_NAMES)
# How Pascal VOC spells six COCO classes: a COCO checkpoint's rows for them carry over
# (the datasets' class_synonyms, read by the checkpointer's class match).
COCO_SYNONYMS = {
    "aeroplane": "airplane",
    "motorbike": "motorcycle",
    "sofa": "couch",
    "tvmonitor": "tv",
    "diningtable": "dining table",
    "pottedplant": "potted plant",
}

# dataset name -> (year, image set of ImageSets/Main)
VOC_SPLITS = {
    "voc_ft_2007_trainval": (2007, "trainval"),
    "voc_ft_2007_train": (2007, "train"),
    "voc_ft_2007_val": (2007, "val"),
    "voc_ft_2007_test": (2007, "test"),
    "voc_ft_2012_trainval": (2012, "trainval"),
    "voc_ft_2012_train": (2012, "train"),
    "voc_ft_2012_val": (2012, "val"),
}

DOWNLOAD_HINT = (
    "Download VOCtrainval_06-Nov-2007.tar, VOCtest_06-Nov-2007.tar and "
    "VOCtrainval_11-May-2012.tar from http://host.robots.ox.ac.uk/pascal/VOC/ and untar them "
    "in {root} (giving {root}/VOCdevkit/VOC2007/{{Annotations,ImageSets,JPEGImages}})."
)


def _unknown_class(dirname, ids):
    """The first annotation file naming a class outside the 20 VOC classes, as an error."""
    for fileid in ids:
        path = os.path.join(dirname, "Annotations", fileid + ".xml")
        for obj in ET.parse(path).findall("object"):
            name = obj.find("name").text
            if name not in CLASS_NAMES:
                return DatasetError(
                    f"{path}: object class '{name}' is not one of the 20 VOC classes "
                    f"({', '.join(CLASS_NAMES)})."
                )
    return None


def load_voc(dirname, split):
    """``load_voc_instances(dirname, split, VOC classes)``, with clear errors for missing or
    malformed files."""
    list_file = os.path.join(dirname, "ImageSets", "Main", split + ".txt")
    if not os.path.isfile(list_file):
        root = os.path.dirname(os.path.dirname(os.path.abspath(dirname)))
        raise DatasetError(
            f"VOC image set not found: {list_file}. " + DOWNLOAD_HINT.format(root=root)
        )
    with open(list_file) as f:
        ids = [line.split()[0] for line in f if line.strip()]
    if not ids:
        raise DatasetError(f"VOC image set {list_file} lists no images.")
    try:
        records = load_voc_instances(dirname, split, CLASS_NAMES)
    except FileNotFoundError as e:
        raise DatasetError(
            f"VOC annotation missing: {e.filename} (listed in {list_file})."
        ) from None
    except ET.ParseError as e:
        raise DatasetError(f"Cannot read a VOC annotation of {list_file}: {e}") from None
    except ValueError as e:
        error = _unknown_class(dirname, ids)
        if error is None:
            raise DatasetError(f"Cannot read the VOC annotations of {list_file}: {e}") from e
        raise error from e
    missing = [r["file_name"] for r in records if not os.path.isfile(r["file_name"])]
    if missing:
        raise DatasetError(
            f"{len(missing)} of the {len(records)} images listed in {list_file} are missing, "
            f"e.g. {missing[0]}."
        )
    return records


def register_voc(root=None, names=None):
    """Register Pascal VOC splits (:data:`VOC_SPLITS`); calling it again is harmless.

    Data is read from ``<root>/VOCdevkit/VOC<year>/`` when a split is used, so a year whose
    folder is absent is an error only then.

    Args:
        root: folder holding ``VOCdevkit/``; default ``$DETECTRON2_DATASETS`` or ``./datasets``.
        names: the dataset names to register, default all of :data:`VOC_SPLITS`.

    Returns:
        list[str]: the registered dataset names.
    """
    base = os.path.join(dataset_root(root), "VOCdevkit")
    names = list(VOC_SPLITS) if names is None else list(names)
    unknown = [n for n in names if n not in VOC_SPLITS]
    if unknown:
        raise DatasetError(
            f"Unknown VOC dataset name(s) {unknown}; choose from {list(VOC_SPLITS)}."
        )
    for name in names:
        year, split = VOC_SPLITS[name]
        dirname = os.path.join(base, f"VOC{year}")
        if registered_as(name, dirname=dirname):
            continue
        DatasetCatalog.register(name, functools.partial(load_voc, dirname, split))
        MetadataCatalog.get(name).set(
            thing_classes=list(VOC_CLASSES),
            class_synonyms=dict(COCO_SYNONYMS),
            dirname=dirname,
            year=year,
            split=split,
            evaluator_type="pascal_voc",
            download_hint=DOWNLOAD_HINT.format(root=dataset_root(root)),
        )
    return names
