from detectron2.config import LazyCall as L
from detectron2.solver.build import get_default_optimizer_params

from d2_finetune.solver import scaled_sgd, warmup_multistep

train = dict(
    output_dir="./output",
    init_checkpoint="",  # weights to start from: a local file or a detectron2:// / https:// URL
    class_map="auto",  # classes start from same-named checkpoint classes; or {target: source}, None
    # Classes the checkpoint has no counterpart of may start from a related one: {rider: person}.
    class_init=None,
    strict_transfer=True,  # any mismatch outside the class-dependent layers is an error
    max_iter=None,  # the schedule's length in iterations, or give train.epochs (below)
    eval_period=5000,  # iterations (or "N epochs") between evaluations; 0: only at the end
    eval_after_train=True,  # evaluate once more when training ends
    checkpointer=dict(period=5000, max_to_keep=3),  # period: iterations or "N epochs"
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
    # Keep model_best.pth by this metric ("max" or "min" is better): by default the one its
    # dataset base names (cityscapes/AP, voc/bbox/AP50, ...); val_total_loss with mode "min".
    best_metric=dict(name="${dataloader.best_metric}", mode="max"),
    patience=0,  # stop after this many evaluations without a new best; 0 = never stop early
    val_loss_period=0,  # iterations (or "N epochs") between validation-loss passes; 0 = off
    val_loss_images=100,  # the fixed subset of the test set they run on
    # Schedule in epochs instead of max_iter/steps: iterations are counted from the dataset
    # size and the total batch. repeat = passes per epoch (MMDetection's RepeatDataset times).
    # A max_iter given as well sets the length; the steps keep their place in it.
    epochs=None,
    step_epochs=None,
    repeat=1,
    freeze=[],  # glob patterns of parameter names not to train, on top of freeze_at
    plots=True,  # PNG plots of losses, LR and metrics in <output_dir>/plots/
)

# detectron2's SGD (common/optim.py) with the linear scaling rule: with a batch size as
# reference_batch, lr is stated for that batch and scales to dataloader.train.total_batch_size.
optimizer = L(scaled_sgd)(
    params=L(get_default_optimizer_params)(weight_decay_norm=0.0),  # params.model: set when built
    lr=0.02,
    momentum=0.9,
    weight_decay=1e-4,
    reference_batch=None,
    total_batch_size="${dataloader.train.total_batch_size}",
)

# Step decay with linear warmup, with the semantics of detectron2.solver.WarmupMultiStepLR.
lr_multiplier = L(warmup_multistep)(
    max_iter="${train.max_iter}",
    steps=[],  # iterations where the LR drops x gamma; with train.epochs: train.step_epochs
    gamma=0.1,
    warmup_iters=1000,
    warmup_factor=0.001,
)
