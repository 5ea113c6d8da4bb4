"""check.html: what `cnnlab check` found, in the house style. Groups of duplicates as thumbnails (those
that cross splits first), the split rule, label issues, file problems and class balance as tables that sort
when a column's header is clicked (the page's one script; without it the tables read as they are)."""

from __future__ import annotations

from html import escape
from pathlib import Path
from typing import Any

from .html import SORT_JS, _card, _data_uri, _kv_table, _page, _table, _write

SHOWN = 60  # groups drawn; check.json lists them all
SHOWN_MEMBERS = 12  # images drawn of one group
CSS = """
.groups{display:flex;flex-direction:column;gap:.6rem}
.group{display:flex;flex-wrap:wrap;gap:.5rem;align-items:flex-start;border-bottom:1px solid #ddd;padding-bottom:.5rem}
.group figure{margin:0;max-width:110px;font-size:.75rem;word-break:break-all}
.group img{image-rendering:pixelated;display:block;border:1px solid #ccc}
.group .cross{color:#b00;font-weight:600}
td img{image-rendering:pixelated;display:block}
th.sort{cursor:pointer} th.sort::after{content:" \\2195";color:#999}
"""


def _groups(groups: list[list[dict[str, Any]]], thumbs: dict[str, bytes], pairs: list) -> str:
    if not groups:
        return "<p>None found.</p>"
    group_of = {(m["split"], m["index"]): n for n, g in enumerate(groups[:SHOWN]) for m in g}
    best: dict[int, float] = {}
    for a, _, sim in pairs:  # the similarity of each group's closest listed pair
        if (n := group_of.get((a["split"], a["index"]))) is not None:
            best[n] = max(best.get(n, 0.0), sim)
    out = []
    for n, g in enumerate(groups[:SHOWN]):
        cross = len({m["split"] for m in g}) > 1
        figs = []
        for m in g[:SHOWN_MEMBERS]:
            key = f"{m['split']}/{m['index']}"
            img = (
                f'<img src="{_data_uri(thumbs[key], "image/png")}" alt="{escape(m["name"])}">' if key in thumbs else ""
            )
            figs.append(
                f"<figure>{img}<figcaption>{escape(m['split'])}: {escape(Path(m['name']).name)}</figcaption></figure>"
            )
        label = '<span class="cross">across splits</span>' if cross else "one split"
        sim = f", similarity up to {best[n]:.4f}" if n in best else ", identical pixels"
        hidden = f"<br>{len(g) - SHOWN_MEMBERS} more in check.json" if len(g) > SHOWN_MEMBERS else ""
        out.append(f'<div class="group"><div>{label}<br>{len(g)} images{sim}{hidden}</div>{"".join(figs)}</div>')
    more = f"<p>{len(groups) - SHOWN} more in check.json.</p>" if len(groups) > SHOWN else ""
    return f'<div class="groups">{"".join(out)}</div>{more}'


def _labels(lb: dict[str, Any], thumbs: dict[str, bytes]) -> str:
    """The label issues found: how, then a row per image (thumbnail, given and suggested label or the mask's
    quality), least likely first."""
    if "skipped" in lb:
        return f"<p>Not looked for: {escape(lb['skipped'])}.</p>"

    def thumb(r: dict[str, Any]) -> str:
        key = f"{r['split']}/{r['index']}"
        return f'<img src="{_data_uri(thumbs[key], "image/png")}" alt="">' if key in thumbs else ""

    rows = lb["issues"][:SHOWN]
    if "flagged" not in lb:  # segmentation: masks ranked by label quality
        head = f"<p>{escape(lb['method'])}; the {len(rows)} lowest shown.</p>"
        table = [[thumb(r), escape(r["split"]), escape(Path(r["name"]).name), f"{r['quality']:.4f}"] for r in rows]
        return head + _table(["image", "split", "file", "label quality"], table)
    n = lb.get("fold_epochs")
    epochs = f", {n} epoch{'s' if n > 1 else ''} each" if n else ""
    head = (
        f"<p>Out-of-fold probabilities from {escape(lb['method'])} ({lb['folds']} folds{epochs}; "
        f"{lb['out_of_fold_accuracy']:.1%} accurate), calibrated by temperature {lb['temperature']}. Confident "
        f"learning proposed {lb['proposed']:,} images; <b>{lb['flagged']:,}</b> of them keep a probability of their "
        f"given label under {lb['threshold']} and are flagged. Shown: the {len(rows)} least likely"
        + (" (unflagged ones are only suspicious)" if any(not r["flagged"] for r in rows) else "")
        + ".</p>"
    )
    table = [
        [thumb(r), escape(r["split"]), escape(Path(r["name"]).name), escape(r["given"]), escape(r["suggested"]),
         f"{r['quality']:.4f}", "yes" if r["flagged"] else "no"]
        for r in rows
    ]  # fmt: skip
    return head + _table(["image", "split", "file", "given", "suggested", "p(given)", "flagged"], table)


def write_check_page(path: Path, report: dict[str, Any], thumbs: dict[str, bytes]) -> Path:
    """Write check.html for the findings `report` (as check.json holds them) and their thumbnails."""
    d = report["duplicates"]
    leaks = sum(d["across_splits"].values())
    random = d["random_split"]
    files = report.get("files")
    lb = report.get("labels") or {}
    cards = "".join(
        [
            _card(
                "images",
                f"{sum(report['images'].values()):,}",
                ", ".join(f"{k} {v:,}" for k, v in report["images"].items()),
            ),
            _card("duplicate groups", f"{len(d['groups']):,}", f"{len(d['exact_groups'])} of identical pixels"),
            _card("leaks across splits", f"{leaks:,}", "images with a duplicate in an earlier split"),
            _card("a random split", f"{random['leaked']:,} leaked", f"of {random['val_images']:,} validation images"),
            _card(
                "label issues",
                f"{lb['flagged']:,}" if "flagged" in lb else "n/a" if "skipped" in lb or not lb else "masks",
                "flagged" if "flagged" in lb else "",
            ),
            _card("file problems", f"{len(files['issues']):,}" if files else "n/a", "" if files else "built-in set"),
        ]
    )
    header = f"<header><h1>cnnlab check: {escape(report['source'])}</h1><div class='cards'>{cards}</div></header>"
    rule = d["rule"]
    rule_html = _kv_table(
        {
            "near duplicates": f"{d['embedding']} embedding, cosine similarity >= {d['threshold']}",
            "across splits": ", ".join(f"{k}: {v}" for k, v in d["across_splits"].items()),
            f"at >= {d['loose_threshold']}": ", ".join(f"{k}: {v}" for k, v in d["across_splits_loose"].items()),
            "a random split": f"{random['leaked']} of {random['val_images']} validation images have a duplicate in "
            f"training ({random['val_fraction']:.0%} of {random['of']} images, seed {random['seed']})",
            "rule": (
                f"--set data.group_key={rule['rule']} keeps {rule['keeps']:.1%} of the duplicate pairs together "
                f"({rule['groups']} groups)"
                if rule
                else "no rule found"
                + (f"; {Path(d['groups_csv']).name} beside check.json groups them" if d.get("groups_csv") else "")
            ),
        }
    )
    bal = report["balance"]
    counts = bal["amounts"]
    fmt = (lambda v: f"{v:,}") if bal["unit"] == "images" else (lambda v: f"{v:.2%}")
    balance = _table(
        ["class", *counts, "suggested weight"],
        [
            [escape(c), *(fmt(counts[s][i]) for s in counts), f"{bal['suggested_weights'][i]:.3f}"]
            for i, c in enumerate(bal["classes"])
        ],
    )
    sections = [
        ("duplicates", "Duplicates", _groups(d["groups"], thumbs, d["near_pairs"])),
        ("split", "Splits and the rule that keeps duplicates together", rule_html),
        ("balance", f"Class balance ({bal['unit']})", balance),
    ]
    if lb:
        sections.insert(2, ("labels", "Label issues", _labels(lb, thumbs)))
    if files:
        rows = [[escape(i["file"]), escape(i["problem"])] for i in files["issues"]]
        modes = ", ".join(f"{k}: {v}" for k, v in files["modes"].items())
        text = f"<p>{files['files']:,} files ({escape(modes)}).</p>" + (
            _table(["file", "problem"], rows) if rows else "<p>No problems.</p>"
        )
        sections.append(("files", "Files", text))
    if report.get("skipped_files"):
        sections.append(
            ("skipped", "Files training would skip", _table(["file"], [[escape(f)] for f in report["skipped_files"]]))
        )
    page = _page(f"cnnlab check: {report['source']}", header, sections, css=CSS)
    return _write(path, page.replace("</body>", SORT_JS + "</body>"))
