"""Random augmentation of whole batches at once, every random number drawn from one torch.Generator.

Per-sample Python loops (torchvision-style transforms in a Dataset) cost more than the small nets
themselves on a 2-core CPU, so each function here works on the whole batch with tensor ops.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor

_LUMA = (0.299, 0.587, 0.114)  # ITU-R 601 weights, as PIL and torchvision use for greyscale


def seg_augment(
    images: Tensor,
    labels: Tensor,
    gen: torch.Generator,
    *,
    out_size: int | None,
    min_crop: float = 0.5,
    max_crop: float = 1.0,
    hflip: bool = True,
    jitter: float = 0.2,
) -> tuple[Tensor, Tensor]:
    """Random square crop + flip + resize + colour jitter of an image batch and its label maps.

    images uint8 (B, 3, H, W), labels uint8 (B, H, W) -> float32 (B, 3, S, S) in [0, 1] and
    int64 (B, S, S), S = out_size. Each crop's side is a random fraction in [min_crop, max_crop]
    of min(H, W), placed at random wholly inside the image. `out_size` None: no crop, the whole
    images at their size, only flipped and jittered. One sampling grid serves both tensors:
    bilinear for the image, nearest for the labels, so label values are never blended.
    """
    batch, _, height, width = images.shape
    u = torch.rand(4, batch, generator=gen, dtype=torch.float64)
    if out_size is None:
        side_w, side_h = torch.full((batch,), float(width)), torch.full((batch,), float(height))
        out_h, out_w = height, width
    else:
        side_w = side_h = (min_crop + (max_crop - min_crop) * u[0]) * min(height, width)
        out_h = out_w = out_size
    left, top = u[1] * (width - side_w), u[2] * (height - side_h)
    flip = (u[3] < 0.5) & hflip
    # The affine map takes output coordinates in [-1, 1] to input coordinates in [-1, 1]
    # (align_corners=False: -1 and 1 are the outer pixel edges), i.e. to the crop's edges.
    scale_x = torch.where(flip, -side_w / width, side_w / width)
    theta = torch.zeros(batch, 2, 3, dtype=torch.float64)
    theta[:, 0, 0] = scale_x
    theta[:, 0, 2] = (2 * left + side_w) / width - 1
    theta[:, 1, 1] = side_h / height
    theta[:, 1, 2] = (2 * top + side_h) / height - 1
    grid = F.affine_grid(theta.float(), [batch, 1, out_h, out_w], align_corners=False)
    grid = grid.to(images.device)
    # "border" padding: a grid point that rounding puts a hair outside the image repeats the edge
    # instead of bringing in zeros (a fake class 0 in the labels).
    out = F.grid_sample(images.float() / 255, grid, mode="bilinear", padding_mode="border", align_corners=False)
    out_labels = F.grid_sample(
        labels.unsqueeze(1).float(), grid, mode="nearest", padding_mode="border", align_corners=False
    )
    if jitter > 0:
        out = _colour_jitter(out, gen, jitter)
    return out, out_labels.squeeze(1).long()


def _colour_jitter(images: Tensor, gen: torch.Generator, jitter: float) -> Tensor:
    """Brightness, contrast and saturation each scaled by a factor in [1 - jitter, 1 + jitter]."""
    batch = images.shape[0]
    factors = (1 - jitter + 2 * jitter * torch.rand(3, batch, 1, 1, 1, generator=gen)).to(images.device)
    luma = torch.tensor(_LUMA, device=images.device).view(1, 3, 1, 1)
    images = (images * factors[0]).clamp(0, 1)
    mean_grey = (images * luma).sum(dim=1, keepdim=True).mean(dim=(2, 3), keepdim=True)
    images = ((images - mean_grey) * factors[1] + mean_grey).clamp(0, 1)
    grey = (images * luma).sum(dim=1, keepdim=True)
    return ((images - grey) * factors[2] + grey).clamp(0, 1)


def cls_augment(
    images: Tensor, gen: torch.Generator, *, pad_crop: int = 0, hflip: bool = False, erase: float = 0.0
) -> Tensor:
    """Random shift, flip and erasing of a uint8 (B, C, H, W) batch -> float32 in [0, 1].

    pad_crop: shift by up to this many pixels each way, filling with 0 (a random crop of the
    zero-padded image). hflip: mirror half of the samples. erase: the probability that a sample gets
    a random rectangle (2-33% of its area, aspect 0.3-3.3, as torchvision's RandomErasing) set to 0.
    """
    batch, _, height, width = images.shape
    out = images.float() / 255
    if pad_crop > 0:
        padded = F.pad(out, (pad_crop, pad_crop, pad_crop, pad_crop))
        dy = torch.randint(0, 2 * pad_crop + 1, (batch, 1), generator=gen)
        dx = torch.randint(0, 2 * pad_crop + 1, (batch, 1), generator=gen)
        rows = (dy + torch.arange(height)).to(images.device)  # (B, H) rows of the padded image
        cols = (dx + torch.arange(width)).to(images.device)
        sample = torch.arange(batch, device=images.device).view(batch, 1, 1)
        # Advanced indexing puts the indexed dims first: (B, H, W, C).
        out = padded.permute(0, 2, 3, 1)[sample, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
    if hflip:
        flip = (torch.rand(batch, generator=gen) < 0.5).to(images.device)
        out = torch.where(flip.view(batch, 1, 1, 1), out.flip(-1), out)
    if erase > 0:
        out = out * ~_erase_masks(batch, height, width, gen, erase).to(images.device).unsqueeze(1)
    return out.contiguous()


def _erase_masks(batch: int, height: int, width: int, gen: torch.Generator, p: float) -> Tensor:
    """(B, H, W) bool: True inside each sample's rectangle to erase (none where the p-coin says no)."""
    area = height * width * (0.02 + 0.31 * torch.rand(batch, generator=gen))
    aspect = torch.exp(math.log(0.3) + (math.log(3.3) - math.log(0.3)) * torch.rand(batch, generator=gen))
    # torchvision redraws a rectangle that does not fit; clamping it to the image is simpler.
    h = torch.sqrt(area * aspect).round().clamp(1, height)
    w = torch.sqrt(area / aspect).round().clamp(1, width)
    top = (torch.rand(batch, generator=gen) * (height - h + 1)).floor()
    left = (torch.rand(batch, generator=gen) * (width - w + 1)).floor()
    apply = torch.rand(batch, generator=gen) < p
    ys = torch.arange(height).view(1, height, 1)
    xs = torch.arange(width).view(1, 1, width)
    inside_y = (ys >= top.view(-1, 1, 1)) & (ys < (top + h).view(-1, 1, 1))
    inside_x = (xs >= left.view(-1, 1, 1)) & (xs < (left + w).view(-1, 1, 1))
    return inside_y & inside_x & apply.view(-1, 1, 1)
