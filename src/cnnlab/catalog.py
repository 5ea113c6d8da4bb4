"""The task names cnnlab knows, and what each stands for before any of it is loaded: its kind, default recipe
and the words the CLI shows. Torch-free, so that `cnnlab --help` builds its commands from it at once; every
other fact of a task (classes, colours, metrics, figures) lives in tasks/."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TaskInfo:
    """What a task name stands for before any of it is loaded."""

    kind: str  # "classify" or "segment"
    default_recipe: str
    title: str  # the line `cnnlab --help` shows
    data_help: str  # what --data takes
    photo_help: str  # what predict does to a person's photo
    builtin: bool = False  # a built-in dataset, with a shipped model of the same name
    external_eval: bool = True  # evaluate --data takes another labelled folder
    activation_sweep: bool = False  # `sweep-activations`, report A's comparison
    # The default where the default's ImageNet weights are not installed, or the images are too small for them
    fallback_recipe: str | None = None


# The two built-in datasets are datasets of the two kinds; "classify" and "segment" read the user's folders.
# Default recipes: seed-a is the Fashion-MNIST course model; unet is the best facade net trained from
# scratch (the seed-a facade net is the assignment's baseline). A folder of one's own images fine-tunes
# an ImageNet backbone (the cnnlab[pretrained] extra), except images under 16 px: BENCHMARKS.md, issue 30.
TASKS = {
    "fashion": TaskInfo(
        "classify", "seed-a", "Fashion-MNIST classification (10 classes, 28x28 grey).",
        "Folder holding the Fashion-MNIST files (default: auto-detect); with --resume: where it is now.",
        "any size or colour; made 28x28 grey", builtin=True, external_eval=False, activation_sweep=True,
    ),
    "facade": TaskInfo(
        "segment", "unet", "Facade segmentation (others, facade, pillar, window, balcony).",
        "Folder of NAME.jpg + NAME.png pairs (default: auto-detect); with --resume: where it is now.",
        "any size; EXIF rotation honoured", builtin=True,
    ),
    "classify": TaskInfo(
        "classify", "finetune", "Classify your own images: a folder with a subfolder per class.",
        "Your image folder: DIR/<class>/*.png|jpg, or DIR/train/<class>/* (optional DIR/val/, DIR/test/ alike).",
        "any size; resized as in training", fallback_recipe="small",
    ),
    "segment": TaskInfo(
        "segment", "unet", "Segment your own images: a folder of images, masks and classes.yaml.",
        "Your folder: DIR/images/NAME.jpg, DIR/masks/NAME.png, DIR/classes.yaml (optional val/, test/).",
        "any size; EXIF rotation honoured",
    ),
}  # fmt: skip
