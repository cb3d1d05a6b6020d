"""detectron2's DatasetMapper, with errors that name the file at fault."""
from detectron2.data import DatasetMapper as _DatasetMapper
from detectron2.data.detection_utils import SizeMismatchError

from ..errors import DatasetError

__all__ = ["DatasetMapper"]


class DatasetMapper(_DatasetMapper):
    """detectron2's DatasetMapper; an unreadable or corrupt image, or one whose size differs
    from its annotation, raises a :class:`DatasetError` naming the file."""

    def __call__(self, dataset_dict):
        try:
            return super().__call__(dataset_dict)
        except (OSError, SizeMismatchError) as e:
            raise DatasetError(f"Cannot use image {dataset_dict['file_name']}: {e}") from e
