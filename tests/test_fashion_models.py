"""Fashion-MNIST nets: the seed reports' layer shapes and the ResNet's size."""

import pytest
import torch
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.models.classify import ACTIVATIONS, build_fashion_model


@pytest.mark.parametrize(
    ("name", "width", "params"),
    [
        # seed-a: 32*9+32 + 64*32*16+64 + 1600*128+128 + 128*10+10
        ("seed-a", None, 320 + 32832 + 204928 + 1290),
        # seed-b: 32*25+32 + 32*32*25+32 + 1568*128+128 + 128*10+10
        ("seed-b", None, 832 + 25632 + 200832 + 1290),
        ("resnet", 0.5, 116602),
    ],
)
def test_output_shape_and_parameter_count(name, width, params):
    model = build_fashion_model(name, width=width).eval()
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == params


def test_resnet_width_scales_the_channels():
    convs = [m for m in build_fashion_model("resnet", width=1.0).modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 64, 64, 128, 128, 128]


def test_models_adapt_to_channels_size_and_classes():
    from cnnlab.models import build_model

    # seed-a's head for 64 px: conv3 62, pool 31, conv4 28, pool 14.
    net = build_model("classify", "seed-a", in_channels=3, num_classes=4, image_size=64)
    assert net(torch.zeros(2, 3, 64, 64)).shape == (2, 4)
    assert net[7].in_features == 64 * 14 * 14
    for name in ("seed-b", "resnet"):
        net = build_model("classify", name, in_channels=1, num_classes=3, image_size=8)
        assert net(torch.zeros(1, 1, 8, 8)).shape == (1, 3)
    with pytest.raises(ConfigError, match="seed-a needs images of at least 12 px"):
        build_model("classify", "seed-a", in_channels=1, num_classes=10, image_size=8)


def test_options_a_model_would_ignore_are_refused():
    from cnnlab.models import build_model

    with pytest.raises(ConfigError, match=r"model\.width: seed-a has no width setting"):
        build_fashion_model("seed-a", width=2.0)
    with pytest.raises(ConfigError, match=r"model\.activation: unet has no activation setting"):
        build_model("segment", "unet", in_channels=3, num_classes=5, activation="sigmoid")


def test_unknown_model_is_a_config_error():
    with pytest.raises(ConfigError, match="resnet"):
        build_fashion_model("vgg")


@pytest.mark.parametrize("activation", ["relu", "leaky_relu", "sigmoid"])
def test_seed_a_pooling_first_is_the_reports_net(activation):
    # The report's order (conv, activation, pool) with the same weights: same outputs, same gradients.
    torch.manual_seed(0)
    net = build_fashion_model("seed-a", activation)
    act = ACTIVATIONS[activation]
    report = nn.Sequential(
        nn.Conv2d(1, 32, 3), act(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 4), act(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(1600, 128), act(), nn.Linear(128, 10),
    )  # fmt: skip
    report.load_state_dict(net.state_dict())
    x = torch.randn(8, 1, 28, 28)
    out_a, out_b = net(x), report(x)
    out_a.square().sum().backward()
    out_b.square().sum().backward()
    assert torch.allclose(out_a, out_b, atol=1e-6)
    for (name, a), b in zip(net.named_parameters(), report.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, atol=1e-5), name
