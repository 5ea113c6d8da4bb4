"""Issue 29 (3): `--report full|summary|none`, so a quick run's report costs less than its training.

full: every figure with a PDF copy and the explanations; summary (the fast recipe's): the curves and each
split's figures as PNG, no explanations, the page saying how to draw them; none: metrics, evaluations
and checkpoints only. `evaluate --report full` draws what a summary run left out."""

from __future__ import annotations

import json

import pytest
from conftest import run_cli

from cnnlab import api
from cnnlab.config import load_config

SUMMARY_FIGURES = {
    "confusion_test", "confusion_val", "curves", "examples_test", "examples_val", "filters_conv1",
    "filters_conv2", "learning_rate", "per_class_accuracy", "per_class_val_acc_over_epochs",
}  # fmt: skip
EXPLANATIONS = {"calibration_test", "cams_test", "embedding_test", "feature_maps_conv1_test", "feature_maps_conv2_test"}


def _train(tiny_fashion, tmp_path, monkeypatch, capsys, *options: str):
    args = ["fashion", "train", "--recipe", "fast", "--data", tiny_fashion, "--epochs", "1", "--no-progress"]
    code, out, err = run_cli(monkeypatch, capsys, *args, "--out", tmp_path / "run", *options)
    assert code == 0, err
    return tmp_path / "run", out


def _figures(run, suffix=".png") -> set[str]:
    return {p.name.removesuffix(suffix) for p in (run / "figures").glob(f"*{suffix}")}


def test_the_fast_recipe_draws_a_summary_and_evaluate_draws_the_rest(tiny_fashion, tmp_path, monkeypatch, capsys):
    assert load_config("fashion", "fast").explain.report == "summary"
    assert load_config("fashion", "seed-a").explain.report == "full"
    run, _ = _train(tiny_fashion, tmp_path, monkeypatch, capsys)
    assert _figures(run) == SUMMARY_FIGURES and not _figures(run, ".pdf")
    page = (run / "report.html").read_text()
    assert 'id="summary-banner"' in page and f"cnnlab fashion evaluate {run} --report full" in page
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "evaluate", run, "--report", "full")
    assert code == 0, err
    assert _figures(run) == SUMMARY_FIGURES | EXPLANATIONS
    assert _figures(run, ".pdf") == {"confusion_test", "examples_test", "per_class_accuracy"} | EXPLANATIONS
    assert 'id="summary-banner"' not in (run / "report.html").read_text()


def test_report_none_writes_numbers_and_checkpoints_only(tiny_fashion, tmp_path, monkeypatch, capsys):
    run, out = _train(tiny_fashion, tmp_path, monkeypatch, capsys, "--report", "none")
    assert "report:" not in out
    assert not (run / "figures").exists() and not (run / "report.html").exists()
    written = {p.name for p in run.iterdir()}
    assert {"config.yaml", "metrics.jsonl", "eval_val.json", "eval_test.json", "checkpoints"} <= written
    assert {p.name for p in (run / "checkpoints").iterdir()} >= {"best.safetensors", "last.safetensors"}
    assert json.loads((run / "eval_test.json").read_text())["n"] > 0
    code, out, _ = run_cli(monkeypatch, capsys, "fashion", "evaluate", run)
    assert code == 0 and "figures:" not in out and "report:" not in out and not (run / "figures").exists()


def test_a_full_report_keeps_everything(tiny_fashion, tmp_path, monkeypatch, capsys):
    run, _ = _train(tiny_fashion, tmp_path, monkeypatch, capsys, "--report", "full")
    assert _figures(run) == SUMMARY_FIGURES | EXPLANATIONS and _figures(run, ".pdf") == _figures(run)
    assert 'id="summary-banner"' not in (run / "report.html").read_text()


def test_a_bad_level_is_one_line(tiny_fashion, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "fashion", "train", "--report", "some", "--data", tiny_fashion)
    assert code == 2 and "'some' is not one of 'full', 'summary', 'none'" in err
    with pytest.raises(Exception, match="report 'some': choose one of full, summary, none"):
        api.evaluate(tmp_path, report="some")
