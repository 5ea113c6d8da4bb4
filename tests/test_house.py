"""The house rules of ARCHITECTURE.md, checked: layers that point one way (import-linter), the kind of a task
dispatched only in tasks/, figures without pyplot, and a notebook's matplotlib left as the user set it."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from conftest import make_fashion_dir

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "cnnlab"
# The built-in datasets and the two kinds: facts of tasks/, compared nowhere else.
TASK_NAMES = {"fashion", "facade", "classify", "segment"}
# config.py is the typed schema: it refuses options the chosen kind would ignore, before any task exists.
ALLOWED = {Path("config.py")}


def _constants(node: ast.expr) -> list[object]:
    if isinstance(node, ast.Constant):
        return [node.value]
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return [e.value for e in node.elts if isinstance(e, ast.Constant)]
    return []


def task_name_comparisons(source: str) -> list[int]:
    """Lines that compare a value with a task kind or dataset name (==, !=, in, match)."""
    lines = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            if any(v in TASK_NAMES for op in operands for v in _constants(op)):
                lines.append(node.lineno)
        elif (
            isinstance(node, ast.MatchValue) and _constants(node.value)[:1] and _constants(node.value)[0] in TASK_NAMES
        ):
            lines.append(node.lineno)
    return lines


def test_the_comparison_check_finds_what_it_looks_for():
    found = task_name_comparisons(
        textwrap.dedent("""
        if task.kind == "segment": pass
        ok = cfg.task in ("fashion", "other")
        match name:
            case "facade": pass
        fine = kind == other_kind and {"classify": 1}["classify"]
        """)
    )
    assert found == [2, 3, 5]


def test_no_task_kind_or_dataset_name_is_compared_outside_tasks():
    bad = [
        f"{path.relative_to(SRC)}:{line}"
        for path in sorted(SRC.rglob("*.py"))
        if path.relative_to(SRC).parts[0] != "tasks" and path.relative_to(SRC) not in ALLOWED
        for line in task_name_comparisons(path.read_text())
    ]
    assert bad == [], "compare task kinds and dataset names in tasks/ only; ask the Task object instead"


def test_library_code_leaves_matplotlibs_global_state_alone():
    bad = []
    for path in sorted(SRC.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Call) and ast.unparse(node.func) in ("matplotlib.use", "mpl.use"):
                names = ["matplotlib.use"]
            bad += [f"{path.relative_to(SRC)}:{node.lineno} {n}" for n in names if n.startswith(("matplotlib.pyplot",
                    "matplotlib.use", "matplotlib.rc", "matplotlib.style"))]  # fmt: skip
    assert bad == []


def test_import_linter_contracts_hold():
    linter = Path(sys.executable).with_name("lint-imports")
    done = subprocess.run([linter], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "Contracts: 2 kept, 0 broken." in done.stdout


def test_no_module_is_over_400_lines():
    long = {str(p.relative_to(SRC)): n for p in SRC.rglob("*.py") if (n := len(p.read_text().splitlines())) > 420}
    assert long == {}


NOTEBOOK_USE = """
import json, sys
import matplotlib
matplotlib.use("svg")
matplotlib.rcParams["lines.linewidth"] = 3.5
before = dict(matplotlib.rcParams)
import cnnlab
from sklearn.datasets import load_sample_images
from PIL import Image

fashion_dir, out, samples = sys.argv[1], sys.argv[2], sys.argv[3]
photo = f"{out}/temple.jpg"
Image.fromarray(load_sample_images().images[0]).save(photo)
run = cnnlab.train("fashion", "fast", out=f"{out}/run", epochs=1, data_dir=fashion_dir, progress=False)
steps = {"train": matplotlib.get_backend()}
model, cfg = cnnlab.load_model("fashion")
steps["load_model"] = matplotlib.get_backend()
top = cnnlab.predict("fashion", [f"{samples}/fashion-mnist-test-0000.png"])
steps["predict classify"] = matplotlib.get_backend()
areas = cnnlab.predict("facade", [photo], out=f"{out}/seg", max_side=96)
steps["predict segment"] = matplotlib.get_backend()
cnnlab.explain(run.run_dir, [f"{samples}/fashion-mnist-test-0000.png"], out=f"{out}/why")
steps["explain"] = matplotlib.get_backend()
cnnlab.evaluate(run.run_dir, split="val")
steps["evaluate"] = matplotlib.get_backend()
changed = sorted(k for k, v in matplotlib.rcParams.items() if k in before and str(before[k]) != str(v))
print(json.dumps({"steps": steps, "changed": changed, "top": top[0]["top"][0][0],
                  "area": sorted(areas[0]["area"])}))
"""


def test_the_api_leaves_a_notebooks_matplotlib_backend_and_settings_as_they_were(tmp_path):
    """A fresh interpreter (this one's matplotlib may be set already): the backend set to svg before
    importing cnnlab is still svg after each call, and no rc setting changed."""
    data = make_fashion_dir(tmp_path / "fm", n_train=600, n_test=100)
    env = {**os.environ, "MPLBACKEND": ""}
    done = subprocess.run(
        [sys.executable, "-c", NOTEBOOK_USE, str(data), str(tmp_path), str(SRC / "samples")],
        capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    import json

    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["steps"] == dict.fromkeys(
        ["train", "load_model", "predict classify", "predict segment", "explain", "evaluate"], "svg"
    )
    assert result["changed"] == []
    assert result["area"] == ["balcony", "facade", "others", "pillar", "window"]


@pytest.mark.parametrize("module", ["cnnlab.cli.app", "cnnlab.infer.segment", "cnnlab.plots.overlays"])
def test_modules_that_need_no_plots_do_not_load_matplotlib(module):
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith('matplotlib')))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]", done.stderr[-2000:]
