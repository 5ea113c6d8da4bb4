import pytest
import torch

from cnnlab.errors import ConfigError
from cnnlab.models.segment import SeedA, SeedB, UNet, build_facade_model

# Thin variants keep the suite fast; SeedA has no width knob and is cheap enough as it is.
SMALL = {"seed-a": {}, "seed-b": {"width": 0.125}, "unet": {"width": 0.25}}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.mark.parametrize("name", SMALL)
@pytest.mark.parametrize("size", [(256, 256), (200, 300), (37, 53)])
def test_output_shape_matches_input(name, size):
    model = build_facade_model(name, **SMALL[name]).eval()
    with torch.no_grad():
        out = model(torch.rand(2, 3, *size))
    assert out.shape == (2, 5, *size) and out.dtype == torch.float32


def test_seed_a_bottleneck_is_61x61x768():
    model = SeedA().eval()
    seen = []
    model.encoder.register_forward_hook(lambda _m, _i, out: seen.append(out.shape))
    with torch.no_grad():
        model(torch.rand(1, 3, 256, 256))
    assert seen == [(1, 768, 61, 61)]


def test_seed_b_has_batch_norm_after_relu_and_a_width_knob():
    full, thin = SeedB(), SeedB(width=0.25)
    first = list(full.body[0])
    assert [type(m).__name__ for m in first] == ["Conv2d", "ReLU", "BatchNorm2d"]
    widths = [m.out_channels for m in full.modules() if isinstance(m, torch.nn.Conv2d)]
    assert widths == [64, 128, 256, 1024, 512, 256]
    assert sum(p.numel() for p in thin.parameters()) < sum(p.numel() for p in full.parameters()) / 10


@pytest.mark.parametrize("depth", [1, 2, 3, 5])
def test_unet_depths_and_odd_sizes(depth):
    model = UNet(width=0.25, depth=depth).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 19, 34)).shape == (1, 5, 19, 34)


@pytest.mark.parametrize("name", SMALL)
def test_trains_one_step(name):
    model = build_facade_model(name, **SMALL[name]).train()
    x, y = torch.rand(2, 3, 32, 48), torch.randint(0, 5, (2, 32, 48))
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    assert torch.isfinite(loss) and all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("name", SMALL)
def test_channels_last_and_bf16_autocast(name):
    model = build_facade_model(name, **SMALL[name]).eval()
    x = torch.rand(2, 3, 64, 80)
    with torch.no_grad():
        reference = model(x)
        model = model.to(memory_format=torch.channels_last)
        fast = model(x.to(memory_format=torch.channels_last))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x.to(memory_format=torch.channels_last))
    assert torch.allclose(fast, reference, atol=1e-4)
    assert low.shape == reference.shape and torch.isfinite(low).all()
    assert (low.float() - reference).abs().mean() < 0.1 * reference.abs().mean() + 1e-3


def test_build_rejects_unknown_names_and_options():
    with pytest.raises(ConfigError, match="seed-a, seed-b, unet"):
        build_facade_model("resnet")
    with pytest.raises(ConfigError, match="seed-a has no width setting"):
        build_facade_model("seed-a", width=2)
    assert sum(p.numel() for p in build_facade_model("unet", width=0.5).parameters()) < 0.3 * sum(
        p.numel() for p in UNet().parameters()
    )


def test_grey_inputs_and_other_class_counts():
    from cnnlab.models import build_model

    for name in SMALL:
        model = build_model("segment", name, in_channels=1, num_classes=2, **SMALL[name]).eval()
        with torch.no_grad():
            assert model(torch.rand(1, 1, 32, 40)).shape == (1, 2, 32, 40)
