"""The decoded-image cache of folder datasets: decode time, second start, training from the map.

    python benchmarks/cache.py               # writes BENCHMARKS.md (about 5 minutes)
    python benchmarks/cache.py --no-write --images 2000 --big 0

Real images: Fashion-MNIST's training images written as a class-folder set of PNGs (`--images` of them
at 28 px; `--big` of them upscaled to 128 px for the memory test). Measures, in one run on one machine:
1. decoding a folder into the cache, per 10,000 images (first start);
2. the second start: the same folder again, mapped from the cache;
3. training throughput (img/s, resnet, one process) with batches read from the memory map against the
   same tensors held in memory;
4. a set larger than the memory the process may use: `cnnlab classify train` under RLIMIT_DATA (which
   counts the process's own heap, not read-only file maps; RLIMIT_AS would count the map itself) trains
   from the map, and the same run with `data.cache: false` (decoding into memory) fails.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import torch
from common import machine, write_block
from PIL import Image

from cnnlab.config import load_config
from cnnlab.data import fashion
from cnnlab.tasks import get_task

BIG_SIDE = 128  # px: 60,000 of them decode to 983 MB


def write_folder(dest: Path, count: int, side: int) -> None:
    """The first `count` Fashion-MNIST training images as DEST/train/<class>/NNNNN.png of `side` px."""
    split = fashion.read_split(fashion.locate(), "train")
    for i in range(count):
        folder = dest / "train" / f"{int(split.y[i])}-{fashion.CLASSES[int(split.y[i])].split('/')[0]}"
        folder.mkdir(parents=True, exist_ok=True)
        img = Image.fromarray(split.x[i, 0].numpy())
        if side != 28:
            img = img.resize((side, side), Image.Resampling.BILINEAR)
        img.save(folder / f"{i:05d}.png", compress_level=1)


def load(folder: Path) -> tuple[float, dict]:
    cfg = load_config("classify", "small", [f"data.dir={folder}"])
    start = time.perf_counter()
    data = get_task(cfg).load_data(cfg, progress=False)
    return time.perf_counter() - start, data


def throughput(x, y, steps: int = 30, batch: int = 256) -> float:
    """img/s of resnet training steps on random batches of `x` (a tensor, or Rows of the map)."""
    torch.manual_seed(0)
    cfg = load_config("classify", "small", ["data.dir=unused"])
    cfg.data.classes, cfg.data.channels, cfg.data.image_size = [str(i) for i in range(10)], 1, 28
    cfg.data.mean, cfg.data.std = [0.286], [0.353]
    task = get_task(cfg)
    model = task.build_model(cfg)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(len(y), (batch,), generator=gen)
        loss = torch.nn.functional.cross_entropy(model(task.normalise(x[idx])), y[idx])
        loss.backward()
        opt.step()
        opt.zero_grad()
    return steps * batch / (time.perf_counter() - start)


def limited(folder: Path, limit_bytes: int, cache: bool, log: Path) -> int:
    """Exit code of a short `cnnlab classify train` on `folder` with the heap limited to `limit_bytes`."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (limit_bytes, limit_bytes))

    cmd = [sys.executable, "-m", "cnnlab", "classify", "train", "--data", str(folder), "--max-steps", "20",
           "--batch-size", "16", "--no-progress", "--out", str(log.with_suffix("")), "--set", f"data.cache={cache}"]  # fmt: skip
    with open(log, "w") as out:
        return subprocess.run(cmd, stdout=out, stderr=out, preexec_fn=limit, env=os.environ).returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=10_000, help="images for the timing rows (28 px)")
    parser.add_argument("--big", type=int, default=60_000, help="images for the memory test (128 px); 0: skip")
    parser.add_argument("--limit-mb", type=int, default=800, help="RLIMIT_DATA of the memory test")
    parser.add_argument("--no-write", action="store_true", help="print only; leave BENCHMARKS.md alone")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["CNNLAB_CACHE_DIR"] = str(root / "cache")
        write_folder(root / "small", args.images, 28)
        first, data = load(root / "small")
        second, data = load(root / "small")
        rows.append(f"| decode {args.images:,} PNGs (28x28 grey) into the cache | {first:.1f} s "
                    f"({first * 10_000 / args.images:.1f} s per 10k) | |")  # fmt: skip
        rows.append(f"| second start: map the same folder | {second:.2f} s | {first / second:.0f}x faster |")
        train = data["train"]
        held = train.x.materialize()
        throughput(held, train.targets, steps=5)  # warm-up: the first steps build the kernels
        # Alternated, best of two: the machine is shared and noisy.
        rates = [throughput(x, train.targets) for _ in range(2) for x in (train.x, held)]
        mapped_rate, memory_rate = max(rates[0::2]), max(rates[1::2])
        rows.append(f"| training, batches read from the memory map | {mapped_rate:,.0f} img/s | "
                    f"{mapped_rate / memory_rate:.2f}x of in memory ({memory_rate:,.0f} img/s) |")  # fmt: skip
        if args.big:
            write_folder(root / "big", args.big, BIG_SIDE)
            size = args.big * BIG_SIDE * BIG_SIDE
            limit = args.limit_mb * 2**20
            mapped = limited(root / "big", limit, True, root / "mapped.log")
            memory = limited(root / "big", limit, False, root / "memory.log")
            rows.append(
                f"| {args.big:,} images at {BIG_SIDE}x{BIG_SIDE} ({size / 2**20:,.0f} MB decoded) under RLIMIT_DATA "
                f"{args.limit_mb} MB | from the map: {'trains' if mapped == 0 else f'fails ({mapped})'} | "
                f"in memory (data.cache: false): {'fails' if memory else 'trains'} (exit {memory}) |"
            )
            if mapped != 0:
                print((root / "mapped.log").read_text()[-2000:], file=sys.stderr)
    table = "\n".join(
        [f"Measured {date.today()} on {machine()} (`python benchmarks/cache.py`).", "",
         "| what | measured | compared |", "|---|---|---|", *rows]  # fmt: skip
    )
    print(table)
    if not args.no_write:
        write_block("cache", "## Folder datasets: the decoded-image cache\n\n" + table)


if __name__ == "__main__":
    main()
