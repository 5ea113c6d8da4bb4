"""Where and how a run computes: device, precision (bf16 autocast where the hardware has it), memory
format, threads, and the environment record written into each run."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass
from typing import Any

import torch

from .. import __version__
from ..config import RunConfig
from ..errors import ConfigError

_DEFAULT_THREADS = torch.get_num_threads()  # one per physical core: what torch picks, before any run changes it


@dataclass
class Runtime:
    device: torch.device
    bf16: bool
    channels_last: bool
    threads: int

    def autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def describe(self) -> dict[str, Any]:
        return {
            "device": str(self.device),
            "precision": "bf16-autocast" if self.bf16 else "fp32",
            "channels_last": self.channels_last,
            "threads": self.threads,
        }


def _bf16_fast(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # Without native bf16 (AMX / AVX512-BF16) autocast emulates it and is slower than fp32.
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def make_runtime(cfg: RunConfig, device: str = "cpu", local_rank: int = 0) -> Runtime:
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--device cuda: no CUDA GPU is visible to PyTorch here; use --device cpu")
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
    dev = torch.device(device)
    torch.set_num_threads(cfg.train.threads or _DEFAULT_THREADS)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        # Deterministic mode also fills every new tensor with NaN to expose reads of uninitialised
        # memory, a debugging aid that took 11% of a ResNet training step here; results are the same
        # without it.
        torch.utils.deterministic.fill_uninitialized_memory = False
    bf16 = cfg.train.precision == "bf16" or (cfg.train.precision == "auto" and _bf16_fast(dev))
    # Measured on the 2-core CPU: channels_last speeds every conv net here 1.3-2.5x (BENCHMARKS.md).
    cl = True if cfg.train.channels_last is None else cfg.train.channels_last
    return Runtime(dev, bf16, cl, torch.get_num_threads())


def inference_runtime(device: str = "cpu") -> Runtime:
    """How to run a trained model on users' inputs: bf16 where the hardware has it, channels-last, and no
    process-wide settings changed (a server shares the process)."""
    dev = torch.device(device)
    return Runtime(dev, _bf16_fast(dev), True, torch.get_num_threads())


def environment(rt: Runtime) -> dict[str, Any]:
    return {
        "cnnlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        **rt.describe(),
    }
