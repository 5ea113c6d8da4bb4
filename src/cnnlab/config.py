"""Run configuration: typed, strict, loaded from YAML recipes plus `key=value` overrides."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .errors import ConfigError

TaskName = Literal["fashion", "facade"]


class _Strict(BaseModel):
    # Unknown keys are errors: a typo in a recipe must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    dir: str | None = None
    val_fraction: float = Field(0.1, ge=0.0, lt=1.0)
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    limit: int | None = Field(None, gt=0, description="use only this many training images (quick tries)")
    group_key: str = "index-mod:302"


class AugmentConfig(_Strict):
    pad_crop: int = Field(0, ge=0)
    hflip: bool = False
    erase: float = Field(0.0, ge=0.0, le=1.0)
    crop_size: int | None = Field(None, gt=0)
    min_crop: float = Field(1.0, gt=0.0, le=1.0)
    max_crop: float = Field(1.0, gt=0.0, le=1.0)
    jitter: float = Field(0.0, ge=0.0, lt=1.0)
    full_size_epochs: int = Field(0, ge=0, description="segmentation: the last N epochs train on whole images")

    @model_validator(mode="after")
    def _crop_range(self) -> AugmentConfig:
        if self.min_crop > self.max_crop:
            raise ValueError(f"min_crop {self.min_crop} is above max_crop {self.max_crop}")
        return self


class ModelConfig(_Strict):
    name: str = "seed-a"
    activation: Literal["relu", "leaky_relu", "sigmoid"] = "relu"
    width: float = Field(1.0, gt=0.0)


class LossConfig(_Strict):
    name: Literal["ce", "batch-weighted-ce", "freq-weighted-ce"] = "ce"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    dice: float = Field(0.0, ge=0.0)


class OptimConfig(_Strict):
    name: Literal["adam", "adamw", "sgd"] = "adam"
    lr: float = Field(1e-3, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    schedule: Literal["constant", "cosine", "onecycle"] = "constant"
    warmup_fraction: float = Field(0.0, ge=0.0, lt=1.0)


class TrainConfig(_Strict):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    seed: int = 0
    deterministic: bool = True
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool | None = None
    threads: int | None = Field(None, gt=0)
    eval_batch_size: int = Field(512, gt=0)
    checkpoint_every_s: float = Field(60.0, gt=0.0)
    tta_flip: bool = False
    tta_shift: int = Field(
        0, ge=0, description="classification: final evaluations also average over inputs shifted this many px"
    )
    tta_scales: list[float] = Field(
        [1.0],
        min_length=1,
        description="segmentation: final evaluations average over the image resized by each factor",
    )
    tensorboard: bool = False


class RunConfig(_Strict):
    task: TaskName
    recipe: str = "custom"
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _test_time_views_fit_the_task(self) -> RunConfig:
        # Shifted views of a label map would need shifting back; classification has no such map.
        if self.task == "facade" and self.train.tta_shift:
            raise ValueError("train.tta_shift is for classification; facades take train.tta_flip and tta_scales")
        # A 28x28 classifier's head is built for one input size.
        if self.task == "fashion" and self.train.tta_scales != [1.0]:
            raise ValueError("train.tta_scales is for segmentation; classification takes tta_flip and tta_shift")
        if any(not 0.25 <= f <= 4 for f in self.train.tta_scales):
            raise ValueError(f"train.tta_scales {self.train.tta_scales}: each factor must be between 0.25 and 4")
        return self


def recipe_dirs() -> list[Path]:
    """Where named recipes live: inside an installed wheel, or at the root of a source checkout."""
    here = Path(__file__).resolve().parent
    return [d for d in (here / "recipes", here.parents[1] / "recipes") if d.is_dir()]


def recipe_names(task: str) -> list[str]:
    return sorted({p.stem for d in recipe_dirs() for p in (d / task).glob("*.yaml")})


def find_recipe(task: str, recipe: str) -> Path:
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            raise ConfigError(f"{path}: recipe file not found; give a YAML file or one of {recipe_names(task)}")
        return path
    for d in recipe_dirs():
        if (d / task / f"{recipe}.yaml").is_file():
            return d / task / f"{recipe}.yaml"
    raise ConfigError(f"recipe '{recipe}' not found for {task}; choose one of {recipe_names(task)} or a .yaml file")


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read recipe ({str(e).splitlines()[0]}); fix the YAML") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data


def _apply_override(data: dict, item: str) -> None:
    key, sep, raw = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override '{item}': expected section.key=value, e.g. train.epochs=3")
    value = yaml.safe_load(raw) if raw else None
    node = data
    *parents, leaf = key.strip().split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override '{item}': '{part}' is not a section")
    node[leaf] = value


def _validate(data: dict, source: str) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "recipe"
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        raise ConfigError(f"{source}: {where}: {err['msg']}{more}") from None


def load_config(task: str, recipe: str | None = None, overrides: list[str] | tuple[str, ...] = ()) -> RunConfig:
    """Resolve a recipe (name or file) for `task`, apply `section.key=value` overrides, validate."""
    data: dict = {}
    source = "defaults"
    if recipe is not None:
        path = find_recipe(task, recipe)
        data = _read_yaml(path)
        source = str(path)
        data.setdefault("recipe", path.stem)
    if data.setdefault("task", task) != task:
        raise ConfigError(f"{source}: recipe is for task '{data['task']}', not '{task}'")
    for item in overrides:
        _apply_override(data, item)
    return _validate(data, source)


def config_from_dict(data: dict, source: str) -> RunConfig:
    return _validate(data, source)


def dump_config(cfg: RunConfig, path: Path) -> None:
    from .checkpoint import atomic_write

    text = yaml.safe_dump(cfg.model_dump(), sort_keys=False)
    atomic_write(path, lambda tmp: tmp.write_text(text))
