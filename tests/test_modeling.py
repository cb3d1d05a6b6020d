import torch

from detectron2.config import instantiate
from detectron2.layers import FrozenBatchNorm2d

from d2_finetune.config import load_config
from d2_finetune.modeling import calibrate_frozen_bn

from conftest import DEMO_CONFIG


def test_calibrated_frozen_bn_normalises_its_inputs():
    torch.manual_seed(0)
    model = instantiate(load_config(DEMO_CONFIG).model)
    batch = [{"image": torch.rand(3, 64, 128) * 255} for _ in range(2)]
    assert calibrate_frozen_bn(model, batch) == sum(
        isinstance(m, FrozenBatchNorm2d) for m in model.modules()
    )
    outputs = []
    # clone: detectron2 applies ReLU in place on the normalised output
    hooks = [
        m.register_forward_hook(lambda m, i, o: outputs.append(o.clone()))
        for m in model.modules()
        if isinstance(m, FrozenBatchNorm2d)
    ]
    with torch.no_grad():
        model.backbone(model.preprocess_image(batch).tensor)
    for h in hooks:
        h.remove()
    for out in outputs:
        assert out.mean(dim=(0, 2, 3)).abs().max() < 1e-3
        assert (out.var(dim=(0, 2, 3)) - 1).abs().max() < 1e-2
    assert model.training
