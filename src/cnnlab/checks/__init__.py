"""`cnnlab check`: what is wrong with a data set before the first epoch. Duplicates (exact and near, within
and across splits, and what a random split would leak), the `data.group_key` rule that keeps them on one
side, labels the rest of the data disputes (labels.py), class balance, and for a person's folder the files
themselves.

`run_check` returns the findings (what check.json holds, plus thumbnails of the images they name);
`report.check_page` draws check.html from them.
"""

from __future__ import annotations

import csv
import io
import time
from collections import Counter
from dataclasses import dataclass, field
from html import escape
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..config import RunConfig
from ..data import Split
from ..data.splits import digests as pixel_digests
from ..outputs import atomic_write, write_json
from ..tasks import Task, get_task
from . import duplicates as dup
from . import labels as lab
from .files import check_files
from .rules import random_split_leak, suggest_rule

SPLITS = ("train", "val", "test")
SHOWN = 60  # groups with thumbnails on the page (check.json lists all)
SHOWN_MEMBERS = 12  # thumbnails of one group: a cluster of thousands of blank frames needs no more
MAX_PAIRS = 10_000  # near pairs listed in check.json, most similar first (the counts cover all)
THUMB = 96  # px, the longer side of a thumbnail


@dataclass
class Findings:
    """What `cnnlab check` found: `report` as check.json holds it (in `folder`), `thumbs` PNGs of the images its
    groups name (key "split/index"), `groups_csv` rows for data.group_key=csv where no rule was found,
    `leaks` the images with a duplicate in an earlier split."""

    report: dict[str, Any]
    folder: Path
    thumbs: dict[str, bytes] = field(default_factory=dict)
    groups_csv: list[list[str]] | None = None

    @property
    def leaks(self) -> int:
        return sum(self.report["duplicates"]["across_splits"].values())

    def _repr_html_(self) -> str:  # a notebook shows the console's summary and where the page is
        lines = [*summary(self.report), str(self.folder / "check.html")]
        return f"<pre>{escape(chr(10).join(lines))}</pre>"


def _thumb(x: torch.Tensor) -> bytes:
    x = x if x.shape[-1] * x.shape[-2] >= THUMB * THUMB // 4 else F.interpolate(x[None].float(), scale_factor=2)[0]
    arr = x.to(torch.uint8).numpy()
    im = Image.fromarray(arr[0]) if len(arr) == 1 else Image.fromarray(arr.transpose(1, 2, 0))
    im.thumbnail((THUMB, THUMB))
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def _balance(task: Task, data: dict[str, Split]) -> dict[str, Any]:
    """How much each split holds of each class (images, or shares of pixels), and weights for the training
    split's classes that make each class count alike (n / (k * amount)), as a weighted loss takes them."""
    amounts = {s: task.class_balance(d) for s, d in data.items() if len(d)}
    train = torch.tensor(amounts["train"], dtype=torch.float64)
    # A class without training data gets no weight: there is nothing of it to weigh.
    weights = torch.where(train > 0, train.sum() / (len(train) * train.clamp_min(1e-12)), 0.0).tolist()
    return {"classes": list(task.classes), "unit": task.balance_unit, "amounts": amounts, "suggested_weights": weights}


def run_check(
    cfg: RunConfig,
    out: Path,
    *,
    source: str,
    progress: bool = True,
    threshold: float | None = None,
    labels: bool = True,
    label_threshold: float | None = None,
    run: Path | None = None,
) -> Findings:
    """Check the data `cfg` names (its splits as a run would make them); `save` writes the findings into
    `out`. `labels`: look for label issues too (`label_threshold`, default labels.THRESHOLD); `run`: the run folder
    `cfg` came from, whose model judges a segmentation set's masks."""
    started = time.perf_counter()
    task = get_task(cfg)
    cfg.data.skip_bad = True  # a bad file is a finding here, not the end
    data = task.load_data(cfg, progress)
    data = {s: data[s] if s in data else data["train"].subset(torch.arange(0)) for s in SPLITS}  # no test/: empty
    loaded = time.perf_counter()
    where = [(s, i) for s in SPLITS for i in range(len(data[s]))]
    # Built-in sets without file names are named by split and row.
    names = [n for s in SPLITS for n in (data[s].names or [f"{s}/{i}" for i in range(len(data[s]))])]
    digests = [d for s in SPLITS for d in pixel_digests(data[s].x)]

    exact_pairs = dup.exact_pairs(digests)
    exact = dup.connected(len(names), exact_pairs)
    kind, threshold, loose, found = _near(task, data, digests, threshold, progress)
    near = [p for p in found if p[2] >= threshold]
    pairs = exact_pairs + [(i, j) for i, j, _ in near]
    groups = dup.connected(len(names), pairs)
    searched = time.perf_counter()

    across = _across(pairs, where)
    across_loose = _across(exact_pairs + [(i, j) for i, j, _ in found], where)
    by = [task.stratify_by(data[s]) for s in SPLITS]
    strata = None if by[0] is None else torch.cat(by)
    random = random_split_leak(len(names), pairs, strata, cfg.data.val_fraction, cfg.train.seed)
    rule = suggest_rule(names, pairs)

    def member(i: int) -> dict[str, Any]:
        return {"split": where[i][0], "index": where[i][1], "name": names[i]}

    report = {
        "source": source,
        "task": cfg.task,
        "kind": task.kind,
        "images": {s: len(data[s]) for s in SPLITS},
        "skipped_files": list(getattr(task, "skipped", [])),
        "duplicates": {
            "embedding": kind,
            "threshold": threshold,
            "exact_groups": [[member(i) for i in g] for g in exact],
            "near_pairs": [[member(i), member(j), round(s, 4)] for i, j, s in near[:MAX_PAIRS]],
            "near_pair_count": len(near),
            "groups": [[member(i) for i in g] for g in _cross_first(groups, where)],
            "across_splits": across,
            "loose_threshold": loose,
            "across_splits_loose": across_loose,
            "random_split": random,
            "rule": rule,
        },
        "balance": _balance(task, data),
    }
    if labels:
        report["labels"] = _labels(task, cfg, data, kind, run, progress, label_threshold or lab.THRESHOLD)
        for row in report["labels"].get("issues", []):
            row.update(member(row.pop("row")))
    if cfg.data.dir is not None:
        report["files"] = check_files(Path(cfg.data.dir), progress)
    report["seconds"] = {
        "load": round(loaded - started, 2),
        "duplicates": round(searched - loaded, 2),
        **({"labels": report["labels"].get("seconds", 0.0)} if labels else {}),
        "total": round(time.perf_counter() - started, 2),
    }
    rows = None
    if pairs and rule is None and task.groups_csv and cfg.data.dir is not None:
        rows = _group_rows(names, groups, cfg.data.dir)
        report["duplicates"]["groups_csv"] = str(out / "groups.csv")
    shown = [g[:SHOWN_MEMBERS] for g in [*_cross_first(groups, where)[:SHOWN], *exact[:SHOWN]]]
    issues = report.get("labels", {}).get("issues", [])[:SHOWN]
    shown.append([where.index((r["split"], r["index"])) for r in issues])
    thumbs = {
        f"{where[i][0]}/{where[i][1]}": _thumb(data[where[i][0]].x[where[i][1]])
        for i in sorted({i for g in shown for i in g})
    }
    return Findings(report, out, thumbs, rows)


def _near(
    task: Task, data: dict[str, Split], digests: list[bytes], threshold: float | None, progress: bool
) -> tuple[str, float, float, list[tuple[int, int, float]]]:
    """(embedding kind, threshold, loose threshold, pairs at the loose one) of the near duplicates among
    all splits pooled; pairs of identical pixels are left to the exact ones."""
    kind = dup.embedding_kind(task, data["train"].x)
    splits = [data[s].x for s in SPLITS if len(data[s])]
    emb = torch.cat([dup.embed(task, x, kind, progress) for x in splits])
    coarse = None
    if kind == "backbone":
        emb = F.normalize(emb - emb.mean(0), dim=1)
    else:
        coarse = torch.cat([dup.pixel_rows(x, dup.COARSE_SIDE) for x in splits])
    strict, loose = dup.THRESHOLDS[kind]
    threshold = strict if threshold is None else threshold
    loose = min(threshold, loose)
    found = dup.near_pairs(emb, loose, coarse, progress)
    return kind, threshold, loose, [p for p in found if digests[p[0]] != digests[p[1]]]


def _labels(
    task: Task, cfg: RunConfig, data: dict[str, Split], kind: str, run: Path | None, progress: bool, threshold: float
) -> dict[str, Any]:
    """Label issues of every split pooled (rows in the order of `where`), each with given and suggested class."""
    present = [s for s in SPLITS if len(data[s])]
    if task.label_maps:
        if run is None:
            return {
                "skipped": "masks are judged by a trained model: check a segmentation run's folder (cnnlab check RUN)"
            }
        from ..engine.checkpoint import load_model

        started = time.perf_counter()
        model, _ = load_model(run)
        scores = np.concatenate([lab.mask_quality(task, model, data[s].x, data[s].y, progress) for s in present])
        order = np.argsort(scores, kind="stable")[: lab.SHOWN]
        return {
            "method": f"per-image label quality (cleanlab, softmin over pixels) against {run}'s predictions",
            "issues": [{"row": int(i), "quality": round(float(scores[i]), 4)} for i in order],
            "seconds": round(time.perf_counter() - started, 2),
        }
    given = torch.cat([data[s].targets for s in present]).numpy()
    features = None
    if kind == "backbone":  # read back from the cache the near-duplicate search filled
        features = torch.cat([dup.embed(task, data[s].x, kind, False) for s in present])
    x = torch.cat([torch.as_tensor(data[s].x[:]) for s in present]) if features is None else None
    found = lab.classify_issues(task, cfg, x, given, features, progress, threshold)
    for row in found["issues"]:
        row["given"], row["suggested"] = task.classes[row["given"]], task.classes[row["suggested"]]
    return found


def _across(pairs: list[tuple[int, int]], where: list[tuple[str, int]]) -> dict[str, int]:
    """For each later split and each earlier one, how many of the later's images have a duplicate there."""
    out = {}
    for a in SPLITS[1:]:
        for b in SPLITS[: SPLITS.index(a)]:
            partner = {x for i, j in pairs for x, y in ((i, j), (j, i)) if where[x][0] == a and where[y][0] == b}
            out[f"{a} in {b}"] = len(partner)
    return out


def _cross_first(groups: list[list[int]], where: list[tuple[str, int]]) -> list[list[int]]:
    """Groups that span splits (leaks) before those within one split; larger first within each."""
    return sorted(groups, key=lambda g: (len({where[i][0] for i in g}) == 1, -len(g)))


def _group_rows(names: list[str], groups: list[list[int]], root: str) -> list[list[str]]:
    """file,group rows for `data.group_key: csv`: the duplicates found share a group, every other image
    is its own; files relative to the data folder."""
    group = {i: f"g{n}" for n, g in enumerate(groups) for i in g}
    base = Path(root).resolve()

    def rel(name: str) -> str:
        p = Path(name).resolve()
        return p.relative_to(base).as_posix() if p.is_relative_to(base) else name

    return [[rel(n), group.get(i, f"i{i}")] for i, n in enumerate(names)]


def save(found: Findings) -> None:
    """Write groups.csv (where the findings have one; an earlier check's is removed) and check.json, last,
    into the findings' folder."""
    path = found.folder / "groups.csv"
    if found.groups_csv is None:
        path.unlink(missing_ok=True)
    else:

        def write(tmp: Path) -> None:
            with open(tmp, "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["file", "group"])
                w.writerows(found.groups_csv)

        atomic_write(path, write)
    write_json(found.folder / "check.json", found.report)


def summary(report: dict[str, Any]) -> list[str]:
    """The console's one screen: each finding in a line, with what to do about it."""
    d, images = report["duplicates"], report["images"]
    lines = [
        f"{report['source']}: {sum(images.values()):,} images ({', '.join(f'{k} {v:,}' for k, v in images.items())}), "
        f"checked in {report['seconds']['total']:.1f} s",
        f"exact duplicates: {len(d['exact_groups'])} groups; near duplicates ({d['embedding']}, similarity >= "
        f"{d['threshold']}): {d['near_pair_count']} pairs; {len(d['groups'])} groups in all",
        "across splits: " + ", ".join(f"{k} {v}" for k, v in d["across_splits"].items())
        + f" (at >= {d['loose_threshold']}: " + ", ".join(f"{v}" for v in d["across_splits_loose"].values()) + ")",
    ]  # fmt: skip
    r = d["random_split"]
    lines.append(f"a random split would leak {r['leaked']} of {r['val_images']} validation images")
    if d["rule"]:
        rule = d["rule"]
        lines.append(
            f"rule: --set data.group_key={rule['rule']} keeps {rule['keeps']:.1%} of duplicate pairs together "
            f"({rule['groups']} groups)"
        )
    elif d["groups"]:
        csv_file = d.get("groups_csv")
        where = f"; {csv_file} holds the groups (copy it to DIR/groups.csv, data.group_key=csv)" if csv_file else ""
        lines.append("rule: no rule found" + where)
    if lb := report.get("labels"):
        if "skipped" in lb:
            lines.append(f"label issues: not looked for; {lb['skipped']}")
        elif "flagged" in lb:
            lines.append(
                f"label issues: {lb['flagged']} images flagged (given label's probability < {lb['threshold']} out "
                f"of fold; {lb['method']}, {lb['out_of_fold_accuracy']:.1%} accurate); the worst are in check.html"
            )
        else:
            lines.append(
                f"masks: the {len(lb['issues'])} least consistent with the run's predictions are in check.html"
            )
    if files := report.get("files"):
        kinds = Counter(i["kind"] for i in files["issues"])
        found = ", ".join(f"{k} {v}" for k, v in kinds.most_common()) or "none"
        lines.append(f"files: {files['files']:,} checked; problems: {found}")
    if report["skipped_files"]:
        lines.append(f"training would skip {len(report['skipped_files'])} unreadable files")
    bal = report["balance"]
    if bal["unit"] == "images":
        train = bal["amounts"]["train"]
        lines.append(f"classes: {min(train):,} to {max(train):,} training images a class")
    return lines
