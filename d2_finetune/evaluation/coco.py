"""detectron2's ``COCOEvaluator``, with its COCO conversion kept to the evaluator that made it.

For a dataset not registered from a COCO json (Cityscapes, VOC, KITTI), ``COCOEvaluator``
writes a COCO version of the annotations into its ``output_dir`` and records that file's path
as ``json_file`` in the dataset's global metadata. Every later ``COCOEvaluator`` of that
dataset in the same process then reads the recorded file, even when its own ``output_dir``
differs and the first folder has been removed since (a temporary folder, a deleted run):
``FileNotFoundError`` for a file the user never named.
"""

from detectron2.data import MetadataCatalog
from detectron2.evaluation import COCOEvaluator

__all__ = ["ScopedCOCOEvaluator"]


class ScopedCOCOEvaluator(COCOEvaluator):
    """``COCOEvaluator`` that leaves the dataset's metadata as it found it.

    A dataset with its own ``json_file`` (one registered from a COCO json) is evaluated against
    that file, as before. For any other dataset, each evaluator converts the annotations into
    its own ``output_dir`` (or reuses the conversion already there, as detectron2 does with
    ``allow_cached_coco``) and the metadata never points at it.
    """

    def __init__(self, dataset_name, *args, **kwargs):
        metadata = MetadataCatalog.get(dataset_name)
        converts = "json_file" not in metadata.as_dict()
        try:
            super().__init__(dataset_name, *args, **kwargs)
        finally:
            if converts and "json_file" in metadata.as_dict():
                del metadata.json_file
