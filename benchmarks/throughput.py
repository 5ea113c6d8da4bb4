"""Training throughput: cnnlab's loop against the loop a user would write by hand, on this machine.

    python benchmarks/throughput.py            # prints a table and writes it into BENCHMARKS.md

For each model, both loops train the same net for the same number of steps from the same real data:
(1) cnnlab's Trainer (uint8 tensors in memory, batches gathered by index, channels-last, bf16 autocast
where the CPU has native bf16), (2) a plain loop: a Dataset returning one normalised float tensor
per sample, a shuffling DataLoader, fp32, and (3) a bare loop, the ceiling of (1): its precision and
memory format with nothing but forward, backward and the optimizer. Each figure is the median of
`--repeats` windows; the ratio is computed per repeat, as the machine is shared and noisy. Model
FLOPs (forward + backward, counted by torch's FlopCounterMode) times images/s, against a matmul peak
measured in the same run, gives the utilisation.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import date
from pathlib import Path

import torch
import torch.nn.functional as F
from common import machine, write_block
from torch.utils.data import DataLoader, Dataset
from torch.utils.flop_counter import FlopCounterMode

from cnnlab.config import load_config
from cnnlab.engine import trainer as engine


class PlainDataset(Dataset):
    """What tutorials write: one normalised float tensor per sample."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, mean, std):
        self.x, self.y = x, y
        self.mean = torch.as_tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = torch.as_tensor(std, dtype=torch.float32).view(-1, 1, 1)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return (self.x[i].float() / 255 - self.mean) / self.std, self.y[i].long()


def plain_loop(model: torch.nn.Module, ds: Dataset, batch: int, steps: int) -> float:
    """Images/s of `steps` fp32 training steps fed by a shuffling DataLoader (after 2 warm-up steps)."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = iter(DataLoader(ds, batch_size=batch, shuffle=True, drop_last=True))
    model.train()
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        x, y = next(loader)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return steps * batch / (time.perf_counter() - start)


def bare_loop(model: torch.nn.Module, ds: PlainDataset, batch: int, steps: int, bf16: bool) -> float:
    """The ceiling for cnnlab's loop: the same net and precision, channels-last, fused Adam, inputs
    normalised beforehand, and nothing else (no seeding, augmentation, metrics or logging)."""
    model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    n = (steps + 2) * batch
    x = ds.x[:n].float().div(255).sub(ds.mean).div(ds.std).contiguous(memory_format=torch.channels_last)
    y = ds.y[:n].long()
    model.train()
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x[i * batch : (i + 1) * batch]).float(), y[i * batch : (i + 1) * batch])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * batch / (time.perf_counter() - start)


def cnnlab_loop(trainer: engine.Trainer, steps: int) -> float:
    """Images/s of `steps` steps of cnnlab's own training step (after 2 warm-up steps)."""
    order = engine.epoch_order(0, 0, len(trainer.train_set)).split(trainer.cfg.train.batch_size)
    trainer.model.train()
    for i in range(steps + 2):
        if i == 2:
            start = time.perf_counter()
        trainer.step(order[i])
    return steps * trainer.cfg.train.batch_size / (time.perf_counter() - start)


def train_flops_per_image(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    counter = FlopCounterMode(display=False)
    with counter:
        F.cross_entropy(model(x), y).backward()
    return counter.get_total_flops() / len(x)


def matmul_peak(dtype: torch.dtype, n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    start = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - start)


def bench(task: str, recipe: str, overrides: list[str], steps: int, repeats: int, mean, std) -> dict:
    cfg = load_config(task, recipe, overrides)
    trainer = engine.Trainer(
        cfg, Path("/tmp/cnnlab-bench") / f"{task}-{time.time_ns()}", resume=False, device="cpu", progress=False
    )
    ds = PlainDataset(trainer.train_set.x, trainer.train_set.y, mean, std)
    ours, plain, bare = [], [], []
    for _ in range(repeats):
        ours.append(cnnlab_loop(trainer, steps))
        torch.manual_seed(0)
        plain.append(plain_loop(trainer.task.build_model(cfg), ds, cfg.train.batch_size, steps))
        torch.manual_seed(0)
        bare.append(bare_loop(trainer.task.build_model(cfg), ds, cfg.train.batch_size, steps, trainer.rt.bf16))
    probe = trainer.task.build_model(cfg)
    flops = train_flops_per_image(probe, ds[0][0][None].repeat(2, 1, 1, 1), ds.y[:2].long())
    return {
        "name": f"{task} {cfg.model.name}",
        "batch": cfg.train.batch_size,
        "steps": steps,
        "precision": trainer.rt.describe()["precision"],
        "cnnlab": statistics.median(ours),
        "plain": statistics.median(plain),
        "ratio": statistics.median(o / p for o, p in zip(ours, plain, strict=True)),
        "bare": statistics.median(bare),
        "bare_ratio": statistics.median(b / p for b, p in zip(bare, plain, strict=True)),
        "gflop_per_image": flops / 1e9,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fashion-steps", type=int, default=150)
    ap.add_argument("--facade-steps", type=int, default=6)
    ap.add_argument("--no-write", action="store_true", help="print only, do not update BENCHMARKS.md")
    args = ap.parse_args()

    peaks = {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
    rows = [
        bench("fashion", "seed-a", ["data.limit=12000"], args.fashion_steps, args.repeats, 0.2860, 0.3530),
        bench(
            "facade",
            "unet",
            [
                "data.limit=200",
                "augment.crop_size=null",
                "augment.min_crop=1.0",
                "augment.hflip=false",
                "augment.jitter=0.0",
                "train.batch_size=8",
            ],
            args.facade_steps,
            args.repeats,
            (0.485, 0.456, 0.406),
            (0.229, 0.224, 0.225),
        ),
    ]
    lines = [
        f"Measured {date.today()} on {machine()}, {torch.get_num_threads()} threads; "
        f"`python benchmarks/throughput.py` (median of {args.repeats} repeats).",
        "",
        f"Matmul peak (2048x2048): fp32 {peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s.",
        "",
        "| model | batch | cnnlab img/s | plain loop img/s | cnnlab / plain | bare loop img/s (ceiling) | bare / plain "
        "| cnnlab precision | GFLOP/img (fwd+bwd) | utilisation of the matmul peak of its precision |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        # A bf16 run is held to the bf16 peak: against fp32's it would read above 100%.
        peak = peaks["bf16" if r["precision"].startswith("bf16") else "fp32"]
        util = r["cnnlab"] * r["gflop_per_image"] * 1e9 / peak
        lines.append(
            f"| {r['name']} | {r['batch']} | {r['cnnlab']:.0f} | {r['plain']:.0f} | {r['ratio']:.2f}x | "
            f"{r['bare']:.0f} | {r['bare_ratio']:.2f}x | "
            f"{r['precision']} | {r['gflop_per_image']:.3f} | {util:.0%} |"
        )
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_block("throughput", table)


if __name__ == "__main__":
    main()
