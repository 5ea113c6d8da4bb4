"""What the benchmark scripts share: a name for this machine and rewriting their block of BENCHMARKS.md."""

from __future__ import annotations

import os
import platform
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def machine() -> str:
    """CPU model, core count and the bf16 features that decide `precision: auto`, e.g. for a table caption."""
    model, flags = platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    native = [name for flag, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX")) if flag in flags]
    bf16 = ", ".join(native) if native else "no native bf16"
    return f"{model}, {os.cpu_count()} vCPU ({bf16}), torch {torch.__version__}"


def write_block(name: str, table: str) -> None:
    """Replace the text between `<!-- NAME:start -->` and `<!-- NAME:end -->` in BENCHMARKS.md (or append it)."""
    path = ROOT / "BENCHMARKS.md"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    start, end = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    block = f"{start}\n{table}\n{end}"
    text = text.split(start)[0] + block + text.split(end)[1] if start in text else f"{text}\n{block}\n"
    path.write_text(text)
