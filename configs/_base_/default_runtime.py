from detectron2 import model_zoo
from detectron2.config import LazyCall as L

from d2_finetune.solver import warmup_multistep

train = dict(
    output_dir="./output",
    init_checkpoint="",  # weights to start from: a local file or a detectron2:// / https:// URL
    class_map="auto",  # classes start from same-named checkpoint classes; or {target: source}, None
    strict_transfer=True,  # any mismatch outside the class-dependent layers is an error
    max_iter=90000,
    eval_period=5000,  # iterations between evaluations; 0 evaluates only at the end
    eval_after_train=True,  # evaluate once more when training ends
    checkpointer=dict(period=5000, max_to_keep=3),
    log_period=20,
    # Mixed precision: float16 on GPUs (bench/train_throughput.py --runs ours,ours-fp32 measures
    # its speed and memory); a CPU runs float16 configs in float32. bfloat16 runs anywhere.
    amp=dict(enabled=True, dtype="float16"),
    ddp=dict(broadcast_buffers=False, find_unused_parameters=False, fp16_compression=False),
    seed=-1,  # -1: a random seed per run (logged); >= 0: reproducible
    cudnn_benchmark=False,  # let cuDNN time its algorithms for each new input shape
    # Convolutions in NHWC, cuDNN's own layout for float16: none of the layout conversions
    # that took 13% of the GPU time in a profile of AMP training in NCHW. Same numbers.
    channels_last=True,
    # How loader workers hand tensors to the training process: "file_system" (shared-memory
    # names) takes it about half the time per image of torch's default "file_descriptor"
    # (bench/loader_transfer.py); None keeps torch's default.
    tensor_sharing="file_system",
    device="auto",  # "auto" = cuda when available, else cpu
    # Keep model_best.pth by this evaluation metric ("max" or "min" is better).
    best_metric=dict(name="cityscapes/AP", mode="max"),
    patience=0,  # stop after this many evaluations without a new best; 0 = never stop early
    val_loss_period=0,  # iterations between validation-loss passes; 0 = off
    val_loss_images=100,  # the fixed subset of the test set they run on
    # Schedule in epochs instead of max_iter/steps: iterations are counted from the dataset
    # size and the total batch. repeat = passes per epoch (MMDetection's RepeatDataset times).
    epochs=None,
    step_epochs=None,
    repeat=1,
    freeze=[],  # glob patterns of parameter names not to train, on top of freeze_at
    plots=True,  # PNG plots of losses, LR and metrics in <output_dir>/plots/
)

optimizer = model_zoo.get_config("common/optim.py").SGD
# With a batch size here, the LR scales linearly to the actual dataloader.train.total_batch_size.
optimizer.reference_batch = None

# Step decay with linear warmup, with the semantics of detectron2.solver.WarmupMultiStepLR.
lr_multiplier = L(warmup_multistep)(
    max_iter="${train.max_iter}",
    steps=[60000, 80000],
    gamma=0.1,
    warmup_iters=1000,
    warmup_factor=0.001,
)
