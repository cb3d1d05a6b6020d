"""decode_crop gives pycocotools' pixels, cut to the object, for every kind of mask."""

import numpy as np
import pycocotools.mask as mask_util
import pytest

from d2_finetune.data.rle import decode_counts, decode_crop


def reference_crop(mask):
    ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if not len(ys):
        return np.zeros((0, 0), np.uint8), 0, 0
    return mask[ys[0] : ys[-1] + 1, xs[0] : xs[-1] + 1], int(xs[0]), int(ys[0])


def random_masks(rng, count):
    for _ in range(count):
        h, w = rng.integers(1, 48, size=2)
        mask = np.zeros((h, w), np.uint8)
        kind = rng.integers(0, 4)
        if kind == 1:
            mask[:] = rng.random((h, w)) < rng.random()
        elif kind == 2:
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            mask[y0 : rng.integers(y0, h) + 1, x0 : rng.integers(x0, w) + 1] = 1
        elif kind == 3:
            mask[:] = 1
        yield mask


def assert_same_crop(rle, mask):
    crop, x0, y0 = decode_crop(rle)
    expected, ex, ey = reference_crop(mask)
    assert crop.dtype == np.uint8 and crop.flags.c_contiguous
    assert (x0, y0) == (ex, ey)
    np.testing.assert_array_equal(crop, expected)


def test_equal_to_pycocotools_on_random_masks():
    rng = np.random.default_rng(0)
    for mask in random_masks(rng, 600):
        rle = mask_util.encode(np.asfortranarray(mask))
        np.testing.assert_array_equal(decode_crop(rle)[0].sum(), mask.sum())
        assert_same_crop(rle, mask)  # counts as bytes, as pycocotools returns them
        assert_same_crop({"size": rle["size"], "counts": rle["counts"].decode("ascii")}, mask)


def test_large_image_with_long_runs():
    mask = np.zeros((1024, 2048), np.uint8)
    mask[500:900, 1500:2000] = 1
    mask[3, 7] = 1
    assert_same_crop(mask_util.encode(np.asfortranarray(mask)), mask)
    empty = np.zeros((1024, 2048), np.uint8)
    crop, x0, y0 = decode_crop(mask_util.encode(np.asfortranarray(empty)))
    assert crop.shape == (0, 0) and (x0, y0) == (0, 0)


def test_uncompressed_counts_are_the_same_runs():
    rng = np.random.default_rng(1)
    for mask in random_masks(rng, 50):
        h, w = mask.shape
        counts, value = [0], 0
        for pixel in mask.T.reshape(-1):  # column by column, runs of 0 then 1 then 0 ...
            if pixel != value:
                counts.append(0)
                value = pixel
            counts[-1] += 1
        compressed = mask_util.frPyObjects({"size": [h, w], "counts": counts}, h, w)
        np.testing.assert_array_equal(decode_counts(counts), decode_counts(compressed["counts"]))
        assert_same_crop({"size": [h, w], "counts": counts}, mask)


@pytest.mark.parametrize(
    "counts, message",
    [
        ("0j", "ends in the middle of a number"),
        ("0~", "outside the COCO alphabet"),
        ("0 ", "outside the COCO alphabet"),
    ],
)
def test_a_malformed_counts_string_is_refused(counts, message):
    with pytest.raises(ValueError, match=message):
        decode_counts(counts)


def test_runs_that_do_not_cover_the_image_are_refused():
    rle = mask_util.encode(np.asfortranarray(np.ones((4, 5), np.uint8)))
    with pytest.raises(ValueError, match="its RLE runs cover 20 pixels, not the 4x6 of its size"):
        decode_crop({"size": [4, 6], "counts": rle["counts"]})
