import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from cnnlab.data.augment import cls_augment, seg_augment

FAST = settings(max_examples=40, deadline=None)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _batch(b: int, h: int, w: int, seed: int = 0, values=range(5)):
    g = _gen(seed)
    images = torch.randint(0, 256, (b, 3, h, w), generator=g, dtype=torch.uint8)
    pick = torch.randint(0, len(values), (b, h, w), generator=g)
    return images, torch.tensor(list(values), dtype=torch.uint8)[pick]


def test_seg_identity():
    images, labels = _batch(3, 24, 24)
    out, out_labels = seg_augment(images, labels, _gen(0), out_size=24, min_crop=1.0, hflip=False, jitter=0.0)
    assert out.dtype == torch.float32 and out_labels.dtype == torch.int64
    assert torch.equal(out_labels, labels.long())
    assert torch.allclose(out, images.float() / 255, atol=1e-6)


def test_seg_flip_only_mirrors_whole_samples():
    images, labels = _batch(16, 10, 10)
    _, out_labels = seg_augment(images, labels, _gen(1), out_size=10, min_crop=1.0, jitter=0.0)
    same = (out_labels == labels.long()).flatten(1).all(1)
    mirrored = (out_labels == labels.long().flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and same.any() and mirrored.any()


@FAST
@given(
    b=st.integers(1, 3),
    h=st.integers(2, 40),
    w=st.integers(2, 40),
    out_size=st.integers(1, 40),
    min_crop=st.floats(0.1, 1.0),
    hflip=st.booleans(),
    jitter=st.floats(0.0, 0.5),
    values=st.sets(st.integers(0, 4), min_size=1),
    seed=st.integers(0, 2**31),
)
def test_seg_labels_stay_in_the_input_value_set(b, h, w, out_size, min_crop, hflip, jitter, values, seed):
    images, labels = _batch(b, h, w, seed, sorted(values))
    out, out_labels = seg_augment(
        images, labels, _gen(seed), out_size=out_size, min_crop=min_crop, hflip=hflip, jitter=jitter
    )
    assert out.shape == (b, 3, out_size, out_size) and out_labels.shape == (b, out_size, out_size)
    assert set(out_labels.unique().tolist()) <= values
    assert out.min() >= 0 and out.max() <= 1


def _class_at(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (x // 3 + 2 * (y // 4)) % 5


@FAST
@given(
    h=st.integers(4, 48),
    w=st.integers(4, 48),
    out_size=st.integers(4, 48),
    min_crop=st.floats(0.2, 1.0),
    seed=st.integers(0, 2**31),
)
def test_seg_image_and_labels_stay_aligned(h, w, out_size, min_crop, seed):
    # Channel 0 holds the column and channel 1 the row, as linear ramps: bilinear sampling returns
    # the exact (fractional) source position, and the label there must be the class of the nearest
    # source pixel.
    kx, ky = 255 // (w - 1), 255 // (h - 1)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    image = torch.stack([xs * kx, ys * ky, torch.zeros_like(xs)]).to(torch.uint8)
    images, labels = image.expand(2, 3, h, w), _class_at(xs, ys).to(torch.uint8).expand(2, h, w)
    out, out_labels = seg_augment(images, labels, _gen(seed), out_size=out_size, min_crop=min_crop, jitter=0.0)
    u, v = out[:, 0] * 255 / kx, out[:, 1] * 255 / ky
    clear = ((u.frac() - 0.5).abs() > 0.01) & ((v.frac() - 0.5).abs() > 0.01)  # no rounding tie
    expected = _class_at(u.round().long(), v.round().long())
    assert torch.equal(out_labels[clear], expected[clear])


@FAST
@given(crop=st.floats(0.2, 1.0), seed=st.integers(0, 2**31))
def test_seg_crop_side_is_the_fraction_asked_for(crop, seed):
    # With min_crop == max_crop the crop side is exactly crop * 40 px: adjacent output pixels sample
    # source columns side / out_size apart (channel 0 is the column ramp).
    ys, xs = torch.meshgrid(torch.arange(40), torch.arange(40), indexing="ij")
    image = torch.stack([xs * 6, ys * 6, torch.zeros_like(xs)]).to(torch.uint8).expand(2, 3, 40, 40)
    labels = torch.zeros(2, 40, 40, dtype=torch.uint8)
    out, _ = seg_augment(image, labels, _gen(seed), out_size=16, min_crop=crop, max_crop=crop, hflip=False, jitter=0)
    step = (out[:, 0, :, 1:] - out[:, 0, :, :-1]) * 255 / 6
    # Enlarging a crop that touches the image's edge puts the outermost output pixel's centre up to half an
    # output pixel outside it, where the edge repeats (hypothesis found crop 0.25 at the left edge): the
    # steps between inner pixels measure the side.
    inner = step[..., 1:-1]
    assert torch.allclose(inner, torch.full_like(inner, crop * 40 / 16), atol=1e-3)


def test_seg_whole_images_keep_their_shape():
    images, labels = _batch(2, 12, 20)
    out, out_labels = seg_augment(images, labels, _gen(0), out_size=None, hflip=False, jitter=0.0)
    assert torch.equal(out_labels, labels.long())
    assert torch.allclose(out, images.float() / 255, atol=1e-6)


def test_seg_is_deterministic_by_generator_state():
    images, labels = _batch(4, 32, 32)
    a = seg_augment(images, labels, _gen(7), out_size=16)
    b = seg_augment(images, labels, _gen(7), out_size=16)
    c = seg_augment(images, labels, _gen(8), out_size=16)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_seg_jitter_changes_colours_but_not_labels():
    images, labels = _batch(4, 16, 16)
    out, out_labels = seg_augment(images, labels, _gen(0), out_size=16, min_crop=1.0, hflip=False, jitter=0.5)
    assert torch.equal(out_labels, labels.long())
    assert not torch.allclose(out, images.float() / 255, atol=1e-3)
    assert out.min() >= 0 and out.max() <= 1


def _digits(b: int = 32, h: int = 12, w: int = 10) -> torch.Tensor:
    return torch.randint(1, 256, (b, 1, h, w), generator=_gen(0), dtype=torch.uint8)


def test_cls_identity_when_everything_is_off():
    images = _digits()
    out = cls_augment(images, _gen(0))
    assert out.dtype == torch.float32 and torch.equal(out, images.float() / 255)


@FAST
@given(pad=st.integers(1, 4), seed=st.integers(0, 2**31))
def test_cls_shift_is_a_zero_filled_translation(pad, seed):
    images = _digits(b=6)
    out = cls_augment(images, _gen(seed), pad_crop=pad)
    padded = torch.nn.functional.pad(images.float() / 255, (pad, pad, pad, pad))
    for i in range(len(images)):
        shifts = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            if torch.equal(out[i], padded[i, :, dy : dy + 12, dx : dx + 10])
        ]
        assert shifts, f"sample {i} is not a shifted copy"


def test_cls_flip_mirrors_about_half():
    images = _digits(b=64)
    out = cls_augment(images, _gen(0), hflip=True)
    base = images.float() / 255
    same = (out == base).flatten(1).all(1)
    mirrored = (out == base.flip(-1)).flatten(1).all(1)
    assert (same | mirrored).all() and 16 < mirrored.sum() < 48


def test_cls_erase_sets_one_rectangle_to_zero():
    images = torch.full((50, 1, 28, 28), 255, dtype=torch.uint8)
    out = cls_augment(images, _gen(0), erase=1.0)
    for sample in out[:, 0]:
        zero = sample == 0
        rows, cols = zero.any(1).nonzero().squeeze(1), zero.any(0).nonzero().squeeze(1)
        assert len(rows) and len(cols)
        box = zero[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1]
        assert box.all() and zero.sum() == box.numel()  # exactly one solid rectangle
        assert zero.float().mean() <= 0.5
    assert torch.equal(cls_augment(images, _gen(0), erase=0.0), images.float() / 255)


def test_cls_is_deterministic_by_generator_state():
    images = _digits()
    kwargs = dict(pad_crop=2, hflip=True, erase=0.5)
    assert torch.equal(cls_augment(images, _gen(3), **kwargs), cls_augment(images, _gen(3), **kwargs))
    assert not torch.equal(cls_augment(images, _gen(3), **kwargs), cls_augment(images, _gen(4), **kwargs))
