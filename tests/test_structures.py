import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from detectron2.structures import BitMasks

from d2_finetune.demo.synthetic.drawing import shape_polygon
from d2_finetune.structures import CroppedMasks


def random_masks(rng, n, height, width):
    masks = np.zeros((n, height, width), bool)
    for i in range(n):
        im = Image.new("L", (width, height), 0)
        w, h = rng.uniform(3, width * 0.6), rng.uniform(3, height * 0.6)
        # Centres anywhere, so masks also touch and cross the image edges.
        poly = shape_polygon(
            ["ellipse", "rect", "triangle"][i % 3],
            rng.uniform(0, width),
            rng.uniform(0, height),
            w,
            h,
        )
        ImageDraw.Draw(im).polygon([tuple(p) for p in poly], fill=1)
        masks[i] = np.asarray(im) > 0
    masks[-1] = False  # an empty mask too
    return masks


def clipped_proposals(rng, boxes, width, height, n):
    idx = torch.from_numpy(rng.integers(0, len(boxes), size=n))
    props = boxes[idx] + torch.from_numpy(rng.normal(0, 12, size=(n, 4))).float()
    props[:, 0::2] = props[:, 0::2].clamp(0, width)
    props[:, 1::2] = props[:, 1::2].clamp(0, height)
    props[:, 2] = torch.maximum(props[:, 2], props[:, 0] + 0.5).clamp(max=width)
    props[:, 3] = torch.maximum(props[:, 3], props[:, 1] + 0.5).clamp(max=height)
    return idx, props


@pytest.mark.parametrize("batched", [True, False], ids=["batched", "per-crop"])
@pytest.mark.parametrize("seed", range(4))
def test_crop_and_resize_equals_bitmasks(seed, batched):
    rng = np.random.default_rng(seed)
    height, width = 96, 160
    masks = random_masks(rng, 10, height, width)
    full = BitMasks(torch.from_numpy(masks))
    cropped = CroppedMasks.from_bitmaps(masks)
    boxes = full.get_bounding_boxes().tensor
    boxes[-1] = torch.tensor([10.0, 10.0, 40.0, 30.0])
    idx, props = clipped_proposals(rng, boxes, width, height, 200)
    for size in (28, 14):
        expected = full[idx].crop_and_resize(props, size)
        got = cropped[idx].crop_and_resize(props, size, batched=batched)
        assert got.dtype == torch.bool and got.shape == (200, size, size)
        assert torch.equal(got, expected)
        assert expected.any()


def test_round_trip_indexing_boxes_and_emptiness():
    rng = np.random.default_rng(7)
    masks = random_masks(rng, 6, 50, 70)
    cropped = CroppedMasks.from_bitmaps(masks)
    assert torch.equal(cropped.to_bitmaps(), torch.from_numpy(masks))
    assert torch.equal(cropped.nonempty(), BitMasks(torch.from_numpy(masks)).nonempty())
    expected = BitMasks(torch.from_numpy(masks)).get_bounding_boxes().tensor
    assert torch.equal(cropped.get_bounding_boxes().tensor[:-1], expected[:-1])
    sub = cropped[torch.tensor([4, 0, 0])]
    assert len(sub) == 3
    assert torch.equal(sub.to_bitmaps(), torch.from_numpy(masks[[4, 0, 0]]))
    assert torch.equal(
        cropped[torch.tensor([True, False, True, False, False, False])].to_bitmaps(),
        torch.from_numpy(masks[[0, 2]]),
    )
    assert len(cropped[2]) == 1 and len(cropped[1:3]) == 2
    # Crops are stored once, however often they are indexed.
    assert sub.data is cropped.data
    assert cropped.data.numel() < masks[0].size


def test_crops_carry_a_zero_border_inside_the_image():
    mask = np.zeros((1, 20, 30), bool)
    mask[0, 5:9, 0:4] = True  # touches the left edge
    cropped = CroppedMasks.from_bitmaps(mask)
    offset, x0, y0, w, h = cropped.crops[0].tolist()
    assert (x0, y0, w, h) == (0, 4, 5, 6)


def test_batching_is_the_default_on_gpus_for_canvases_within_the_limit(monkeypatch):
    from d2_finetune import structures

    masks = CroppedMasks.from_bitmaps(random_masks(np.random.default_rng(3), 5, 40, 60))
    canvas = len(masks.crops) * int(masks.crops[:, 3].max()) * int(masks.crops[:, 4].max())
    assert masks.batch_by_default("cuda") and not masks.batch_by_default("cpu")
    monkeypatch.setattr(structures, "MAX_CANVAS_ELEMENTS", canvas - 1)
    assert not masks.batch_by_default("cuda")
    monkeypatch.setattr(structures, "MAX_CANVAS_ELEMENTS", canvas)
    assert masks.batch_by_default("cuda")
