"""Segmenting a user's photo: quality against `--max-side`, and the time and memory of a 12-megapixel photo.

    python benchmarks/segment_photo.py                        # the shipped facade model (~10 min, 2 cores)
    python benchmarks/segment_photo.py --model RUN --baseline REV

Quality: the validation images of the model's own split (never its test images), each enlarged 4x to
1024 px as a high-resolution photo of one facade would be, segmented at each `--max-side`; the
probabilities are brought back to 256 px and scored against the label maps (mean AP, mIoU).

Time and memory: a 12-megapixel JPEG (4000x3000, a validation facade enlarged), segmented in a fresh
process per setting. "Model time" is the segmentation call alone (tiles, views, blending), without
start-up, decoding or writing files; "peak memory" is the process's peak RSS above its RSS just before
segmenting. `--baseline REV` measures the code of a git revision the same way (in a worktree), with the
model it shipped as `facade`, for a before/after ratio in one run.
"""

from __future__ import annotations

import argparse
import inspect
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from common import ROOT, machine, write_block

SIDES = (256, 384, 512, 768, 1024)


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{key}:"):
            return int(line.split()[1]) / 1024
    return 0.0


def child(model_ref: str, photo: str, side: int, tta: bool) -> None:
    """Runs inside the measured process (new or baseline code on sys.path): prints one JSON line."""
    from cnnlab.api import load_model
    from cnnlab.data.images import load_photo
    try:
        from cnnlab.infer import segment as seg
        from cnnlab.sizes import MAX_SIDE, MIN_SIDE
    except ImportError:  # a baseline from before the house issue (cnnlab/segment.py)
        from cnnlab import segment as seg

        MAX_SIDE, MIN_SIDE = seg.MAX_SIDE, seg.MIN_SIDE
    from cnnlab.tasks import get_task

    model, cfg = load_model(model_ref)
    task = get_task(cfg)
    img, _ = load_photo(Path(photo), mode="RGB", min_side=MIN_SIDE, max_side=MAX_SIDE)
    new = "views" in inspect.signature(seg.segment).parameters
    if new:
        from cnnlab.engine.runtime import inference_runtime
        from cnnlab.engine.tta import Views

        args = (side, Views.of(cfg) if tta else Views(), inference_runtime())
    else:
        args = (side,)
    seg.segment(model, task, img[:, :256, :256], *args)  # warm-up: first-call allocations, kernel choice
    Path("/proc/self/clear_refs").write_text("5")  # resets the peak (VmHWM) to the current RSS
    before = _status_mb("VmRSS")
    t = time.perf_counter()
    probs = seg.segment(model, task, img, *args)
    model_s = time.perf_counter() - t
    if new:
        seg.full_size_labels(probs, *img.shape[1:])
    else:
        probs.argmax(0)
    total_s = time.perf_counter() - t
    peak = _status_mb("VmHWM")
    print(json.dumps({"model_s": model_s, "to_labels_s": total_s, "peak_mb": peak - before, "decoded": img.shape[1:]}))


def measure(src: Path, model_ref: str, photo: Path, side: int, tta: bool, repeats: int = 3) -> dict:
    """The fastest of `repeats` fresh processes (the machine is shared), with the largest peak memory."""
    env = {**os.environ, "PYTHONPATH": f"{src}{os.pathsep}{ROOT / 'benchmarks'}"}
    code = f"import segment_photo as b; b.child({model_ref!r}, {str(photo)!r}, {side}, {tta})"
    runs = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = min(runs, key=lambda r: r["model_s"])
    return {**best, "peak_mb": max(r["peak_mb"] for r in runs)}


def quality(model_ref: str, sides: tuple[int, ...]) -> list[tuple[int, float, float, float]]:
    """(side, val mAP, val mIoU, seconds per 1024-px image) for the 4x-enlarged validation images."""
    import torch
    import torch.nn.functional as F

    from cnnlab.api import load_model
    from cnnlab.engine.runtime import inference_runtime
    from cnnlab.infer.segment import segment
    from cnnlab.tasks import get_task

    model, cfg = load_model(model_ref)
    task = get_task(cfg)
    val = task.load_data(cfg, progress=False)["val"]
    rt, rows = inference_runtime(), []
    for side in sides:
        probs, seconds = [], 0.0
        for img in val.x:
            big = F.interpolate(img[None].float(), scale_factor=4.0, mode="bilinear", align_corners=False)
            big = big.round().clamp(0, 255).to(torch.uint8)[0]
            t = time.perf_counter()
            p = segment(model, task, big, side, rt=rt)
            seconds += time.perf_counter() - t
            probs.append(F.interpolate(p[None], size=img.shape[1:], mode="area" if side > 256 else "bilinear"))
        m = task.metrics(torch.cat(probs), val.targets, cfg)
        rows.append((side, m["map"], m["miou"], seconds / len(val.x)))
        print(f"max-side {side}: val mAP {m['map']:.3f}, mIoU {m['miou']:.3f}, {seconds / len(val.x):.2f} s/image")
    return rows


def make_photo(model_ref: str, folder: Path) -> Path:
    """A 4000x3000 JPEG: the first validation facade, enlarged (a stand-in with a real photo's pixel count)."""
    from PIL import Image

    from cnnlab.api import load_model
    from cnnlab.tasks import get_task

    _, cfg = load_model(model_ref)
    img = get_task(cfg).load_data(cfg, progress=False)["val"].x[0]
    path = folder / "facade-12mp.jpg"
    Image.fromarray(img.permute(1, 2, 0).numpy()).resize((4000, 3000), Image.BICUBIC).save(path, quality=92)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="facade", help="run folder or shipped model name")
    parser.add_argument("--baseline", default=None, help="git revision to compare with (its shipped facade)")
    parser.add_argument("--sides", type=int, nargs="+", default=list(SIDES))
    parser.add_argument("--skip-quality", action="store_true")
    args = parser.parse_args()

    from cnnlab.infer.segment import MAX_WORK_SIDE

    lines = []
    if not args.skip_quality:
        rows = quality(args.model, tuple(args.sides))
        lines += [
            "| --max-side | val mAP | val mIoU | model time per 1024-px image |",
            "|---|---|---|---|",
            *(f"| {s} | {m:.3f} | {i:.3f} | {t:.2f} s |" for s, m, i, t in rows),
            "",
        ]
    with tempfile.TemporaryDirectory() as tmp:
        photo = make_photo(args.model, Path(tmp))
        table = ["| code, model | setting | model time | + full-size labels | peak memory above start |"]
        table.append("|---|---|---|---|---|")
        settings = [(s, False) for s in args.sides] + [(MAX_WORK_SIDE, True)]
        if args.baseline:
            tree = Path(tmp) / "baseline"
            subprocess.run(["git", "worktree", "add", "-q", "--detach", str(tree), args.baseline], cwd=ROOT, check=True)
            try:
                r = measure(tree / "src", "facade", photo, 512, False)
                table.append(
                    f"| {args.baseline} (before), its `facade` | 512 px, one size | {r['model_s']:.2f} s | "
                    f"{r['to_labels_s']:.2f} s | {r['peak_mb']:.0f} MB |"
                )
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, check=True)
        for side, tta in settings:
            r = measure(ROOT / "src", args.model, photo, side, tta)
            view = "recipe's test-time views (`--tta`)" if tta else "one view"
            table.append(
                f"| this code, `{args.model}` | {side} px, {view} | {r['model_s']:.2f} s | {r['to_labels_s']:.2f} s | "
                f"{r['peak_mb']:.0f} MB |"
            )
            print(table[-1])
    head = (
        f"Measured {date.today()} on {machine()}; `python benchmarks/segment_photo.py"
        f"{' --baseline ' + args.baseline if args.baseline else ''}`. The 12 MP photo is decoded at 2048x1536 "
        "(JPEG draft), as `predict` and `serve` decode it."
    )
    write_block("segment-photo", "\n".join([head, "", *lines, *table]))


if __name__ == "__main__":
    main()
