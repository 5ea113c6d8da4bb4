"""Fashion-MNIST nets: the seed reports' layer shapes and the ResNet's size."""

import pytest
import torch
from torch import nn

from cnnlab.errors import ConfigError
from cnnlab.models.fashion import ACTIVATIONS, build_fashion_model


@pytest.mark.parametrize(
    ("name", "width", "params"),
    [
        # seed-a: 32*9+32 + 64*32*16+64 + 1600*128+128 + 128*10+10
        ("seed-a", 1.0, 320 + 32832 + 204928 + 1290),
        # seed-b: 32*25+32 + 32*32*25+32 + 1568*128+128 + 128*10+10
        ("seed-b", 1.0, 832 + 25632 + 200832 + 1290),
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
