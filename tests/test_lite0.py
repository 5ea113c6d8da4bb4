"""The ImageNet-pretrained encoder: its layers, its weights read without running code, the optional extra."""

from __future__ import annotations

import math
import os
import pickle
from importlib import metadata
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import one_error_line, run_cli

from cnnlab import api
from cnnlab.config import load_config
from cnnlab.engine import checkpoint
from cnnlab.engine.optim import make_optimizer
from cnnlab.errors import ConfigError
from cnnlab.models import build_model, imagenet
from cnnlab.models.efficientnet import LiteEncoder, LiteUNet, SameConv


@pytest.fixture(autouse=True)
def weights_cache(tmp_path, monkeypatch):
    """Each test converts into its own cache: none sees another's safetensors file."""
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "cache"))


def hide_extra(monkeypatch) -> None:
    """As if `cnnlab[pretrained]` were not installed."""

    def missing(name):
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(imagenet.metadata, "distribution", missing)


@pytest.fixture
def no_extra(monkeypatch):
    hide_extra(monkeypatch)


@pytest.mark.parametrize(("side", "kernel"), [(7, 3), (8, 3), (9, 5), (10, 5), (224, 3)])
def test_same_conv_pads_like_tensorflow(side, kernel):
    conv = SameConv(1, 1, kernel, stride=2)
    x = torch.randn(1, 1, side, side + 1)
    total_h = max((math.ceil(side / 2) - 1) * 2 + kernel - side, 0)
    total_w = max((math.ceil((side + 1) / 2) - 1) * 2 + kernel - side - 1, 0)
    # TF "SAME": the extra pixel of an odd total goes to the bottom/right
    padded = F.pad(x, (total_w // 2, total_w - total_w // 2, total_h // 2, total_h - total_h // 2))
    expected = F.conv2d(padded, conv.weight, stride=2)
    out = conv(x)
    assert out.shape[-2:] == (math.ceil(side / 2), math.ceil((side + 1) / 2))
    torch.testing.assert_close(out, expected)


def test_encoder_features_and_the_published_weights():
    enc = LiteEncoder()
    weights = imagenet.load_lite("lite0")
    assert enc.load_state_dict(weights, strict=True)  # every tensor of the encoder has its ImageNet value
    raw = torch.load(imagenet.package_file(), weights_only=True)
    torch.testing.assert_close(enc.blocks[15].depthwise[0].weight, raw["_blocks.15._depthwise_conv.weight"])
    torch.testing.assert_close(enc.stem[1].running_var, raw["_bn0.running_var"])
    # Lite0 has 4,652,008: less the 1x1 conv to 1280 (409,600), its batch norm (2,560) and the classifier (1,281,000)
    assert sum(p.numel() for p in enc.parameters()) == 2_958_848
    feats = enc.eval()(torch.zeros(1, 3, 64, 96))
    assert [tuple(f.shape[1:]) for f in feats] == [(16, 32, 48), (24, 16, 24), (40, 8, 12), (112, 4, 6), (320, 2, 3)]
    # converted once: the second call reads the safetensors file, the package file is not needed again
    assert imagenet.cache_path().is_file()
    torch.testing.assert_close(imagenet.load_lite("lite0")["stem.0.weight"], weights["stem.0.weight"])


def test_the_model_rescales_the_tasks_normalisation_to_the_encoders():
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    model = LiteUNet(num_classes=5, mean=mean, std=std).eval()
    pixels = torch.randint(0, 256, (1, 3, 40, 50)).float()
    seen = {}
    model.encoder.register_forward_pre_hook(lambda _, args: seen.setdefault("x", args[0]))
    task_input = (pixels / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    out = model(task_input)
    assert out.shape == (1, 5, 40, 50)  # any size: padded to a multiple of 32, cropped back
    torch.testing.assert_close(seen["x"][..., :40, :50], (pixels - 127) / 128)


def test_grey_inputs_sum_the_rgb_filters():
    rgb = LiteUNet(in_channels=3, pretrained=True)
    grey = LiteUNet(in_channels=1, pretrained=True, mean=(0.5,), std=(0.5,))
    torch.testing.assert_close(grey.encoder.stem[0].weight, rgb.encoder.stem[0].weight.sum(1, keepdim=True))
    assert grey(torch.zeros(2, 1, 33, 33)).shape == (2, 5, 33, 33)
    with pytest.raises(ConfigError, match="1 or 3 input channels"):
        LiteUNet(in_channels=4)


def test_pretrained_is_refused_by_models_without_it_and_loaded_only_for_fresh_runs():
    with pytest.raises(ConfigError, match=r"model\.pretrained: unet has no pretrained setting"):
        build_model("segment", "unet", in_channels=3, num_classes=5, pretrained=True)
    fresh = build_model("segment", "lite0-unet", in_channels=3, num_classes=5, pretrained=True)
    stored = build_model("segment", "lite0-unet", in_channels=3, num_classes=5, pretrained=True, fresh=False)
    stem = imagenet.load_lite("lite0")["stem.0.weight"]
    torch.testing.assert_close(fresh.encoder.stem[0].weight.detach(), stem)
    assert not torch.equal(stored.encoder.stem[0].weight.detach(), stem)  # its weights come from a checkpoint


def test_encoder_learning_rate_share():
    cfg = load_config("facade", "pretrained")
    model = LiteUNet()
    opt = make_optimizer(cfg, model)
    enc, rest = opt.param_groups
    assert enc["lr_share"] == 0.25 and rest["lr_share"] == 1.0
    assert len(enc["params"]) == len(list(model.encoder.parameters()))
    assert len(enc["params"]) + len(rest["params"]) == len(list(model.parameters()))
    cfg = load_config("facade", "fast", ["optim.encoder_lr=0.5"])
    with pytest.raises(ConfigError, match=r"optim\.encoder_lr: only a model\.pretrained encoder"):
        make_optimizer(cfg, build_model("segment", "unet", in_channels=3, num_classes=5))


class _Marker:
    """Unpickling this would create a file: the proof that loading ran code."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (os.mkdir, (str(self.path),))


@pytest.mark.parametrize("variant", sorted(imagenet.FILES))
def test_a_malicious_pickle_in_place_of_the_weights_runs_no_code(tmp_path, monkeypatch, variant):
    marker = tmp_path / "code-ran"
    bad = tmp_path / Path(imagenet.FILES[variant]).name
    bad.write_bytes(pickle.dumps({"_conv_stem.weight": _Marker(marker)}, protocol=2))
    # read directly: torch.load(weights_only=True) refuses the global and builds nothing
    with pytest.raises(ConfigError, match="not a plain weights file") as e:
        imagenet.convert(bad)
    assert "\n" not in str(e.value) and "reinstall" in str(e.value)
    assert not marker.exists()
    # through the loader: a file that is not the published one is refused before it is unpickled
    monkeypatch.setattr(imagenet, "package_file", lambda v: bad)
    with pytest.raises(ConfigError, match="not the published file"):
        imagenet.load_lite(variant)
    assert not marker.exists()
    assert not imagenet.cache_path(variant).exists()  # nothing half-converted left behind
    pickle.loads(bad.read_bytes())  # what an unrestricted load would have done
    assert marker.is_dir()


def test_without_the_extra_the_pretrained_recipe_fails_in_one_line(
    no_extra, tiny_facade, tmp_path, monkeypatch, capsys
):
    code, _, err = run_cli(
        monkeypatch, capsys, "facade", "train", "--recipe", "pretrained", "--data-dir", tiny_facade,
        "--epochs", "1", "--out", tmp_path / "run", "--no-progress",
    )  # fmt: skip
    one_error_line(code, err, "model.pretrained", "pip install 'cnnlab[pretrained]'")
    assert not (tmp_path / "run").exists()  # nothing half-written


def test_without_the_extra_everything_else_works(tiny_facade, tmp_path, monkeypatch):
    # a pretrained-recipe run, trained with the extra ...
    cfg = load_config(
        "facade", "pretrained", ["train.epochs=1", "augment.full_size_epochs=0", "train.tta_scales=[1.0]"]
    )
    cfg.data.dir = str(tiny_facade)
    run = api.train_config(cfg, tmp_path / "run", progress=False).run_dir
    # ... then predicted with, and a from-scratch model trained, without it
    hide_extra(monkeypatch)
    monkeypatch.setenv("CNNLAB_CACHE_DIR", str(tmp_path / "empty-cache"))
    model, _ = checkpoint.load_model(run)
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 5, 64, 64)
    photo = tiny_facade / sorted(p.name for p in tiny_facade.glob("*.jpg"))[0]
    out = api.predict(run, [photo], out=tmp_path / "pred")
    assert Path(out[0]["labels"]).is_file()
    cfg = load_config("facade", "fast", ["train.epochs=1", "augment.full_size_epochs=0"])
    cfg.data.dir = str(tiny_facade)
    assert api.train_config(cfg, tmp_path / "scratch", progress=False).finished
