"""Config files: detectron2 LazyConfig Python files, with MMDetection-style ``_base_`` inheritance.

A config is a Python file. It can build on others in two ways, which may be mixed:

* detectron2 style -- relative imports of other config files, then edits::

      from ._base_.models.mask_rcnn_r50_fpn import model
      model.roi_heads.num_classes = 8

* MMDetection style -- a ``_base_`` list of files (relative to this one) whose top-level objects
  are merged, plus nested dicts that deep-merge into them (``_delete_=True`` replaces a dict
  instead of merging into it)::

      _base_ = ["_base_/models/mask_rcnn_r50_fpn.py"]
      model = dict(roi_heads=dict(num_classes=8))

Config files are Python and are executed when loaded: only load configs you trust.
"""

import ast
import collections.abc as abc
import difflib
import inspect
import logging
import os
import traceback

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from .errors import ConfigError

__all__ = ["load_config", "merge_config", "apply_overrides"]

logger = logging.getLogger(__name__)

_DELETE = "_delete_"
_BASE = "_base_"


def load_config(path, overrides=()):
    """Load a config file (following ``_base_`` and relative imports) and apply overrides.

    Args:
        path (str): the config file.
        overrides (list[str]): ``"dotted.key=value"`` strings, as on the command line.

    Returns:
        omegaconf.DictConfig
    """
    cfg = _load_with_bases(_existing_config_path(path), stack=())
    apply_overrides(cfg, overrides)
    return cfg


def _existing_config_path(path, referrer=None):
    if os.path.isfile(path):
        if os.path.splitext(path)[1] != ".py":
            raise ConfigError(f"Config file {path} must be a Python (.py) LazyConfig file.")
        return os.path.abspath(path)
    where = f" (named in {referrer})" if referrer else ""
    msg = f"Config file not found: {path}{where}."
    folder = os.path.dirname(path) or "."
    if os.path.isdir(folder):
        names = [f for f in os.listdir(folder) if f.endswith(".py")]
        close = difflib.get_close_matches(os.path.basename(path), names, n=3)
        if close:
            msg += " Did you mean " + " or ".join(os.path.join(folder, c) for c in close) + "?"
    else:
        msg += f" The folder {folder} does not exist either."
    raise ConfigError(msg)


def _base_list(path):
    """The ``_base_`` entries of a config file, read from its source without running it."""
    with open(path) as f:
        source = f.read()
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as e:
        raise ConfigError(
            f"Config file {path} has a syntax error at line {e.lineno}: {e.msg}"
        ) from None
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == _BASE for t in node.targets
        ):
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                value = None
            if isinstance(value, str):
                value = [value]
            if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
                raise ConfigError(
                    f"{path}, line {node.lineno}: _base_ must be a file name or a list of "
                    "file names written as string literals."
                )
            return value
    return []


def _exec_config(path):
    from detectron2.config import LazyConfig

    try:
        return LazyConfig.load(path)
    except ImportError as e:
        raise ConfigError(f"Config file {path}: {e}") from e
    except Exception as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename.endswith(".py")]
        in_config = [f for f in frames if os.path.abspath(f.filename) == path] or frames
        line = f", line {in_config[-1].lineno}" if in_config else ""
        raise ConfigError(
            f"Config file {path}{line} failed to load: {type(e).__name__}: {e}"
        ) from e


def _load_with_bases(path, stack):
    if path in stack:
        chain = " -> ".join(list(stack) + [path])
        raise ConfigError(f"Config files inherit from each other in a cycle: {chain}")
    bases = _base_list(path)
    own = _exec_config(path)
    if not bases:
        return own
    merged = DictConfig({}, flags={"allow_objects": True})
    origin = {}
    for entry in bases:
        base_path = _existing_config_path(
            os.path.normpath(os.path.join(os.path.dirname(path), entry)), referrer=path
        )
        base = _load_with_bases(base_path, stack + (path,))
        for key in base.keys():
            if key in origin:
                raise ConfigError(
                    f"{path}: top-level key '{key}' is defined by two _base_ files, "
                    f"{origin[key]} and {base_path}; a key may come from one base only."
                )
            origin[key] = base_path
        merged.update(base)
    merge_config(merged, own, source=path)
    return merged


def merge_config(base, child, *, source="<config>"):
    """Deep-merge ``child`` into ``base`` in place, MMDetection style.

    Dicts merge key by key; any other value replaces. A dict with ``_delete_=True`` replaces the
    value in ``base`` instead of merging. Keys added to a LazyCall node must be parameters of
    its target.
    """
    raw = OmegaConf.to_container(child, resolve=False) if OmegaConf.is_config(child) else child
    _merge_dict(base, raw, prefix="", source=source)
    return base


def _merge_dict(node, values, prefix, source):
    for key, value in values.items():
        full = prefix + str(key)
        replace = isinstance(value, abc.Mapping) and value.get(_DELETE, False)
        if isinstance(value, abc.Mapping):
            value = {k: v for k, v in value.items() if k != _DELETE}
        if key not in node:
            _check_new_key(node, key, full, source)
            node[key] = value
            continue
        current = node._get_node(key)
        if isinstance(value, abc.Mapping) and isinstance(current, DictConfig) and not replace:
            _merge_dict(current, value, full + ".", source)
        else:
            node[key] = value


def _target_params(node):
    """Parameter names the LazyCall ``node`` accepts, or None if it accepts any keyword."""
    from detectron2.utils.registry import locate

    target = node._get_node("_target_")._value()
    if isinstance(target, str):
        try:
            target = locate(target)
        except ImportError:
            return None
    # A class whose __init__ takes **kwargs usually passes them to its base class (detectron2's
    # StandardROIHeads -> ROIHeads): follow the MRO until an __init__ without **kwargs.
    callables = (
        [c.__init__ for c in target.__mro__ if "__init__" in vars(c)]
        if inspect.isclass(target)
        else [target]
    )
    names = []
    for fn in callables:
        try:
            params = inspect.signature(fn).parameters.values()
        except (TypeError, ValueError):
            return None
        names += [p.name for p in params if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)]
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
            return [n for n in names if n != "self"]
    return None


def _target_name(node):
    target = node._get_node("_target_")._value()
    return target if isinstance(target, str) else getattr(target, "__qualname__", str(target))


def _check_new_key(node, key, full, source):
    if "_target_" not in node:
        return
    params = _target_params(node)
    if params is None or key in params:
        return
    raise ConfigError(
        f"{source}: unknown key '{full}': {_target_name(node)} takes no argument '{key}'."
        + _suggest(key, params)
    )


def _suggest(key, candidates):
    close = difflib.get_close_matches(str(key), [str(c) for c in candidates], n=3)
    return (" Did you mean: " + ", ".join(close) + "?") if close else ""


def _parse_overrides(overrides):
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        if "=" not in text:
            raise ConfigError(
                f"Cannot read the override '{text}': write it as dotted.key=value, "
                "e.g. train.max_iter=1000."
            )
        try:
            (o,) = parser.parse_overrides([text])
        except HydraException as e:
            raise ConfigError(f"Cannot read the override '{text}': {e}") from e
        if o.is_delete():
            raise ConfigError(f"Cannot apply '{text}': deleting keys is not supported.")
        parsed.append((text, o.key_or_group, o.value()))
    return parsed


def apply_overrides(cfg, overrides):
    """Apply ``dotted.key=value`` overrides in place, refusing unknown keys and wrong types."""
    for text, key, value in _parse_overrides(overrides):
        node, last = _walk_to_parent(cfg, key, text)
        if last in node:
            value = _coerce(node, last, value, key, text)
        else:
            if "_target_" in node:
                params = _target_params(node)
                if params is not None and last not in params:
                    raise ConfigError(
                        f"Cannot apply '{text}': {_target_name(node)} (at "
                        f"{key.rsplit('.', 1)[0]}) takes no argument '{last}'."
                        + _suggest(last, params)
                    )
            else:
                raise ConfigError(
                    f"Cannot apply '{text}': the config has no key '{key}'."
                    + _suggest(last, list(node.keys()))
                )
        OmegaConf.update(cfg, key, value, merge=True)
    return cfg


def _walk_to_parent(cfg, key, text):
    parts = key.split(".")
    node = cfg
    for depth, part in enumerate(parts[:-1]):
        here = ".".join(parts[: depth + 1])
        if isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"Cannot apply '{text}': {here} is not an index of the list.")
            node = node[int(part)]
            continue
        if part not in node:
            raise ConfigError(
                f"Cannot apply '{text}': the config has no key '{here}'."
                + _suggest(part, list(node.keys()))
            )
        node = node._get_node(part)
        if not isinstance(node, (DictConfig, ListConfig)):
            raise ConfigError(f"Cannot apply '{text}': {here} is a value, not a group of keys.")
    return node, parts[-1]


def _coerce(node, last, value, key, text):
    """Check ``value`` against the type of the value it replaces; convert int <-> float."""
    try:
        current = node[last]
    except OmegaConfBaseException:  # an interpolation that cannot resolve: nothing to compare
        return value
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        ok = isinstance(value, bool)
        want = "true or false"
    elif isinstance(current, int):
        from .solver import PERIOD_KEYS, epochs_in

        if isinstance(value, float) and value.is_integer():
            value = int(value)
        ok = isinstance(value, int) and not isinstance(value, bool)
        want = "an integer"
        if key in PERIOD_KEYS:
            ok = ok or epochs_in(value) is not None
            want = "an integer or a number of epochs, e.g. '2 epochs'"
    elif isinstance(current, float):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        value = float(value) if ok else value
        want = "a number"
    elif isinstance(current, str):
        # Some keys take a word or a number (num_workers="auto") or a mapping (class_map="auto").
        ok = isinstance(value, (str, int, float, dict)) and not isinstance(value, bool)
        want = "a string, a number or a mapping"
    elif isinstance(current, (ListConfig, list, tuple)):
        ok = isinstance(value, (list, tuple))
        want = "a list, e.g. [1,2]"
    elif isinstance(current, DictConfig):
        ok = isinstance(value, dict)
        want = "a group of keys, e.g. {a:1}"
    else:
        return value
    if not ok:
        raise ConfigError(
            f"Cannot apply '{text}': {key} must be {want} (it is {current!r}), got {value!r}."
        )
    return value
