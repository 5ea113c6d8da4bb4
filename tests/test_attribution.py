"""Interpretation: Grad-CAM finds where the decision is made, integrated gradients are complete, entropy and
calibration equal their hand-computed values."""

import math

import pytest
import torch
from torch import nn

from cnnlab import attribution
from cnnlab.models import build_model


class LeftHalf(nn.Module):
    """Zeroes the right half of a feature map: nothing there can reach the output."""

    def forward(self, x):
        x = x.clone()
        x[..., x.shape[-1] // 2 :] = 0
        return x


def left_half_model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        LeftHalf(),
        # No bias: a bias would light up the right half's features too, evidence from nowhere.
        nn.Conv2d(8, 8, 3, padding=1, bias=False),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 3),
    ).eval()


def test_grad_cam_mass_lies_where_the_decision_is_made():
    model = left_half_model()
    x = torch.rand(6, 1, 32, 32)
    name, _ = attribution.cam_layer(model, x)
    assert name == "4"  # the last map larger than 1x1: the second conv block's ReLU, past the mask
    pred = model(x).argmax(1)
    cam = attribution.grad_cam(model, x, pred)
    assert cam.shape == (6, 32, 32)
    assert cam.min() >= 0 and cam.max() <= 1
    # The second conv's 3x3 window carries left-half evidence one column past the middle: a few percent.
    left = cam[..., :16].sum((1, 2)) / cam.sum((1, 2))
    assert (left >= 0.9).all(), left


def test_grad_cam_of_a_segmenter_points_at_the_class_region():
    """A 'segmenter' that calls pixels class 1 where the input is bright: the class-1 map lies there."""

    class Bright(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3, padding=1)
            self.pool = nn.MaxPool2d(2)
            self.head = nn.Conv2d(4, 2, 1)
            with torch.no_grad():
                self.conv.weight.zero_()
                self.conv.weight[:, 0, 1, 1] = 1
                self.conv.bias.zero_()
                self.head.weight.copy_(torch.tensor([[-1.0] * 4, [1.0] * 4]).view(2, 4, 1, 1))
                self.head.bias.copy_(torch.tensor([2.0, 0.0]))

        def forward(self, x):
            return nn.functional.interpolate(self.head(self.pool(self.conv(x).relu())), size=x.shape[-2:])

    x = torch.zeros(1, 1, 16, 16)
    x[..., 2:6, 10:14] = 5.0
    model = Bright().eval()
    assert (model(x).argmax(1)[0, 2:6, 10:14] == 1).all()
    cam = attribution.grad_cam(model, x, 1, per_pixel=True)[0]
    inside = cam[2:6, 10:14].sum() / cam.sum()
    assert inside > 0.6, inside


def test_integrated_gradients_are_complete():
    torch.manual_seed(0)
    model = build_model("classify", "seed-a", in_channels=1, num_classes=10, image_size=28).eval()
    x = torch.randn(3, 1, 28, 28)
    baseline = torch.full((1, 1, 28, 28), -0.8)
    target = model(x).argmax(1)
    attr, delta = attribution.integrated_gradients(model, x, target, baseline, steps=128)
    with torch.no_grad():
        diff = model(x).gather(1, target[:, None])[:, 0] - model(baseline.expand_as(x)).gather(1, target[:, None])[:, 0]
    total = attr.sum((1, 2, 3))
    # Completeness (Sundararajan et al. 2017): sum of attributions = F(x) - F(baseline), up to the
    # quadrature error of 128 steps on a piecewise-linear net: within 2% of the difference.
    assert torch.allclose(total, diff, rtol=0.02, atol=1e-3), (total, diff)
    assert torch.allclose(delta, total - diff, atol=1e-4)


def test_entropy_map_of_a_fixed_distribution_is_its_entropy_everywhere():
    dist = torch.tensor([0.5, 0.25, 0.125, 0.125, 0.0])

    class Fixed(nn.Module):
        def forward(self, x):
            logits = torch.log(dist).clamp_min(-1e4).view(1, -1, 1, 1)
            return logits.expand(len(x), -1, *x.shape[-2:])

    probs = Fixed()(torch.zeros(2, 3, 7, 9)).softmax(1)
    conf, ent = attribution.confidence_maps(probs)
    by_hand = -(0.5 * math.log(0.5) + 0.25 * math.log(0.25) + 2 * 0.125 * math.log(0.125))  # 1.2130 nats
    assert ent.shape == (2, 7, 9)
    assert torch.allclose(ent, torch.full_like(ent, by_hand), atol=1e-6)
    assert torch.allclose(conf, torch.full_like(conf, 0.5))
    assert attribution.max_entropy(5) == pytest.approx(math.log(5))


def test_expected_calibration_error_by_hand():
    # 10 predictions in 5 bins of width 0.2:
    #   (0.2, 0.4]: 0.3, 0.3 (1 right)         -> acc 0.5, conf 0.30, gap 0.20, weight 0.2
    #   (0.6, 0.8]: 0.7, 0.7, 0.8 (all right)  -> acc 1.0, conf 0.733, gap 0.267, weight 0.3
    #   (0.8, 1.0]: 0.9 x 4, 1.0 (3 right)     -> acc 0.6, conf 0.92, gap 0.32, weight 0.5
    # float32 0.8 lies a hair above 0.8 and still belongs to (0.6, 0.8]: edges in the input's precision.
    conf = torch.tensor([0.3, 0.3, 0.7, 0.7, 0.8, 0.9, 0.9, 0.9, 0.9, 1.0])
    ok = torch.tensor([1, 0, 1, 1, 1, 1, 1, 0, 0, 1]).bool()
    cal = attribution.calibration(conf, ok, bins=5)
    assert cal["count"] == [0, 2, 0, 3, 5]
    assert cal["ece"] == pytest.approx(0.2 * 0.2 + 0.3 * (1 - 2.2 / 3) + 0.5 * 0.32)
    assert math.isnan(cal["accuracy"][0]) and cal["accuracy"][4] == pytest.approx(0.6)


def test_penultimate_features_and_feature_maps_have_the_layer_shapes():
    model = build_model("classify", "seed-a", in_channels=1, num_classes=10, image_size=28).eval()
    x = torch.randn(5, 1, 28, 28)
    # 300 images: two chunks of the split, prepared one chunk at a time.
    images = torch.randint(0, 256, (300, 1, 28, 28), dtype=torch.uint8)
    feats = attribution.penultimate(model, images, lambda u8: u8.float() / 255)
    assert feats.shape == (300, 128)
    with torch.no_grad():
        whole = nn.Sequential(*list(model)[:-1])(images.float() / 255)  # seed-a without its last layer
    assert torch.allclose(feats, whole, atol=1e-5)
    maps = attribution.feature_maps(model, x[:2])
    assert [(n, tuple(m.shape)) for n, m in maps] == [("0", (2, 32, 26, 26)), ("3", (2, 64, 10, 10))]


def test_example_choices():
    true = torch.tensor([0, 0, 0, 1, 1, 1])
    pred = torch.tensor([0, 1, 0, 1, 1, 0])
    conf = torch.tensor([0.6, 0.9, 0.8, 0.7, 0.95, 0.5])
    assert attribution.pick_examples(true, pred, 2, per_class=1) == {0: ([0], [1]), 1: ([3], [5])}
    assert attribution.most_confident(true, pred, conf, 3) == {0: 2, 1: 4}
    assert attribution.subsample(5, 10).tolist() == [0, 1, 2, 3, 4]
    idx = attribution.subsample(100, 10)
    assert len(idx) == 10 and idx.unique().numel() == 10 and (idx.diff() > 0).all()
