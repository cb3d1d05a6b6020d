"""Instance masks kept as crops of their bounding boxes.

detectron2's ``BitMasks`` hold every instance as a full-image bitmap: a 2048x1024 Cityscapes
image with 18 instances carries 38 MB of masks through the data loader and onto the GPU, and the
mask loss runs ROIAlign over a full-image float copy per proposal. :class:`CroppedMasks` holds
each instance as the crop of its bitmap to the instance's box, grown by a one-pixel zero border
(clipped to the image), packed in one buffer. ``crop_and_resize`` gives exactly
``BitMasks.crop_and_resize``: ROIAlign samples nothing but zeros outside that border in both,
and inside the image the crop's edges behave as the full bitmap's edges.
"""
import numpy as np
import torch
from torchvision.ops import roi_align

from detectron2.structures import Boxes

__all__ = ["CroppedMasks"]


class CroppedMasks:
    """N instance masks of an ``image_size`` (H, W) image.

    Attributes:
        data (uint8 tensor): the crops, flattened and concatenated.
        crops (int64 CPU tensor, K x 5): per stored crop: offset in ``data``, x0, y0, width,
            height. It stays on the CPU, where the shapes are needed, when the masks move.
        index (int64 tensor, N): which stored crop each of the N masks is (indexing shares crops).
    """

    def __init__(self, data, crops, index, image_size):
        self.data = data
        self.crops = crops
        self.index = index
        self.image_size = tuple(int(v) for v in image_size)

    @classmethod
    def from_crops(cls, crops, origins, image_size):
        """Build from a list of non-empty 2-D uint8/bool arrays and their (x0, y0) origins."""
        flat, table, offset = [], [], 0
        for crop, (x0, y0) in zip(crops, origins):
            crop = np.ascontiguousarray(crop, dtype=np.uint8)
            h, w = crop.shape
            table.append((offset, int(x0), int(y0), w, h))
            flat.append(crop.reshape(-1))
            offset += h * w
        data = torch.from_numpy(np.concatenate(flat)) if flat else torch.zeros(0, dtype=torch.uint8)
        table = torch.tensor(table, dtype=torch.int64).reshape(-1, 5)
        return cls(data, table, torch.arange(len(table)), image_size)

    @classmethod
    def from_bitmaps(cls, bitmaps):
        """From an N x H x W array or tensor of full-image masks."""
        bitmaps = np.asarray(bitmaps.cpu() if torch.is_tensor(bitmaps) else bitmaps).astype(bool)
        height, width = bitmaps.shape[1:]
        crops, origins = [], []
        for mask in bitmaps:
            ys, xs = np.nonzero(mask)
            if len(ys):
                x0, y0 = max(xs.min() - 1, 0), max(ys.min() - 1, 0)
                x1, y1 = min(xs.max() + 2, width), min(ys.max() + 2, height)
            else:  # a 1x1 zero crop: ROIAlign needs a non-empty input
                x0, y0, x1, y1 = 0, 0, 1, 1
            crops.append(mask[y0:y1, x0:x1])
            origins.append((x0, y0))
        return cls.from_crops(crops, origins, (height, width))

    def __len__(self):
        return len(self.index)

    def __getitem__(self, item):
        if isinstance(item, int):
            item = [item]
        index = self.index[item]
        if index.dim() == 0:
            index = index[None]
        return CroppedMasks(self.data, self.crops, index, self.image_size)

    def to(self, device, non_blocking=False):
        return CroppedMasks(
            self.data.to(device, non_blocking=non_blocking),
            self.crops,
            self.index.to(device, non_blocking=non_blocking),
            self.image_size,
        )

    @property
    def device(self):
        return self.data.device

    def _crop(self, k, table):
        offset, x0, y0, w, h = table[k]
        return self.data[offset : offset + w * h].view(h, w), x0, y0

    def nonempty(self):
        table = self.crops.tolist()
        flags = [bool(self._crop(k, table)[0].any()) for k in self.index.tolist()]
        return torch.tensor(flags, dtype=torch.bool, device=self.index.device)

    def get_bounding_boxes(self):
        boxes = torch.zeros(len(self), 4, dtype=torch.float32)
        table = self.crops.tolist()
        for i, k in enumerate(self.index.tolist()):
            crop, x0, y0 = self._crop(k, table)
            ys, xs = torch.nonzero(crop, as_tuple=True)
            if len(ys):
                boxes[i] = torch.tensor([x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1])
        return Boxes(boxes)

    def to_bitmaps(self):
        """The N x H x W bool tensor of full-image masks."""
        height, width = self.image_size
        out = torch.zeros(len(self), height, width, dtype=torch.bool, device=self.device)
        table = self.crops.tolist()
        for i, k in enumerate(self.index.tolist()):
            crop, x0, y0 = self._crop(k, table)
            out[i, y0 : y0 + crop.shape[0], x0 : x0 + crop.shape[1]] = crop.bool()
        return out

    def crop_and_resize(self, boxes, mask_size):
        """Masks of each box, resized to ``mask_size`` x ``mask_size`` (bool, N x M x M);
        equal to ``BitMasks.crop_and_resize`` on the full-image masks."""
        assert len(boxes) == len(self), f"{len(boxes)} != {len(self)}"
        out = torch.zeros(len(boxes), mask_size, mask_size, dtype=torch.bool, device=boxes.device)
        if not len(boxes):
            return out
        # Group the boxes by crop with device ops; one small transfer gives the group sizes.
        index = self.index.to(boxes.device)
        order = torch.argsort(index, stable=True)
        origins = self.crops[:, 1:3].to(device=boxes.device, dtype=torch.float32)
        local = boxes[order].float() - origins[index[order]].repeat(1, 2)
        counts = torch.bincount(index, minlength=len(self.crops)).tolist()
        table = self.crops.tolist()
        results = []
        for k, (count, chunk) in enumerate(zip(counts, torch.split(local, counts))):
            if count:
                crop = self._crop(k, table)[0].to(device=boxes.device, dtype=torch.float32)
                results.append(roi_align(crop[None, None], [chunk], (mask_size, mask_size), 1.0, 0,
                                         aligned=True)[:, 0])
        out[order] = torch.cat(results) >= 0.5
        return out

    def __repr__(self):
        return f"CroppedMasks(num_instances={len(self)}, image_size={self.image_size})"
