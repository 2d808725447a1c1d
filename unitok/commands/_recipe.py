"""The recipe of ``unitok train``: a YAML file that names, for each stage, what its own subcommand
is given, and the per-run training configs composed from it.

A recipe (``configs/recipes/photos.yaml``, ``configs/recipes/shapes.yaml``)::

    seed: 0
    data: {size: 128, val_fraction: 0.1}          # flags of `unitok data folder` (or source: shapes)
    tokenizer:                                    # `unitok tokenizer fit`
      configs: [../tokenizer/photo128.yaml]       # composed in order, relative to the recipe
      max_time: "00:30:00"                        # the stage's budget: trainer.max_time / max_steps
      overrides: {trainer: {max_steps: -1}}       # any config value, composed last
    decoder: {configs: [...]}                     # optional: the decoder trained on alone
    codes: {batch_size: 256}                      # flags of `unitok tokenize`
    lm: {configs: [../lm/shapes-tiny.yaml], ...}  # `unitok lm fit`
    assemble: {guidance: 3.0}                     # flags of `unitok assemble`

The configs a run trains with are the recipe's configs merged as LightningCLI merges several
``--config`` files (mappings key by key, lists replaced), with every output folder (the trainer's
``default_root_dir``, each logger's ``save_dir``, each ``ModelCheckpoint``'s ``dirpath``) and every
input (shards, the tokenizer the LM reads) replaced by the run's own. They are written to
``RUN/configs/<stage>.yaml``, so ``unitok <stage> fit --config RUN/configs/<stage>.yaml`` repeats a
stage by hand. No torch import here (``unitok train --help`` imports this module).
"""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml

from unitok.errors import UserError
from unitok.run_layout import CHECKPOINTS

TRAINING_STAGES = ("tokenizer", "decoder", "lm")  # LightningCLI runs: fit, then export
SECTIONS = ("seed", "data", "tokenizer", "decoder", "codes", "lm", "assemble")
STAGE_KEYS = ("configs", "max_steps", "max_time", "overrides")
# data.source -> the keys its section takes (the others are flags of `unitok data <source>`).
DATA_KEYS = {"folder": ("source", "size", "val_fraction", "class_template", "shard_size"),
             "shapes": ("source", "num", "val_num", "size", "shard_size")}
# Settings in a trainer config that name where a run writes (loggers, callbacks, profilers).
OUTPUT_KEYS = ("default_root_dir", "save_dir", "dirpath", "root_dir", "log_dir")
CODES_SET_BY_RUN = ("tokenizer", "shards", "out")  # flags of `unitok tokenize` that are the run's own
CHECKPOINT_CALLBACK = "ModelCheckpoint"
_DURATION = re.compile(r"^(?:(\d+):)?(\d+):([0-5]?\d):([0-5]?\d)$")  # [DD:]HH:MM:SS


@dataclass(frozen=True)
class TrainingStage:
    """A LightningCLI stage: its base configs, budget and overrides."""

    configs: tuple[Path, ...]
    max_steps: int | None = None  # None: as the configs say; -1: no step limit
    max_time: str | None = None  # DD:HH:MM:SS; None: as the configs say
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Recipe:
    path: Path
    seed: int
    data: dict[str, Any]  # source (folder or shapes) and the flags of `unitok data <source>`
    tokenizer: TrainingStage
    lm: TrainingStage
    decoder: TrainingStage | None = None
    codes: dict[str, Any] = field(default_factory=dict)  # flags of `unitok tokenize`
    assemble: dict[str, Any] = field(default_factory=dict)  # flags of `unitok assemble`

    @property
    def source(self) -> str:
        return self.data.get("source", "folder")

    @property
    def stages(self) -> tuple[str, ...]:
        """The stages in the order they run."""
        middle = ("tokenizer", "decoder") if self.decoder else ("tokenizer",)
        return ("data", *middle, "codes", "lm", "assemble")

    def training_stage(self, name: str) -> TrainingStage:
        return getattr(self, name)


def load_recipe(path: str | Path) -> Recipe:
    """Read and check a recipe; a UserError names what is wrong in it."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise UserError(f"cannot read the recipe {path}: {error.strerror or error}") from None
    except yaml.YAMLError as error:
        raise UserError(f"the recipe {path} is not valid YAML: {str(error).splitlines()[0]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"the recipe {path} must be a mapping with the sections {', '.join(SECTIONS)}")
    _only(raw, SECTIONS, f"the recipe {path}")
    for name in ("tokenizer", "lm"):
        if raw.get(name) is None:
            raise UserError(f"the recipe {path} has no '{name}' section (its configs and budget)")
    data = _mapping(raw.get("data"), f"{path}: data")
    if data.get("source", "folder") not in DATA_KEYS:
        raise UserError(f"{path}: data.source must be one of {', '.join(DATA_KEYS)}, got {data['source']!r}")
    _only(data, DATA_KEYS[data.get("source", "folder")], f"{path}: data")
    if data.get("source") == "shapes" and not all(isinstance(data.get(key), int) for key in ("num", "val_num")):
        raise UserError(f"{path}: data.num and data.val_num (Shapes scenes to train and validate on) must be integers")
    seed = raw.get("seed", 0)
    if not isinstance(seed, int):
        raise UserError(f"{path}: seed must be an integer, got {seed!r}")
    codes = _mapping(raw.get("codes"), f"{path}: codes")
    for key in CODES_SET_BY_RUN:
        if key in codes:
            raise UserError(f"{path}: codes.{key} is set by `unitok train` (the run's own tokenizer, shards and "
                            "RUN/codes); remove it")
    stages = {name: _training_stage(raw[name], path, name) for name in TRAINING_STAGES if raw.get(name) is not None}
    return Recipe(path=path, seed=seed, data=data, codes=codes,
                  assemble=_mapping(raw.get("assemble"), f"{path}: assemble"), **stages)


def _training_stage(raw: Any, recipe: Path, name: str) -> TrainingStage:
    where = f"{recipe}: {name}"
    raw = _mapping(raw, where)
    _only(raw, STAGE_KEYS, where)
    configs = raw.get("configs")
    if isinstance(configs, str):
        configs = [configs]
    if not configs or not all(isinstance(c, str) for c in configs):
        raise UserError(f"{where}.configs must list one or more config files (relative to the recipe)")
    paths = tuple((recipe.parent / config).resolve() for config in configs)
    for config in paths:
        if not config.is_file():
            raise UserError(f"{where}.configs: no config file {config}")
    max_steps = raw.get("max_steps")
    if max_steps is not None and (isinstance(max_steps, bool) or not isinstance(max_steps, int)
                                  or max_steps < -1 or max_steps == 0):
        raise UserError(f"{where}.max_steps must be a positive number of steps (or -1: no limit), got {max_steps!r}")
    max_time = raw.get("max_time")
    return TrainingStage(configs=paths, max_steps=max_steps,
                         max_time=None if max_time is None else max_time_string(max_time, f"{where}.max_time"),
                         overrides=_mapping(raw.get("overrides"), f"{where}.overrides"))


def _mapping(raw: Any, where: str) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a mapping, got {raw!r}")
    return raw


def _only(raw: dict[str, Any], allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise UserError(f"{where}: unknown key {unknown[0]!r}; the keys are {', '.join(allowed)}")


def max_time_string(value: Any, where: str) -> str:
    """``HH:MM:SS`` or ``DD:HH:MM:SS`` as Lightning's ``max_time`` string ``DD:HH:MM:SS``."""
    match = _DURATION.match(str(value).strip())
    if not match:
        hint = ""
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            # YAML reads an unquoted 1:30:00 as the number 5400 (base 60): name what was meant.
            minutes, seconds = divmod(value, 60)
            hint = f' (an unquoted {minutes // 60}:{minutes % 60:02d}:{seconds:02d} in YAML is that number: quote it)'
        raise UserError(f"{where} must be a duration HH:MM:SS (or DD:HH:MM:SS), got {value!r}{hint}")
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    if days * 86400 + hours * 3600 + minutes * 60 + seconds == 0:
        raise UserError(f"{where} must be longer than 0 seconds, got {value!r}")
    return f"{days:02d}:{hours:02d}:{minutes:02d}:{seconds:02d}"


def seconds_of(max_time: str | dict[str, float] | None) -> int | None:
    """A ``max_time`` (``DD:HH:MM:SS``, or a mapping such as ``{hours: 1}``) in seconds; None: no time limit."""
    if max_time is None:
        return None
    if isinstance(max_time, dict):
        return round(timedelta(**max_time).total_seconds())
    days, hours, minutes, seconds = (int(part) for part in max_time_string(max_time, "max_time").split(":"))
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def parse_budget(text: str) -> tuple[str, str, int | str]:
    """``--budget STAGE=HH:MM:SS`` -> (stage, "max_time", "DD:HH:MM:SS"); ``STAGE=N`` -> (stage, "max_steps", N)."""
    stage, sep, value = text.partition("=")
    if not sep or stage not in TRAINING_STAGES:
        raise UserError(f"--budget {text!r}: expected STAGE=HH:MM:SS or STAGE=STEPS with STAGE one of "
                        f"{', '.join(TRAINING_STAGES)}")
    if value.strip().isdigit():
        if int(value) < 1:
            raise UserError(f"--budget {text!r}: the number of steps must be at least 1")
        return stage, "max_steps", int(value)
    return stage, "max_time", max_time_string(value, f"--budget {stage}")


# ------------------------------------------------------------------------------------------------
# Composing a stage's training config


def compose_config(stage: TrainingStage, *, out_dir: Path, inputs: dict[str, str], seed: int,
                   budget: dict[str, int | str]) -> dict[str, Any]:
    """The stage's configs merged in order, then its overrides, its budget (the recipe's, then
    ``budget``: the command line's), the run's seed, its inputs (dotted keys) and its outputs,
    every one under ``out_dir`` (checkpoints in ``out_dir/checkpoints``)."""
    config: dict[str, Any] = {}
    for path in stage.configs:
        config = merge_configs(config, _read_config(path))
    config = merge_configs(config, stage.overrides)
    trainer = config.setdefault("trainer", {})
    for key in ("max_steps", "max_time"):
        value = budget.get(key, getattr(stage, key))
        if value is not None:
            trainer[key] = value
    config["seed_everything"] = seed
    for dotted, value in inputs.items():
        _set(config, dotted, value)
    place_outputs(trainer, out_dir)
    return config


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as error:
        raise UserError(f"cannot read the config {path}: {str(error).splitlines()[0]}") from None
    if not isinstance(config, dict):
        raise UserError(f"the config {path} must be a mapping (trainer, model, data)")
    return config


def merge_configs(base: Any, override: Any) -> Any:
    """``override`` on ``base`` as LightningCLI composes ``--config`` files: mappings merge key by
    key, a class given with another ``class_path`` replaces the old one whole, anything else
    (lists included) is replaced."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    if "class_path" in override and override["class_path"] != base.get("class_path"):
        return copy.deepcopy(override)
    merged = copy.deepcopy(base)
    for key, value in override.items():
        merged[key] = merge_configs(merged[key], value) if key in merged else copy.deepcopy(value)
    return merged


def _set(config: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, last = dotted.split(".")
    for key in parents:
        config = config.setdefault(key, {})
    config[last] = value


def place_outputs(trainer: dict[str, Any], out_dir: Path) -> None:
    """Point every output of ``trainer`` at ``out_dir``: its ``default_root_dir``, the folders its
    loggers, callbacks and profiler write to, and a ``ModelCheckpoint`` (added when the config has
    none; checkpointing switched on) that keeps ``out_dir/checkpoints/last.ckpt`` for resuming."""
    trainer["default_root_dir"] = str(out_dir)
    trainer["enable_checkpointing"] = True  # export and resume read last.ckpt
    for key in ("logger", "profiler"):
        for part in _classes(trainer.get(key)):
            _redirect(part, out_dir)
    callbacks = trainer.get("callbacks")
    callbacks = [callbacks] if isinstance(callbacks, dict) else list(callbacks or [])
    checkpoints = [c for c in callbacks if _is_checkpoint(c)]
    if not checkpoints:
        checkpoint = {"class_path": f"lightning.pytorch.callbacks.{CHECKPOINT_CALLBACK}", "init_args": {}}
        callbacks.append(checkpoint)
        checkpoints = [checkpoint]
    for callback in _classes(callbacks):
        _redirect(callback, out_dir)
    for checkpoint in checkpoints:
        checkpoint.setdefault("init_args", {}).update(
            dirpath=str(out_dir / CHECKPOINTS), save_last=True,
            enable_version_counter=False)  # a resume replaces last.ckpt instead of adding last-v1.ckpt
    trainer["callbacks"] = callbacks


def _classes(value: Any) -> list[dict[str, Any]]:
    items = value if isinstance(value, list) else [value]
    return [item for item in items if isinstance(item, dict)]


def _redirect(part: dict[str, Any], out_dir: Path) -> None:
    arguments = part.get("init_args", part)
    for key in OUTPUT_KEYS:
        if key in arguments:
            arguments[key] = str(out_dir)


def _is_checkpoint(callback: Any) -> bool:
    return isinstance(callback, dict) and str(callback.get("class_path", "")).endswith(CHECKPOINT_CALLBACK)


def write_config(config: dict[str, Any], path: Path, about: str) -> None:
    from unitok.atomic import atomic_file

    with atomic_file(path) as tmp:
        tmp.write_text(f"# {about}\n" + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
