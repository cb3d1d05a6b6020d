"""detectron2's DatasetMapper with faster decoding and compact masks, and clear errors.

* PNG images are decoded with OpenCV (the same pixels as PIL, in less time); other files with
  detectron2's ``read_image``. ``decoder="pil"`` restores detectron2's path everywhere.
* ``instance_mask_format="cropped"`` keeps each instance mask as the crop of its box
  (:class:`~d2_finetune.structures.CroppedMasks`): the resize and flip act on the crop only, with
  the pixels detectron2's ``"bitmask"`` path gives, so the loader neither builds nor ships
  full-image bitmaps and the mask loss crops on the GPU. RLE masks are decoded over the
  object's columns only (:func:`~d2_finetune.data.rle.decode_crop`, pycocotools' pixels).
* An unreadable or corrupt image, or one whose size differs from its annotation, raises a
  :class:`DatasetError` naming the file.
"""

import copy
import functools

import cv2
import numpy as np
import pycocotools.mask as mask_util
import torch
from PIL import Image

from detectron2.data import DatasetMapper as _DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.data import transforms as T
from detectron2.data.detection_utils import SizeMismatchError

from ..errors import DatasetError
from ..structures import CroppedMasks
from .rle import decode_crop

__all__ = ["DatasetMapper", "read_image", "transform_masks_cropped"]


def read_image(file_name, image_format, decoder="cv2"):
    """The image as an HxWxC uint8 array in ``image_format``; PNGs through OpenCV."""
    if decoder == "cv2" and file_name.lower().endswith(".png") and image_format in ("BGR", "RGB"):
        image = cv2.imread(file_name, cv2.IMREAD_COLOR)
        if image is None:
            raise OSError("OpenCV cannot decode it (missing, truncated or not an image)")
        return image[:, :, ::-1] if image_format == "RGB" else image
    return utils.read_image(file_name, format=image_format)


@functools.lru_cache(maxsize=256)
def _nearest_source(src, dst):
    """For each of ``dst`` output pixels along an axis, the source pixel PIL's NEAREST resize
    (detectron2's ResizeTransform for masks) reads, computed by PIL itself."""
    ramp = Image.fromarray(np.arange(src, dtype=np.int32)[None, :])
    return np.asarray(ramp.resize((dst, 1), Image.NEAREST))[0].astype(np.int64)


def _resize_crop(crop, x0, y0, t):
    rows = _nearest_source(t.h, t.new_h)
    cols = _nearest_source(t.w, t.new_w)
    h, w = crop.shape
    r0, r1 = np.searchsorted(rows, y0), np.searchsorted(rows, y0 + h)
    c0, c1 = np.searchsorted(cols, x0), np.searchsorted(cols, x0 + w)
    # One output pixel of margin on each side (zeros: it samples outside the object).
    r0, c0 = max(r0 - 1, 0), max(c0 - 1, 0)
    r1, c1 = min(r1 + 1, t.new_h), min(c1 + 1, t.new_w)
    src_r, src_c = rows[r0:r1] - y0, cols[c0:c1] - x0
    inside_r = (src_r >= 0) & (src_r < h)
    inside_c = (src_c >= 0) & (src_c < w)
    out = np.zeros((r1 - r0, c1 - c0), dtype=np.uint8)
    out[np.ix_(inside_r, inside_c)] = crop[np.ix_(src_r[inside_r], src_c[inside_c])]
    return out, c0, r0


def _object_crop(mask):
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    if not len(ys):
        return np.zeros((0, 0), np.uint8), 0, 0
    return mask[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1], int(xs[0]), int(ys[0])


def transform_masks_cropped(segmentations, transforms, source_size, image_size):
    """:class:`CroppedMasks` of the given RLE / polygon / bitmap segmentations after
    ``transforms``, with the pixels of detectron2's bitmask path."""
    crops, origins = [], []
    height, width = source_size
    simple = all(
        isinstance(t, (T.ResizeTransform, T.HFlipTransform, T.NoOpTransform))
        for t in transforms.transforms
    )
    for segm in segmentations:
        if isinstance(segm, list):  # polygons: transformed, then rasterised (as detectron2 does)
            polygons = transforms.apply_polygons([np.asarray(p).reshape(-1, 2) for p in segm])
            full = utils.polygons_to_bitmask([p.reshape(-1) for p in polygons], *image_size)
            crop, x0, y0 = _object_crop(full)
        elif not simple:
            mask = mask_util.decode(segm) if isinstance(segm, dict) else np.asarray(segm, np.uint8)
            crop, x0, y0 = _object_crop(transforms.apply_segmentation(mask))
        else:
            if isinstance(segm, dict):  # RLE: only the object's columns are expanded
                crop, x0, y0 = decode_crop(segm)
            else:
                crop, x0, y0 = _object_crop(np.asarray(segm, np.uint8))
            w = width
            for t in transforms.transforms:
                if isinstance(t, T.ResizeTransform):
                    crop, x0, y0 = _resize_crop(crop, x0, y0, t)
                    w = t.new_w
                elif isinstance(t, T.HFlipTransform):
                    crop, x0 = crop[:, ::-1], w - (x0 + crop.shape[1])
            crop, dx, dy = _object_crop(crop)
            x0, y0 = x0 + dx, y0 + dy
        # Grow the crop by one zero pixel inside the image (see CroppedMasks).
        h, w = crop.shape
        left, top = min(x0, 1), min(y0, 1)
        right, bottom = min(image_size[1] - (x0 + w), 1), min(image_size[0] - (y0 + h), 1)
        crops.append(np.pad(crop, ((top, bottom), (left, right))))
        origins.append((x0 - left, y0 - top))
    return CroppedMasks.from_crops(crops, origins, image_size)


class DatasetMapper(_DatasetMapper):
    """detectron2's DatasetMapper; see the module docstring for what differs.

    Args:
        decoder: "cv2" (PNG through OpenCV) or "pil" (detectron2's ``read_image``).
        Everything else: as ``detectron2.data.DatasetMapper``; ``instance_mask_format`` may
        also be "cropped".
    """

    def __init__(self, *args, decoder="cv2", **kwargs):
        super().__init__(*args, **kwargs)
        if decoder not in ("cv2", "pil"):
            raise ValueError(f"decoder must be 'cv2' or 'pil', got {decoder!r}")
        self.decoder = decoder

    def __call__(self, dataset_dict):
        dataset_dict = copy.deepcopy(dataset_dict)
        file_name = dataset_dict["file_name"]
        try:
            image = read_image(file_name, self.image_format, self.decoder)
            utils.check_image_size(dataset_dict, image)
        except (OSError, SizeMismatchError) as e:
            raise DatasetError(f"Cannot use image {file_name}: {e}") from e
        source_size = image.shape[:2]
        sem_seg = None
        if "sem_seg_file_name" in dataset_dict:
            sem_seg = utils.read_image(dataset_dict.pop("sem_seg_file_name"), "L").squeeze(2)
        aug_input = T.AugInput(image, sem_seg=sem_seg)
        transforms = self.augmentations(aug_input)
        image, sem_seg = aug_input.image, aug_input.sem_seg
        image_shape = image.shape[:2]
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if sem_seg is not None:
            dataset_dict["sem_seg"] = torch.as_tensor(sem_seg.astype("long"))
        if self.proposal_topk is not None:
            utils.transform_proposals(
                dataset_dict, image_shape, transforms, proposal_topk=self.proposal_topk
            )
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            if self.use_instance_mask and self.instance_mask_format == "cropped":
                self._transform_annotations_cropped(
                    dataset_dict, transforms, source_size, image_shape
                )
            else:
                self._transform_annotations(dataset_dict, transforms, image_shape)
        return dataset_dict

    def _transform_annotations_cropped(self, dataset_dict, transforms, source_size, image_shape):
        annos = [a for a in dataset_dict.pop("annotations") if a.get("iscrowd", 0) == 0]
        segms = [a.pop("segmentation") for a in annos]
        if not self.use_keypoint:
            for a in annos:
                a.pop("keypoints", None)
        annos = [
            utils.transform_instance_annotations(
                a, transforms, image_shape, keypoint_hflip_indices=self.keypoint_hflip_indices
            )
            for a in annos
        ]
        instances = utils.annotations_to_instances(annos, image_shape)
        try:
            instances.gt_masks = transform_masks_cropped(
                segms, transforms, source_size, image_shape
            )
        except ValueError as e:
            raise DatasetError(f"Cannot use the masks of {dataset_dict['file_name']}: {e}") from e
        if self.recompute_boxes:
            instances.gt_boxes = instances.gt_masks.get_bounding_boxes()
        dataset_dict["instances"] = utils.filter_empty_instances(instances)
