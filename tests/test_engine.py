import json

import pytest
import torch

from cnnlab import api, runs
from cnnlab.config import load_config
from cnnlab.engine import checkpoint, evaluation, optim, runtime, tta
from cnnlab.errors import CheckpointError, TrainingError
from cnnlab.tasks.fashion import FashionTask


def _cfg(data_dir, *extra):
    return load_config(
        "fashion",
        "seed-a",
        [
            f"data.dir={data_dir}",
            "train.epochs=2",
            "train.batch_size=32",
            "train.eval_batch_size=64",
            "train.threads=1",
            *extra,
        ],
    )


def _rows(run_dir):
    rows = runs.read_history(run_dir)
    for r in rows:
        r.pop("time_s", None)
    return rows


def _weights(run_dir, which="last"):
    path = runs.RunPaths(run_dir).last if which == "last" else runs.RunPaths(run_dir).best
    return checkpoint.load(path)["model"]


def test_same_seed_same_metrics_and_run_folder_contents(tiny_fashion, tmp_path):
    a = api.train_config(_cfg(tiny_fashion), tmp_path / "a", progress=False)
    b = api.train_config(_cfg(tiny_fashion), tmp_path / "b", progress=False, finish=False)
    assert _rows(a.run_dir) == _rows(b.run_dir)
    assert a.best > 0.9  # the synthetic classes are easy: the loop must actually learn them
    rows = _rows(a.run_dir)
    assert [r["kind"] for r in rows].count("batch") == 2 * 17 and [r["kind"] for r in rows].count("epoch") == 2
    assert len(rows[-1]["val_per_class_acc"]) == 10
    for name in (
        "config.yaml",
        "environment.json",
        "metrics.jsonl",
        "eval_val.json",
        "eval_test.json",
        "checkpoints/last.safetensors",
        "checkpoints/best.safetensors",
    ):
        assert (a.run_dir / name).is_file(), name
    for fig in (
        "curves",
        "per_class_val_acc_over_epochs",
        "per_class_accuracy",
        "confusion_val",
        "confusion_test",
        "examples_test",
        "filters_conv1",
        "filters_conv2",
    ):
        assert (a.run_dir / "figures" / f"{fig}.png").stat().st_size > 1000, fig
        assert json.loads((a.run_dir / "figures" / f"{fig}.json").read_text())
    c = api.train_config(_cfg(tiny_fashion, "train.seed=1"), tmp_path / "c", progress=False, finish=False)
    assert _rows(c.run_dir) != _rows(a.run_dir)


@pytest.mark.parametrize("stop_at", [5, 17, 25])  # mid-epoch 1, epoch boundary, mid-epoch 2
def test_interrupted_then_resumed_equals_uninterrupted(tiny_fashion, tmp_path, stop_at):
    full = api.train_config(_cfg(tiny_fashion), tmp_path / "full", progress=False, finish=False)
    part = api.train_config(_cfg(tiny_fashion), tmp_path / "part", progress=False, max_steps=stop_at)
    assert not part.completed and part.step == stop_at
    done = api.train_config(None, tmp_path / "part", resume=True, progress=False, finish=False)
    assert done.completed and done.step == full.step
    wa, wb = _weights(full.run_dir), _weights(done.run_dir)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert _rows(full.run_dir) == _rows(done.run_dir)  # no duplicated or missing rows


def test_rows_written_after_the_checkpoint_are_cut_on_resume(tiny_fashion, tmp_path):
    run = api.train_config(_cfg(tiny_fashion), tmp_path / "r", progress=False, max_steps=10)
    with open(run.run_dir / "metrics.jsonl", "a") as f:  # what a kill -9 after the checkpoint leaves
        f.write('{"kind":"batch","step":11}\n{"kind":"ba')
    api.train_config(None, run.run_dir, resume=True, progress=False, finish=False)
    steps = [r["step"] for r in _rows(run.run_dir) if r["kind"] == "batch"]
    assert steps == list(range(1, 35))


def test_non_finite_loss_stops_with_the_step(tiny_fashion, tmp_path, monkeypatch):
    calls = {"n": 0}
    real = FashionTask.loss

    def loss(self, logits, y, cfg):
        calls["n"] += 1
        out = real(self, logits, y, cfg)
        return out * float("nan") if calls["n"] == 4 else out

    monkeypatch.setattr(FashionTask, "loss", loss)
    with pytest.raises(TrainingError, match=r"loss became nan at step 3 .*nothing was saved yet, so the run folder"):
        api.train_config(_cfg(tiny_fashion), tmp_path / "r", progress=False)
    assert not (tmp_path / "r").exists()  # nothing to resume: the same --out works again
    calls["n"] = 0
    cfg = _cfg(tiny_fashion)
    cfg.train.checkpoint_every_s = 1e-9  # a checkpoint after every step
    with pytest.raises(TrainingError, match=r"step 3 .*the last good checkpoint is .*last.safetensors"):
        api.train_config(cfg, tmp_path / "r", progress=False)
    assert checkpoint.load(tmp_path / "r" / "checkpoints" / "last.safetensors")["state"]["step"] == 3


def test_existing_run_folder_is_not_overwritten(tiny_fashion, tmp_path):
    api.train_config(_cfg(tiny_fashion), tmp_path / "r", progress=False, max_steps=1)
    with pytest.raises(CheckpointError, match=r"already holds a run"):
        api.train_config(_cfg(tiny_fashion), tmp_path / "r", progress=False)


def test_lr_schedules():
    cfg = load_config("fashion", "seed-a", ["optim.schedule=onecycle", "optim.warmup_fraction=0.1"])
    lrs = [optim.lr_at(cfg, s, 100) for s in range(100)]
    assert lrs[9] == pytest.approx(1e-3) and lrs[0] == pytest.approx(1e-4) and lrs[-1] < 2e-5
    cfg = load_config("fashion", "seed-a", ["optim.schedule=cosine"])
    assert optim.lr_at(cfg, 0, 100) == pytest.approx(1e-3) and optim.lr_at(cfg, 50, 100) == pytest.approx(5e-4)


def test_tensorboard_scalars_have_no_duplicates_across_a_resume(tiny_fashion, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    api.train_config(
        _cfg(tiny_fashion, "train.tensorboard=true"), tmp_path / "r", progress=False, max_steps=10, finish=False
    )
    api.train_config(None, tmp_path / "r", resume=True, progress=False, finish=False)
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    steps = [e.step for e in acc.Scalars("batch/loss")]
    assert sorted(set(steps)) == list(range(1, 35))
    assert [e.step for e in acc.Scalars("epoch/val_acc")] == [17, 34]


def test_shift_moves_pixels_and_fills_zeros():
    x = torch.arange(1, 10, dtype=torch.uint8).view(1, 3, 3)
    assert tta.shift(x, 0, 1).tolist() == [[[0, 1, 2], [0, 4, 5], [0, 7, 8]]]
    assert tta.shift(x, -1, 0).tolist() == [[[4, 5, 6], [7, 8, 9], [0, 0, 0]]]
    assert torch.equal(tta.shift(x, 0, 0), x)


def test_test_time_views_are_averaged():
    # A linear model on raw pixels: its output differs for every view, so each one must be counted.
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 10))
    x = torch.randint(0, 256, (3, 1, 4, 4), dtype=torch.uint8)
    task, rt = FashionTask(), runtime.Runtime(torch.device("cpu"), bf16=False, channels_last=False, threads=1)
    views = [tta.shift(x, dy, dx) for dy, dx in ((0, 0), (1, 0), (-1, 0), (0, 1), (0, -1))]
    views += [v.flip(-1) for v in views]
    with torch.no_grad():
        expected = torch.stack([model(task.eval_inputs(v)).softmax(1) for v in views]).mean(0)
    got = evaluation.predict(model, task, x, rt, batch_size=2, views=tta.Views(flip=True, shift=1))
    assert torch.allclose(got, expected, atol=1e-6)
