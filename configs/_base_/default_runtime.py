from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from d2_finetune.solver import warmup_multistep

train = dict(
    output_dir="./output",
    init_checkpoint="",  # weights to start from: a local file or a detectron2:// / https:// URL
    max_iter=90000,
    eval_period=5000,  # iterations between evaluations; 0 evaluates only at the end
    checkpointer=dict(period=5000, max_to_keep=3),
    log_period=20,
    amp=dict(enabled=False, dtype="float16"),  # mixed precision: float16 (CUDA) or bfloat16
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    seed=-1,  # -1: a random seed per run (logged); >= 0: reproducible
    device="auto",  # "auto" = cuda when available, else cpu
)

optimizer = model_zoo.get_config("common/optim.py").SGD

# Step decay with linear warmup, with the semantics of detectron2.solver.WarmupMultiStepLR.
lr_multiplier = L(warmup_multistep)(
    max_iter="${train.max_iter}",
    steps=[60000, 80000],
    gamma=0.1,
    warmup_iters=1000,
    warmup_factor=0.001,
)
