"""The export's calls into the config loader, the dataset registry and the training engine,
kept in one place."""
from ..config import load_config
from ..data import register_datasets
from ..engine import FinetuneTrainer, resolve_device

__all__ = ["load_export_config", "load_weights", "evaluate"]


def load_export_config(config_file, overrides=()):
    """The config with its overrides and its datasets registered (for the class names),
    set up to build the model in float32 on the CPU, where tracing happens."""
    cfg = load_config(config_file, overrides)
    cfg.train.device = "cpu"
    cfg.train.channels_last = False
    if "amp" in cfg.train:
        cfg.train.amp.enabled = False
    cfg = resolve_device(cfg)
    register_datasets(cfg)
    return cfg


def load_weights(cfg):
    """The config's model with ``train.init_checkpoint`` loaded, as prediction loads it (which
    records the load in ``<train.output_dir>/inference_weights.json``)."""
    return FinetuneTrainer.load_for_inference(cfg).eval()


def evaluate(cfg, model):
    """The config's test loader and evaluators over ``model``, as ``--eval-only`` runs them."""
    return FinetuneTrainer.test(cfg, model)
