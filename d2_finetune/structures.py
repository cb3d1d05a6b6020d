"""Instance masks kept as crops of their bounding boxes.

detectron2's ``BitMasks`` hold every instance as a full-image bitmap: a 2048x1024 Cityscapes
image with 18 instances carries 38 MB of masks through the data loader and onto the GPU, and the
mask loss runs ROIAlign over a full-image float copy per proposal. :class:`CroppedMasks` holds
each instance as the crop of its bitmap to the instance's box, grown by a one-pixel zero border
(clipped to the image), packed in one buffer. ``crop_and_resize`` gives the masks of
``BitMasks.crop_and_resize`` for boxes inside the image: ROIAlign samples nothing but zeros
outside that border in both, and inside the image the crop's edges behave as the full bitmap's
edges. Only float rounding of the crop's coordinates against the image's can tip a value lying
at the 0.5 threshold: 1 pixel in 29 million over 300 random cases. On GPUs it resizes all crops
of an image in one ROIAlign, without waiting for the device.
"""

import numpy as np
import torch
from torchvision.ops import roi_align

from detectron2.structures import Boxes

__all__ = ["CroppedMasks"]

# The batched crop_and_resize's canvas of one image's crops, at most (256 MB of float32): the
# 15-20 crops of a 2048x1024 image in bench/mask_targets.py take 5-8 million.
MAX_CANVAS_ELEMENTS = 2**26


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
                boxes[i] = torch.tensor(
                    [x0 + xs.min(), y0 + ys.min(), x0 + xs.max() + 1, y0 + ys.max() + 1]
                )
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

    def crop_and_resize(self, boxes, mask_size, batched=None):
        """Masks of each box, resized to ``mask_size`` x ``mask_size`` (bool, N x M x M): those
        of ``BitMasks.crop_and_resize`` on the full-image masks for boxes inside the image
        (proposals are clipped to it; see the module's note on rounding).

        ``batched=True`` runs one ROIAlign over all crops laid out in one zero-padded stack,
        with a fixed number of kernel launches and no wait for the device; ``False`` runs one
        ROIAlign per crop after one device-to-host read. The same masks either way (tested).
        ``None`` batches on GPUs only (on a CPU, filling the stack costs more than the loop)
        and when the stack holds at most ``MAX_CANVAS_ELEMENTS`` floats.
        """
        assert len(boxes) == len(self), f"{len(boxes)} != {len(self)}"
        if not len(boxes):
            return torch.zeros(0, mask_size, mask_size, dtype=torch.bool, device=boxes.device)
        if batched is None:
            batched = self.batch_by_default(boxes.device)
        if batched:
            return self._crop_and_resize_batched(boxes, mask_size)
        out = torch.zeros(len(boxes), mask_size, mask_size, dtype=torch.bool, device=boxes.device)
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
                results.append(
                    roi_align(
                        crop[None, None], [chunk], (mask_size, mask_size), 1.0, 0, aligned=True
                    )[:, 0]
                )
        out[order] = torch.cat(results) >= 0.5
        return out

    def batch_by_default(self, device):
        """Whether ``crop_and_resize`` batches on ``device`` when not told."""
        crops, height, width = self._canvas_shape()
        return torch.device(device).type == "cuda" and crops * height * width <= MAX_CANVAS_ELEMENTS

    def _canvas_shape(self):
        """(crops, height, width) of the stack the batched ``crop_and_resize`` lays crops in."""
        return len(self.crops), int(self.crops[:, 4].max()), int(self.crops[:, 3].max())

    def _crop_and_resize_batched(self, boxes, mask_size):
        """The crops stacked in a K x 1 x Hmax x Wmax zero canvas, one ROIAlign with each box's
        crop as its batch index.

        In the canvas a crop reads as on its own: past a crop's zero border ROIAlign meets the
        canvas's zeros, and a crop cut by an image edge (no border there) lies against the same
        edge of the canvas: the top-left corner for all crops, the bottom or right edge for
        those cut there. Every size and place comes from the crop table on the host: no wait for
        the device.
        """
        device = boxes.device
        image_h, image_w = self.image_size
        num_crops, height, width = self._canvas_shape()
        table = self.crops.tolist()
        places = []  # per crop: offset, width, row and column of its top-left in the canvas
        for offset, x0, y0, w, h in table:
            top = height - h if y0 + h == image_h else 0
            left = width - w if x0 + w == image_w else 0
            places.append((offset, w, top, left, x0 - left, y0 - top))
        # From pageable memory the copy is staged before the call returns; non_blocking only
        # spares the wait for the device.
        places = torch.tensor(places, dtype=torch.int64).to(device, non_blocking=True)
        offsets, widths, tops, lefts = (
            places[:, 0].contiguous(),
            places[:, 1],
            places[:, 2],
            places[:, 3],
        )
        pixel = torch.arange(self.data.numel(), device=device)
        crop = torch.searchsorted(offsets, pixel, right=True) - 1
        local = pixel - offsets[crop]
        crop_width = widths[crop]
        row = torch.div(local, crop_width, rounding_mode="floor") + tops[crop]
        column = local % crop_width + lefts[crop]
        canvas = torch.zeros(num_crops * height * width, dtype=torch.float32, device=device)
        canvas[crop * (height * width) + row * width + column] = self.data.to(torch.float32)
        index = self.index.to(device)
        local_boxes = boxes.float() - places[index, 4:6].float().repeat(1, 2)
        rois = torch.cat([index[:, None].float(), local_boxes], dim=1)
        masks = roi_align(
            canvas.view(num_crops, 1, height, width),
            rois,
            (mask_size, mask_size),
            1.0,
            0,
            aligned=True,
        )[:, 0]
        return masks >= 0.5

    def __repr__(self):
        return f"CroppedMasks(num_instances={len(self)}, image_size={self.image_size})"
