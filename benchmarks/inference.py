"""Inference speed of the shipped Fashion-MNIST model: the whole official test set (10,000 images), one view.

    python benchmarks/inference.py             # prints a table and writes it into BENCHMARKS.md

Times `evaluation.predict` (what `cnnlab fashion evaluate` and the reports run) at the shipped config's
eval batch size and at 1000 images a batch (the size shipped before), in the same process; each figure
is the best of `--repeats` passes after one warm-up pass. Data loading is not timed.
"""

from __future__ import annotations

import argparse
import time
from datetime import date

import torch
from common import machine, write_block

from cnnlab.engine.checkpoint import load_model
from cnnlab.engine.evaluation import predict
from cnnlab.engine.runtime import inference_runtime
from cnnlab.tasks import get_task
from cnnlab.zoo import resolve_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-write", action="store_true", help="print only, do not update BENCHMARKS.md")
    args = ap.parse_args()

    model, cfg = load_model(resolve_model(None, "fashion"), "best", "cpu")
    task = get_task(cfg)
    test = task.load_data(cfg, progress=False)["test"]
    rt = inference_runtime()
    model = model.to(memory_format=torch.channels_last)
    rows = []
    for batch in (cfg.train.eval_batch_size, 1000):
        probs = predict(model, task, test.x, rt, batch)
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            predict(model, task, test.x, rt, batch)
            seconds.append(time.perf_counter() - start)
        acc = float((probs.argmax(1) == test.targets).float().mean())
        rows.append((batch, min(seconds), acc))
    lines = [
        f"Measured {date.today()} on {machine()}, {torch.get_num_threads()} threads, "
        f"{rt.describe()['precision']}; `python benchmarks/inference.py` (best of {args.repeats}).",
        "",
        "| shipped `fashion` model, 10,000 test images, one view | batch | seconds | images/s | test accuracy |",
        "|---|---|---|---|---|",
        *(
            f"| {'as shipped' if b == cfg.train.eval_batch_size else 'before (eval batch 1000)'} | {b} | {s:.2f} | "
            f"{len(test) / s:,.0f} | {a:.2%} |"
            for b, s, a in rows
        ),
    ]
    table = "\n".join(lines)
    print(table)
    if not args.no_write:
        write_block("inference", table)


if __name__ == "__main__":
    main()
