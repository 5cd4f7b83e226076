"""Data augmentation of few-shot episodes, batched on tensors and reproducible from a generator.

`Augment` takes images [..., C, H, W] (float pixels in [0, 1], before normalisation: the
support_x and query_x of a TaskBatch) and a torch.Generator, and gives every image its own
random draw without a per-image Python loop:

1. random resized crop (torchvision's RandomResizedCrop: area fraction in `crop_scale`,
   log-uniform aspect ratio in `crop_ratio`), resized back to H x W with bilinear interpolation;
2. horizontal flip with probability `flip`;
3. colour jitter in the fixed order brightness, contrast, saturation (torchvision ColorJitter's
   factors, each uniform in [max(0, 1 - v), 1 + v]; one-channel images skip saturation),
   clamped to [0, 1] after each step as torchvision does.

Every random number comes from the generator passed in (drawn on the generator's device, then
moved to the images'), so the same generator state gives the same augmented episodes on any
device, also in a resumed run. `draw` exposes the parameters so they can be replayed.

The recipe is the one natural-image few-shot training commonly uses: Chen et al. 2019 ("A Closer
Look at Few-shot Classification", ICLR) train with a random resized crop, brightness, contrast
and saturation jitter of 0.4 applied in this fixed order, and a horizontal flip; Tian et al.
2020 ("Rethinking Few-Shot Image Classification: a Good Embedding Is All You Need?", RFS, ECCV)
use the same 0.4 jitter and flip with a padded random crop instead. Chen et al. crop with
torchvision's default scale (0.08, 1); the default here, (0.6, 1), is milder, since a K-shot
support set of 84-pixel images has few views of a class to lose an object from.

Left out on purpose:
- random erasing (cutout): a one-shot support image may lose the only view of the part that
  tells its class apart, and neither recipe above uses it;
- hue jitter: colour is what separates many fine-grained classes (birds of CUB), it needs an
  RGB <-> HSV round trip per pixel, and neither recipe above uses it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor

from metalearn.errors import UserError

CONFIG_KEY = "dataset.augment"
CPU_BLOCK = 16  # images per pass on a CPU (16 x 3 x 84 x 84 floats: 1.4 MB, in cache)
CROP_ATTEMPTS = 10  # torchvision's RandomResizedCrop tries 10 boxes before its fallback
GREY_WEIGHTS = (0.2989, 0.587, 0.114)  # torchvision's rgb_to_grayscale


class AugmentDraw(NamedTuple):
    """The random parameters of one call for n images; a field is None when its step is off.

    boxes: [n, 4] int64 (top, left, height, width), torchvision's (i, j, h, w) of resized_crop.
    flips: [n] bool, True where the image is flipped horizontally.
    brightness, contrast, saturation: [n] float64 factors.
    """

    boxes: Tensor | None
    flips: Tensor | None
    brightness: Tensor | None
    contrast: Tensor | None
    saturation: Tensor | None

    def to(self, device: torch.device) -> AugmentDraw:
        return AugmentDraw(*(None if part is None else part.to(device) for part in self))


# A plain class rather than an nn.Module: it has nothing to learn and no state (its randomness is
# the caller's generator), so it has no place in a model's state_dict, summary or .to(), and
# whether to augment is the caller's choice (meta-training batches, test-time views), not a
# train/eval mode flag.
class Augment:
    """Random resized crop, horizontal flip and colour jitter of whole batches of images.

    Each setting is off when null or 0 (crop_scale: null). Built by Hydra from the
    `dataset.augment` config node; called as augment(images, generator).
    """

    def __init__(
        self,
        crop_scale: Sequence[float] | None = (0.6, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        flip: float | None = 0.5,
        brightness: float | None = 0.4,
        contrast: float | None = 0.4,
        saturation: float | None = 0.4,
    ) -> None:
        self.crop_scale = _check_crop_scale(crop_scale)
        self.crop_ratio = _check_crop_ratio(crop_ratio)
        self.flip = _check_number("flip", flip, "null or a probability in [0, 1]", maximum=1.0)
        self.brightness = _check_jitter("brightness", brightness)
        self.contrast = _check_jitter("contrast", contrast)
        self.saturation = _check_jitter("saturation", saturation)

    def __repr__(self) -> str:
        return (f"Augment(crop_scale={self.crop_scale}, crop_ratio={self.crop_ratio}, "
                f"flip={self.flip}, brightness={self.brightness}, contrast={self.contrast}, "
                f"saturation={self.saturation})")

    @property
    def enabled(self) -> bool:
        """False when every setting is off (the call then returns its input)."""
        return bool(self.crop_scale or self.flip or self.brightness or self.contrast
                    or self.saturation)

    def draw(self, n: int, height: int, width: int, generator: torch.Generator) -> AugmentDraw:
        """The random parameters for n images of height x width, all drawn from `generator`
        (on its device) in a fixed order: crop, flip, brightness, contrast, saturation."""
        boxes = flips = None
        if self.crop_scale is not None:
            boxes = self._draw_boxes(n, height, width, generator)
        if self.flip:
            flips = _uniform(n, 0.0, 1.0, generator) < self.flip
        brightness, contrast, saturation = (
            _uniform(n, max(0.0, 1.0 - v), 1.0 + v, generator) if v else None
            for v in (self.brightness, self.contrast, self.saturation))
        return AugmentDraw(boxes, flips, brightness, contrast, saturation)

    @torch.no_grad()  # a data pipeline step: nothing to differentiate, and ops work in place
    def __call__(self, images: Tensor, generator: torch.Generator) -> Tensor:
        """images [..., C, H, W] (float in [0, 1]) augmented, each with its own draw, in a new
        tensor of the same shape (the input itself when every setting is off)."""
        if not isinstance(images, Tensor) or images.dim() < 3 or not images.is_floating_point():
            raise ValueError(f"augment takes float images [..., C, H, W]; got "
                             f"{getattr(images, 'dtype', type(images))} of shape "
                             f"{tuple(getattr(images, 'shape', ()))}")
        if not self.enabled:
            return images
        channels, height, width = images.shape[-3:]
        flat = images.reshape(-1, channels, height, width)
        params = self.draw(flat.shape[0], height, width, generator).to(images.device)
        return self.apply(flat, params).reshape(images.shape)

    @torch.no_grad()
    def apply(self, images: Tensor, params: AugmentDraw) -> Tensor:
        """images [n, C, H, W] transformed with drawn parameters (each image its own), in a new
        tensor.

        On a CPU the images go through in blocks of CPU_BLOCK (a loop over blocks, not images):
        every step is a pass over its block, and a block that stays in the cache makes the
        passes cheap; over the whole batch at once each would be a trip to memory. An
        accelerator takes the whole batch in one go.
        """
        channels = images.shape[1]
        needs_grey = params.contrast is not None or (params.saturation is not None
                                                     and channels != 1)
        if needs_grey and channels not in (1, 3):
            raise ValueError(f"contrast and saturation jitter need 1 or 3 channels; the images "
                             f"have {channels}")
        n = images.shape[0]
        out = torch.empty(images.shape, dtype=images.dtype, device=images.device)
        block = CPU_BLOCK if images.device.type == "cpu" else max(n, 1)
        for start in range(0, n, block):
            part = AugmentDraw(*(None if field is None else field[start:start + block]
                                 for field in params))
            _apply(images[start:start + block], part, out[start:start + block])
        return out

    def _draw_boxes(self, n: int, height: int, width: int,
                    generator: torch.Generator) -> Tensor:
        """torchvision's RandomResizedCrop.get_params for n images at once: 10 attempts each,
        the first box that fits; none fits: the largest centred box of the ratio clamped into
        crop_ratio (the whole image when its own ratio lies in crop_ratio)."""
        (scale_low, scale_high), (ratio_low, ratio_high) = self.crop_scale, self.crop_ratio
        area = height * width
        scale = _uniform((n, CROP_ATTEMPTS), scale_low, scale_high, generator)
        log_ratio = _uniform((n, CROP_ATTEMPTS), math.log(ratio_low), math.log(ratio_high),
                             generator)
        position = _uniform((n, 2), 0.0, 1.0, generator)
        target_area, ratio = area * scale, log_ratio.exp()
        w = (target_area * ratio).sqrt().round().long()  # round half to even, as Python's round
        h = (target_area / ratio).sqrt().round().long()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.byte().argmax(dim=1, keepdim=True)  # the first attempt that fits
        h, w = h.gather(1, first).squeeze(1), w.gather(1, first).squeeze(1)
        top = (position[:, 0] * (height - h + 1)).floor().long().clamp_(max=height - h)
        left = (position[:, 1] * (width - w + 1)).floor().long().clamp_(max=width - w)
        fallback_h, fallback_w = _fallback_box(height, width, ratio_low, ratio_high)
        found = fits.any(dim=1)
        h = torch.where(found, h, fallback_h)
        w = torch.where(found, w, fallback_w)
        top = torch.where(found, top, (height - fallback_h) // 2)
        left = torch.where(found, left, (width - fallback_w) // 2)
        return torch.stack([top, left, h, w], dim=1)


def _apply(images: Tensor, params: AugmentDraw, out: Tensor) -> None:
    """Augment.apply on one block, written to `out`: crop (the flip folded in) or flip, then
    brightness, contrast and saturation in place."""
    if params.boxes is not None:
        x = resized_crop(images, params.boxes, params.flips, out=out)
    elif params.flips is not None:
        x = torch.where(params.flips.view(-1, 1, 1, 1), images.flip(-1), images, out=out)
    else:
        x = images
    if params.brightness is not None:
        x = torch.mul(x, _per_image(params.brightness, x), out=out).clamp_(0, 1)
    if params.contrast is not None:
        mean = (_grey(x) if x.shape[1] == 3 else x).mean(dim=(-3, -2, -1), keepdim=True)
        x = _blend(x, mean, params.contrast, out)
    if params.saturation is not None and x.shape[1] == 3:
        x = _blend(x, _grey(x), params.saturation, out)
    if x is not out:
        out.copy_(x)


def resized_crop(images: Tensor, boxes: Tensor, flips: Tensor | None = None,
                 out: Tensor | None = None) -> Tensor:
    """Each image's box (top, left, height, width) cut out and resized back to the images' size
    with bilinear interpolation, all images at once; where `flips` is True, flipped
    horizontally too (the output's columns reversed, at no cost). Written to `out` if given.

    Chosen over torchvision.ops.roi_align: bilinear interpolation is separable, so two row
    copies (index_select) and two column gathers per image do it, with the source positions and
    weights that torch.nn.functional.interpolate(mode="bilinear", align_corners=False) uses on
    the cropped image (the source index clamped to the crop). The result is that of
    torchvision's resized_crop(antialias=False) up to float rounding, also at the crop's edges,
    where roi_align would blend in the pixels just outside the box; and it runs on any device.
    """
    n, channels, height, width = images.shape
    top, left, box_h, box_w = boxes.to(images.device).unbind(dim=1)
    row0, row1, row_weight = _source_positions(top, box_h, height, images.dtype)
    col0, col1, col_weight = _source_positions(left, box_w, width, images.dtype)
    if flips is not None:
        flips = flips.to(images.device).view(-1, 1)
        col0, col1, col_weight = (torch.where(flips, part.flip(-1), part)
                                  for part in (col0, col1, col_weight))
    # rows: whole rows copied from the images seen as [n * C * H, W]
    first_row = (torch.arange(n * channels, device=images.device) * height).view(n, channels, 1)
    rows = images.reshape(n * channels * height, width)
    upper = rows.index_select(0, (first_row + row0[:, None, :]).flatten())
    lower = rows.index_select(0, (first_row + row1[:, None, :]).flatten())
    weight = row_weight[:, None, :, None].expand(n, channels, height, 1).reshape(-1, 1)
    rows = upper.lerp_(lower, weight).view(n, channels, height, width)
    shape = (n, channels, height, width)
    left_columns = torch.gather(rows, 3, col0[:, None, None, :].expand(shape), out=out)
    return left_columns.lerp_(rows.gather(3, col1[:, None, None, :].expand(shape)),
                              col_weight[:, None, None, :])


def _source_positions(start: Tensor, length: Tensor, size: int,
                      dtype: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """For `size` output pixels along one axis of each of n boxes ([n] start and length): the
    two source pixels [n, size] and the weight of the second, as interpolate computes them
    (scale length/size, source (i + 0.5) * scale - 0.5 clamped to the box, in float32, or in
    float64 for float64 images)."""
    math_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    scale = length.to(math_dtype) / size
    source = ((torch.arange(size, device=start.device, dtype=math_dtype) + 0.5)
              * scale[:, None] - 0.5).clamp_(min=0)
    last = (length - 1)[:, None]
    index0 = torch.minimum(source.floor().long(), last)
    index1 = torch.minimum(index0 + 1, last)
    weight = (source - index0).clamp_(0, 1)
    return start[:, None] + index0, start[:, None] + index1, weight.to(dtype)


def _fallback_box(height: int, width: int, ratio_low: float,
                  ratio_high: float) -> tuple[int, int]:
    """torchvision's central crop when no attempt fits: (height, width) of the box."""
    in_ratio = width / height
    if in_ratio < ratio_low:
        return int(round(width / ratio_low)), width
    if in_ratio > ratio_high:
        return height, int(round(height * ratio_high))
    return height, width


def _uniform(size: int | tuple[int, ...], low: float, high: float,
             generator: torch.Generator) -> Tensor:
    """Uniform float64 numbers in [low, high) from `generator`, on its device."""
    size = (size,) if isinstance(size, int) else size
    return torch.rand(size, generator=generator, device=generator.device,
                      dtype=torch.float64) * (high - low) + low


def _per_image(factors: Tensor, images: Tensor) -> Tensor:
    return factors.to(device=images.device, dtype=images.dtype).view(-1, 1, 1, 1)


def _grey(images: Tensor) -> Tensor:
    """[n, 1, H, W] luminance of RGB images, as torchvision's rgb_to_grayscale computes it (a
    sum of products, not a matmul, which TF32 settings would make coarse on a GPU)."""
    red, green, blue = images.unbind(dim=1)
    return (red * GREY_WEIGHTS[0]).add_(green, alpha=GREY_WEIGHTS[1]).add_(
        blue, alpha=GREY_WEIGHTS[2]).unsqueeze(1)


def _blend(images: Tensor, other: Tensor, factors: Tensor, out: Tensor) -> Tensor:
    """torchvision's _blend, factor * images + (1 - factor) * other clamped to [0, 1], as
    other + factor * (images - other): one lerp, written to `out` (which may be `images`)."""
    return torch.lerp(other, images, _per_image(factors, images), out=out).clamp_(0, 1)


# ---- settings checks: one line naming dataset.augment.<name>, the value and what is allowed


def _shown(value: Any) -> str:
    if isinstance(value, Sequence) and not isinstance(value, str):
        value = list(value)  # a Hydra ListConfig prints as a list
    return repr(value)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


def _check_number(name: str, value: Any, allowed: str, maximum: float = math.inf) -> float:
    if value is None:
        return 0.0
    if not _is_number(value) or not 0 <= value <= maximum:
        raise UserError(f"{CONFIG_KEY}.{name}={_shown(value)} must be {allowed}")
    return float(value)


def _check_jitter(name: str, value: Any) -> float:
    return _check_number(name, value, "null, 0 (off) or a number >= 0")


def _pair(value: Any) -> tuple[float, float] | None:
    if (isinstance(value, Sequence) and not isinstance(value, str) and len(value) == 2
            and all(_is_number(part) for part in value)):
        return float(value[0]), float(value[1])
    return None


def _check_crop_scale(value: Any) -> tuple[float, float] | None:
    if value is None or (_is_number(value) and value == 0):
        return None
    pair = _pair(value)
    if pair is None or not 0 < pair[0] <= pair[1] <= 1:
        raise UserError(f"{CONFIG_KEY}.crop_scale={_shown(value)} must be null (off) or a pair "
                        f"[low, high] of area fractions with 0 < low <= high <= 1")
    return pair


def _check_crop_ratio(value: Any) -> tuple[float, float]:
    pair = _pair(value)
    if pair is None or not 0 < pair[0] <= pair[1]:
        raise UserError(f"{CONFIG_KEY}.crop_ratio={_shown(value)} must be a pair [low, high] "
                        f"of aspect ratios (width / height) with 0 < low <= high")
    return pair
