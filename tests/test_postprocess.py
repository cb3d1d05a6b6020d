"""d2_finetune.postprocess: raw R-CNN outputs to instances on the original image."""

import pytest
import torch

from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.structures import Boxes, Instances

from d2_finetune.postprocess import postprocess, raw_instances


def test_boxes_are_scaled_and_clipped_and_masks_pasted_into_the_original_image():
    # Predictions on a 64x128 input of an image of 128x256: twice the size.
    raw = raw_instances(
        {
            "pred_boxes": torch.tensor([[10.0, 5.0, 30.0, 25.0], [120.0, 60.0, 140.0, 70.0]]),
            "scores": torch.tensor([0.9, 0.8]),
            "pred_classes": torch.tensor([2, 0], dtype=torch.int32),
            "pred_masks": torch.ones(2, 1, 28, 28),
        },
        (64, 128),
    )
    out = postprocess(raw, 128, 256)
    assert out.image_size == (128, 256)
    assert out.pred_classes.dtype == torch.int64
    assert out.pred_boxes.tensor.tolist() == [
        [20.0, 10.0, 60.0, 50.0],
        [240.0, 120.0, 256.0, 128.0],
    ]
    assert out.pred_masks.shape == (2, 128, 256) and out.pred_masks.dtype == torch.bool
    # A mask of ones fills its box exactly, and nothing outside it.
    assert out.pred_masks[0].sum() == 40 * 40
    assert out.pred_masks[0, 10:50, 20:60].all()
    assert out.pred_masks[1, 120:, 240:].all() and out.pred_masks[1].sum() == 16 * 8


def test_masks_are_thresholded_and_boxes_left_empty_are_dropped():
    raw = Instances((100, 100))
    raw.pred_boxes = Boxes(torch.tensor([[10.0, 10.0, 50.0, 50.0], [120.0, 10.0, 150.0, 50.0]]))
    raw.scores = torch.tensor([0.9, 0.7])
    raw.pred_classes = torch.tensor([1, 1])
    raw.pred_masks = torch.full((2, 1, 28, 28), 0.4)
    out = postprocess(raw, 100, 100)
    assert len(out) == 1  # the second box lies right of the image: empty once clipped
    assert not out.pred_masks.any()  # 0.4 < 0.5
    # (bilinear pasting fades the corners: the inside of the box)
    assert postprocess(raw, 100, 100, mask_threshold=0.3).pred_masks[0, 11:49, 11:49].all()


def test_postprocess_leaves_its_input_as_it_was():
    raw = raw_instances(
        {
            "pred_boxes": torch.tensor([[1.0, 2.0, 3.0, 4.0]]),
            "scores": torch.tensor([0.5]),
            "pred_classes": torch.tensor([0]),
        },
        (10, 10),
    )
    postprocess(raw, 20, 20)
    assert raw.pred_boxes.tensor.tolist() == [[1.0, 2.0, 3.0, 4.0]] and raw.image_size == (10, 10)


def test_raw_instances_refuses_fields_it_cannot_map():
    with pytest.raises(
        ValueError, match="Cannot post-process the prediction fields pred_keypoints"
    ):
        raw_instances(
            {"pred_boxes": torch.zeros(0, 4), "pred_keypoints": torch.zeros(0, 17, 3)}, (10, 10)
        )


def test_eager_prediction_ends_in_the_shared_postprocess(tiny_cfg, cityscapes_root):
    """Predictor (network, then postprocess()) gives what the model's own forward gives."""
    import glob

    from d2_finetune.engine import load_for_inference
    from d2_finetune.predict import Predictor

    cfg = tiny_cfg()
    model = load_for_inference(cfg)
    path = sorted(glob.glob(f"{cityscapes_root}/cityscapes/leftImg8bit/val/*/*.png"))[0]
    image = read_image(path, format="BGR")
    predictor = Predictor(cfg, model)
    ours = predictor(image)
    aug_input = T.AugInput(image)
    predictor.augmentations(aug_input)
    tensor = torch.as_tensor(aug_input.image.astype("float32").transpose(2, 0, 1))
    with torch.no_grad():
        theirs = model([{"image": tensor, "height": 128, "width": 256}])[0]["instances"]
    assert len(ours) == len(theirs) > 0
    assert torch.equal(ours.pred_boxes.tensor, theirs.pred_boxes.tensor)
    assert torch.equal(ours.scores, theirs.scores)
    assert torch.equal(ours.pred_masks, theirs.pred_masks)
