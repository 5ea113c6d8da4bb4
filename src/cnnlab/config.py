"""Run configuration: typed, strict, loaded from YAML recipes plus `key=value` overrides."""

from __future__ import annotations

import difflib
import re
import types
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from .catalog import TASKS
from .errors import ConfigError
from .yaml_input import excerpt, load_yaml, yaml_problem

TaskName = Literal["fashion", "facade", "classify", "segment"]


KINDS = {name: info.kind for name, info in TASKS.items()}
# What a folder run learns from its data (and writes into its resolved config); fixed for a built-in dataset.
DATA_FACTS = ("image_size", "channels", "classes", "colors", "mean", "std", "ignore_index")


class _Strict(BaseModel):
    # Unknown keys are errors: a typo in a recipe must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Strict):
    dir: str | None = None
    # Best checkpoint, curves and report need validation data: an empty share would fail only after training.
    val_fraction: float = Field(0.1, gt=0.0, lt=1.0, description="share held out for validation (> 0)")
    test_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    limit: int | None = Field(None, gt=0, description="use only this many training images (quick tries)")
    group_key: str | None = Field(
        None,
        description="files of one group (one scene, building, object) stay in one split: index-mod:N, "
        "regex:PATTERN (on file names without suffix), csv (classification: DIR/groups.csv of file,group rows) "
        "or file (default: the dataset's, else file)",
    )
    image_size: int | None = Field(
        None, ge=4, le=4096, description="folders: images resized to this side (default: the median, capped)"
    )
    channels: Literal[1, 3] | None = Field(None, description="folders: 1 grey or 3 RGB (default: detected)")
    classes: list[str] | None = Field(None, min_length=2, description="folders: class names (default: the folders')")
    colors: list[str] | None = Field(None, description="folders: '#RRGGBB' per class (figures, overlays)")
    mean: list[float] | None = Field(None, description="folders: per-channel mean of pixel/255 (default: measured)")
    std: list[float] | None = Field(None, description="folders: per-channel std of pixel/255 (default: measured)")
    ignore_index: int | None = Field(None, ge=0, le=255, description="segment folders: mask value left out")
    skip_bad: bool = Field(False, description="folders: skip unreadable files (listed in the run) instead of stopping")
    cache: bool = Field(True, description="folders: decode once into a uint8 memory-mapped cache")
    check: bool = Field(True, description="warn before training when val or test images have exact copies in training")

    @model_validator(mode="after")
    def _facts_agree(self) -> DataConfig:
        n = len(self.classes) if self.classes else None
        if self.colors is not None:
            if n is not None and len(self.colors) != n:
                raise ValueError(f"data.colors has {len(self.colors)} colours for {n} classes")
            if bad := [c for c in self.colors if not re.fullmatch(r"#[0-9a-fA-F]{6}", c)]:
                raise ValueError(f"data.colors: {bad[0]!r} is not a colour; write '#RRGGBB'")
        for key in ("mean", "std"):
            value = getattr(self, key)
            if value is not None and self.channels is not None and len(value) != self.channels:
                raise ValueError(f"data.{key} has {len(value)} values for {self.channels} channels")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError("data.std: every value must be above 0")
        return self


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
    # None: the model's own default. A value the chosen model does not take is refused (models/__init__.py).
    activation: Literal["relu", "leaky_relu", "sigmoid"] | None = None
    width: float | None = Field(None, gt=0.0)
    pretrained: bool = Field(False, description="start the encoder from ImageNet weights (cnnlab[pretrained])")
    # ImageNet classifiers (lite0/1/2): the side the backbone sees (default: its own), dropout before the last
    # layer (0.2), and what stays fixed: backbone (a probe on cached features), bn (its statistics) or none.
    input_size: int | None = Field(None, ge=32, le=1024)
    dropout: float | None = Field(None, ge=0.0, lt=1.0)
    freeze: Literal["none", "bn", "backbone"] | None = None


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
    encoder_lr: float = Field(1.0, gt=0.0, le=1.0, description="the pretrained encoder's rate as a share of lr")
    clip_grad: float | None = Field(None, gt=0.0, description="cap each step's gradient norm (tames early spikes)")


class TrainConfig(_Strict):
    epochs: int = Field(10, gt=0)
    batch_size: int = Field(64, gt=0)
    seed: int = Field(0, ge=0, le=2**32 - 1)
    deterministic: bool = True
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    channels_last: bool | None = None
    threads: int | None = Field(None, gt=0)
    eval_batch_size: int = Field(512, gt=0)
    checkpoint_every_s: float = Field(60.0, gt=0.0)
    tta_flip: bool = False
    head_epochs: int = Field(0, ge=0, description="ImageNet classifiers: N first epochs train the head alone")
    tta_shift: int = Field(
        0, ge=0, description="classification: final evaluations also average over inputs shifted this many px"
    )
    tta_scales: list[float] = Field(
        [1.0],
        min_length=1,
        description="segmentation: final evaluations average over the image resized by each factor",
    )
    tensorboard: bool = False
    test: bool = Field(
        True,
        description="evaluate the best checkpoint on the test split at the end; a tune study's trials do not "
        "(the study reads the best trial's test split once, when it ends)",
    )
    dist_timeout_s: float = Field(
        1800.0,
        gt=0.0,
        description="many processes (torchrun): how long one waits for the others in a collective before the "
        "run stops with an error; must exceed process 0's longest validation and end-of-run figures",
    )


ReportLevel = Literal["full", "summary", "none"]
REPORTS: tuple[str, ...] = get_args(ReportLevel)


class ExplainConfig(_Strict):
    report: ReportLevel = Field(
        "full",
        description="full: every figure, with a PDF copy, and the explanations; summary: the curves and each "
        "split's figures as PNG, no explanations (a quick run's report at a fraction of its training); none: "
        "metrics and checkpoints only, no figures or report.html (search trials); `evaluate --report full` "
        "draws the rest later",
    )
    figures: bool = Field(True, description="a full report explains the model: class maps, feature maps, calibration")
    embedding: Literal["pca", "tsne", "none"] = Field(
        "pca", description="classification: 2-D map of the penultimate features (tsne: clearer, ~20 s more)"
    )
    embedding_points: int = Field(2000, ge=10, le=20000, description="images in the embedding plot")


class RunConfig(_Strict):
    task: TaskName
    recipe: str = "custom"
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    train: TrainConfig = TrainConfig()
    explain: ExplainConfig = ExplainConfig()

    @property
    def kind(self) -> str:
        """ "classify" or "segment"."""
        return KINDS[self.task]

    @model_validator(mode="after")
    def _settings_fit_the_task(self) -> RunConfig:
        # Shifted views of a label map would need shifting back; classification has no such map.
        if self.kind == "segment" and self.train.tta_shift:
            raise ValueError("train.tta_shift is for classification; segmentation takes train.tta_flip and tta_scales")
        # A classifier's head is built for one input size.
        if self.kind == "classify" and self.train.tta_scales != [1.0]:
            raise ValueError("train.tta_scales is for segmentation; classification takes tta_flip and tta_shift")
        given = [k for k in DATA_FACTS if getattr(self.data, k) is not None]
        if self.task in ("fashion", "facade") and given:
            raise ValueError(f"data.{given[0]} is fixed for the built-in {self.task} data; it is for folders")
        if self.kind == "classify" and self.data.ignore_index is not None:
            raise ValueError("data.ignore_index is for segmentation")
        if self.task == "fashion" and self.data.group_key:
            raise ValueError("data.group_key is for folders and facades; Fashion-MNIST's images share no scenes")
        if self.model.freeze == "backbone" and (self.augment.pad_crop or self.augment.erase):
            raise ValueError("augment.pad_crop and augment.erase: a frozen backbone's features are computed once, "
                             "so only augment.hflip applies; remove them or use model.freeze bn")  # fmt: skip
        if any(not 0.25 <= f <= 4 for f in self.train.tta_scales):
            raise ValueError(f"train.tta_scales {self.train.tta_scales}: each factor must be between 0.25 and 4")
        return self


def recipe_dirs() -> list[Path]:
    """Where named recipes live: inside an installed wheel, or at the root of a source checkout."""
    here = Path(__file__).resolve().parent
    return [d for d in (here / "recipes", here.parents[1] / "recipes") if d.is_dir()]


def _recipe_folders(task: str) -> list[str]:
    """Where `task`'s recipe names are looked up: its own folder; a folder task also takes the recipes of
    the built-in dataset of its kind (`cnnlab segment train --recipe fast` is the facade recipe)."""
    builtin = [t for t, info in TASKS.items() if info.builtin and info.kind == KINDS[task] and t != task]
    return [task, *builtin]


def recipe_names(task: str) -> list[str]:
    """The named recipes of `task` (file stems), sorted."""
    return sorted({p.stem for d in recipe_dirs() for t in _recipe_folders(task) for p in (d / t).glob("*.yaml")})


def find_recipe(task: str, recipe: str) -> Path:
    """The YAML file of a recipe name or path; ConfigError naming the choices if there is none."""
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml"):
        if not path.is_file():
            names = ", ".join(recipe_names(task))
            raise ConfigError(f"{path}: recipe file not found; give a YAML file or one of {names}")
        return path
    candidates = (d / t / f"{recipe}.yaml" for t in _recipe_folders(task) for d in recipe_dirs())
    if found := next((p for p in candidates if p.is_file()), None):
        return found
    names = recipe_names(task)
    near = difflib.get_close_matches(recipe, names, n=1, cutoff=0.6)
    hint = f"did you mean {near[0]}? Or choose one of" if near else "choose one of"
    raise ConfigError(f"recipe {excerpt(recipe)} not found for {task}; {hint} {', '.join(names)} or a .yaml file")


def _read_yaml(path: Path) -> dict:
    try:
        data = load_yaml(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read recipe ({yaml_problem(e)}); fix the YAML") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of sections, got {type(data).__name__}")
    return data or {}


@dataclass(frozen=True)
class Override:
    """One value the user set on top of the recipe, and how they wrote it (named in error messages)."""

    key: str  # dotted, e.g. "optim.lr"
    value: Any
    written: str  # e.g. "--set optim.lr=3e-4" or "--epochs 0"


def _fields(model: type[BaseModel] | None = None, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every dotted key of the configuration with its type annotation."""
    for name, field in (model or RunConfig).model_fields.items():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _fields(field.annotation, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", field.annotation


def config_keys() -> list[str]:
    """Every dotted key an override or a recipe may set, e.g. "optim.lr"."""
    return [key for key, _ in _fields()]


def _did_you_mean(key: str) -> str:
    keys = config_keys()
    leaf = key.rsplit(".", 1)[-1]
    # A known key under another section (`lr` for optim.lr), else the nearest spelling: of a section
    # when no section was given, of a dotted key otherwise.
    near = [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    candidates = keys if "." in key else sorted({k.split(".")[0] for k in keys})
    near = near or difflib.get_close_matches(key, candidates, n=1)
    return f"; did you mean {near[0]}?" if near else "; src/cnnlab/config.py lists every key"


def _takes_text(annotation: Any) -> bool:
    """Whether a field holds free text, so that its value must be taken as written, not read as YAML."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):  # str | None
        return str in typing.get_args(annotation)
    return annotation is str


def parse_override(item: str) -> Override:
    """`section.key=value` -> Override. The value is typed by the field it sets: text fields (paths,
    names) take it verbatim ("data/fm #2", "2024", "on"); other fields read it as YAML (3e-4, true,
    [0.75, 1.0]); an empty value is None."""
    written = f"--set {item}"
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"{written}: expected section.key=value, e.g. --set train.epochs=3")
    types_ = dict(_fields())
    if key not in types_:
        if any(k.startswith(key + ".") for k in types_):
            raise ConfigError(f"{written}: {key} is a section; set one of its keys, e.g. --set {key}.<key>=VALUE")
        raise ConfigError(f"{written}: unknown key {key}{_did_you_mean(key)}")
    if not raw:
        return Override(key, None, written)
    if _takes_text(types_[key]):
        return Override(key, raw, written)
    if "#" in raw:
        raise ConfigError(f"{written}: '#' is not part of a {key} value; remove it")
    try:
        return Override(key, load_yaml(raw), written)
    except yaml.YAMLError as e:
        raise ConfigError(
            f"{written}: cannot read the value ({yaml_problem(e)}); write e.g. 3, 3e-4, true or [1, 2]"
        ) from None


def _apply(data: dict, override: Override) -> None:
    node = data
    *parents, leaf = override.key.split(".")
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{override.written}: the recipe's '{part}' is not a section; fix the recipe")
    node[leaf] = override.value


def _validate(data: dict, source: str, overrides: Sequence[Override] = ()) -> RunConfig:
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        if (named := re.match(r"([a-z_]+\.[a-z_]+)\b", msg)) and named.group(1).startswith(where):
            where = named.group(1)  # a check across fields starts its message with the key at fault
        # Blame what the user typed for this key, if they typed it; else the recipe file.
        written = next((o.written for o in reversed(overrides) if o.key == where), None)
        if err["type"] == "extra_forbidden":
            msg = f"unknown key{_did_you_mean(where)}"
        more = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
        if written:
            raise ConfigError(f"{written}: {msg}{more}") from None
        prefix = "" if msg.startswith(f"{where} ") else f"{where or 'recipe'}: "
        raise ConfigError(f"{source}: {prefix}{msg}{more}") from None


def load_config(task: str, recipe: str | None = None, overrides: Sequence[str | Override] = ()) -> RunConfig:
    """Resolve a recipe (name or file) for `task`, apply overrides (`section.key=value` text or
    typed `Override`s, later ones win), validate."""
    data: dict = {}
    source = "defaults"
    if recipe is not None:
        path = find_recipe(task, recipe)
        data = _read_yaml(path)
        data.pop("tune", None)  # the recipe's search space: study/space.py reads it
        source = str(path)
        data.setdefault("recipe", path.stem)
    if data.setdefault("task", task) != task:
        raise ConfigError(f"{source}: recipe is for task '{data['task']}', not '{task}'")
    parsed = [o if isinstance(o, Override) else parse_override(o) for o in overrides]
    for override in parsed:
        _apply(data, override)
    return _validate(data, source, parsed)


def config_from_dict(data: Any, source: str) -> RunConfig:
    """Validate an already-parsed configuration (e.g. a run's config.yaml); `source` names it in errors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    return _validate(_upgrade(data), source)


def _upgrade(data: dict) -> dict:
    """A run folder's config as this version reads it. Runs before the folder datasets wrote every default:
    the facade group key in classification runs, and an activation and width for models that take neither
    (the values then meant "the model's default", which None means now)."""
    data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    d, m = data.get("data"), data.get("model")
    if isinstance(d, dict) and data.get("task") == "fashion" and d.get("group_key") == "index-mod:302":
        d["group_key"] = None
    if isinstance(m, dict):
        if m.get("activation") == "relu":
            m["activation"] = None
        if m.get("width") == 1.0:
            m["width"] = None
    return data


def dump_config(cfg: RunConfig, path: Path) -> None:
    """Write the resolved configuration as YAML, atomically."""
    from .outputs import atomic_write

    text = yaml.safe_dump(cfg.model_dump(), sort_keys=False)
    atomic_write(path, lambda tmp: tmp.write_text(text))
