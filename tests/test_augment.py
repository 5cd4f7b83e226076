"""metalearn/data/augment.py: batched augmentation against torchvision image by image, its
reproducibility from a generator, per-image draws, the off switch, the draws' statistics and the
settings checks."""

from pathlib import Path

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from hydra.utils import instantiate
from omegaconf import OmegaConf
from torchvision.transforms import InterpolationMode, RandomResizedCrop

from metalearn.data.augment import Augment, AugmentDraw
from metalearn.errors import UserError

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "dataset" / "augment" / "natural.yaml"
# The batched crop uses interpolate's own source positions and weights (not roi_align), so it
# agrees with torchvision's resized_crop everywhere, crop edges included, up to float32 rounding:
# a source position near pixel 80 carries up to one float32 ulp (7.6e-6 px), computed in another
# order (FMA) by the kernel, which moves a pixel by up to ~1e-5 of the two pixels' difference
# (6.4e-6 seen on 200 images of 84 x 84; the colour steps add ~1e-7). 1e-4 leaves room for that
# and a brightness factor of up to 1.8, and is still far below the ~1e-1 a box one pixel off, or
# roi_align's blending in of pixels outside the box at its edges, gives on random pixels.
TOLERANCE = 1e-4
OFF = dict(crop_scale=None, flip=0, brightness=0, contrast=0, saturation=0)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def reference(images: torch.Tensor, params: AugmentDraw) -> torch.Tensor:
    """torchvision's functional transforms applied image by image with the drawn parameters."""
    height, width = images.shape[-2:]
    out = []
    for index, image in enumerate(images):
        if params.boxes is not None:
            top, left, box_h, box_w = params.boxes[index].tolist()
            image = TF.resized_crop(image, top, left, box_h, box_w, [height, width],
                                    interpolation=InterpolationMode.BILINEAR, antialias=False)
        if params.flips is not None and params.flips[index]:
            image = TF.horizontal_flip(image)
        if params.brightness is not None:
            image = TF.adjust_brightness(image, float(params.brightness[index]))
        if params.contrast is not None:
            image = TF.adjust_contrast(image, float(params.contrast[index]))
        if params.saturation is not None:
            image = TF.adjust_saturation(image, float(params.saturation[index]))
        out.append(image)
    return torch.stack(out)


@pytest.mark.parametrize(("settings", "shape"), [
    ({}, (3, 7, 3, 20, 24)),  # the defaults on a [B, S, C, H, W] batch of non-square images
    (dict(crop_scale=None), (10, 3, 9, 11)),  # no crop: flip by itself, then the colours
    (dict(crop_scale=None, flip=0, brightness=0), (10, 3, 9, 11)),  # the jitter alone
    (dict(crop_scale=(0.05, 0.3), crop_ratio=(0.5, 2.0), flip=1.0, brightness=0.8,
          contrast=0.9, saturation=1.5), (16, 3, 17, 17)),  # small boxes: strong upsampling
    (dict(crop_scale=(0.1, 0.9), saturation=0.5), (12, 1, 15, 21)),  # grey: no saturation
    (dict(crop_scale=(1.0, 1.0), crop_ratio=(2.0, 3.0)), (4, 3, 16, 16)),  # every box falls back
])
def test_matches_torchvision_image_by_image(settings, shape):
    augment = Augment(**settings)
    images = torch.rand(shape, generator=generator(1))
    out = augment(images, generator(2))
    assert out.shape == images.shape and out.dtype == images.dtype
    assert torch.equal(images, torch.rand(shape, generator=generator(1)))  # left as it was
    flat = images.reshape(-1, *shape[-3:])
    params = augment.draw(flat.shape[0], *shape[-2:], generator(2))  # the same draws replayed
    expected = reference(flat, params).reshape(shape)
    torch.testing.assert_close(out, expected, atol=TOLERANCE, rtol=0)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_images_cpu_generator_same_augmentation():
    images = torch.rand(40, 3, 84, 84, generator=generator(0))  # more than a CPU block
    on_cpu = Augment()(images, generator(1))
    on_gpu = Augment()(images.cuda(), generator(1))  # the draws stay on the generator's device
    assert on_gpu.is_cuda
    torch.testing.assert_close(on_gpu.cpu(), on_cpu, atol=TOLERANCE, rtol=0)


def test_fallback_box_is_torchvision_s():
    # area 1 at aspect ratio >= 2 never fits a square image: all 10 attempts fail
    augment = Augment(crop_scale=(1.0, 1.0), crop_ratio=(2.0, 3.0))
    boxes = augment.draw(3, 16, 16, generator(0)).boxes
    expected = RandomResizedCrop.get_params(torch.zeros(3, 16, 16), [1.0, 1.0], [2.0, 3.0])
    assert boxes.tolist() == [list(expected)] * 3
    wide = Augment(crop_scale=(1.0, 1.0)).draw(2, 10, 40, generator(0)).boxes  # ratio 4: clamped
    expected = RandomResizedCrop.get_params(torch.zeros(3, 10, 40), [1.0, 1.0], [3 / 4, 4 / 3])
    assert wide.tolist() == [list(expected)] * 2


def test_same_generator_state_same_output():
    augment = Augment()
    images = torch.rand(3, 4, 3, 12, 12, generator=generator(0))
    first = augment(images, generator(7))
    assert torch.equal(first, augment(images, generator(7)))
    assert not torch.equal(first, augment(images, generator(8)))
    state = generator(7)
    augment(images, state)  # the generator moves on: the next call draws anew
    assert not torch.equal(first, augment(images, state))


def test_each_image_gets_its_own_draw():
    images = torch.rand(1, 3, 16, 16, generator=generator(0)).expand(2, 8, 3, 16, 16)
    out = Augment()(images, generator(3)).reshape(16, -1)
    assert torch.cdist(out, out).add(torch.eye(16)).min() > 0  # no two outputs alike
    for setting in ("crop_scale", "flip", "brightness", "contrast", "saturation"):
        only = Augment(**{**OFF, setting: Augment().__dict__[setting]})
        out = only(images, generator(3)).reshape(16, -1)
        assert len(torch.unique(out, dim=0)) > 1, setting


def test_everything_off_returns_the_input():
    augment = Augment(**OFF)
    assert not augment.enabled
    images = torch.rand(2, 5, 3, 8, 8, generator=generator(0))
    state = generator(4)
    assert torch.equal(augment(images, state), images)
    assert torch.equal(state.get_state(), generator(4).get_state())  # nothing drawn
    nulls = Augment(crop_scale=None, flip=None, brightness=None, contrast=None, saturation=None)
    assert torch.equal(nulls(images, state), images)
    # a box that is the whole image, resized to its own size, changes nothing either
    whole = Augment(**{**OFF, "crop_scale": (1.0, 1.0), "crop_ratio": (1.0, 1.0)})
    assert torch.equal(whole(images, state), images)


def test_draw_statistics():
    scale, ratio = (0.6, 1.0), (3 / 4, 4 / 3)
    params = Augment(crop_scale=scale, crop_ratio=ratio).draw(2000, 84, 84, generator(5))
    assert abs(params.flips.double().mean().item() - 0.5) < 0.05  # 0.011 is one deviation
    top, left, height, width = params.boxes.double().unbind(1)
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + height <= 84).all() and (left + width <= 84).all()
    # the area of a box of whole pixels is its drawn area up to rounding h and w (<= 0.5 each)
    area = height * width / 84**2
    assert area.min() >= scale[0] - 0.02 and area.max() <= scale[1]
    aspect = width / height
    assert aspect.min() >= ratio[0] - 0.02 and aspect.max() <= ratio[1] + 0.02
    # large areas fit only at ratios near 1, so the boxes kept are smaller than the areas drawn:
    # compare with torchvision's own draws (the deviation of a difference of means is ~0.004)
    with torch.random.fork_rng():
        torch.manual_seed(5)
        theirs = torch.tensor([RandomResizedCrop.get_params(torch.zeros(3, 84, 84), scale, ratio)
                               for _ in range(2000)], dtype=torch.float64)
    assert abs(area.mean() - (theirs[:, 2] * theirs[:, 3] / 84**2).mean()) < 0.02
    assert abs(aspect.mean() - (theirs[:, 3] / theirs[:, 2]).mean()) < 0.03
    for name, low, high in (("brightness", 0.6, 1.4), ("contrast", 0.6, 1.4),
                            ("saturation", 0.6, 1.4)):
        factors = getattr(params, name)
        assert factors.min() >= low and factors.max() < high
        assert abs(factors.mean().item() - 1.0) < 0.02, name


def test_config_builds_the_defaults():
    augment = instantiate(OmegaConf.load(CONFIG))
    assert isinstance(augment, Augment)
    assert repr(augment) == repr(Augment())
    assert CONFIG.read_text().startswith("#") and "metalearn/data/augment.py" in (
        CONFIG.read_text().splitlines()[0])


@pytest.mark.parametrize(("settings", "key"), [
    (dict(crop_scale=(0.0, 1.0)), "crop_scale"),
    (dict(crop_scale=(0.9, 0.5)), "crop_scale"),
    (dict(crop_scale=(0.5, 1.5)), "crop_scale"),
    (dict(crop_scale=0.5), "crop_scale"),
    (dict(crop_ratio=None), "crop_ratio"),
    (dict(crop_ratio=(4 / 3, 3 / 4)), "crop_ratio"),
    (dict(crop_ratio=(0, 1)), "crop_ratio"),
    (dict(flip=1.5), "flip"),
    (dict(flip=True), "flip"),
    (dict(brightness=-0.1), "brightness"),
    (dict(contrast="high"), "contrast"),
    (dict(saturation=float("nan")), "saturation"),
])
def test_bad_settings_name_the_key(settings, key):
    with pytest.raises(UserError, match=rf"^dataset\.augment\.{key}=.* must be ") as caught:
        Augment(**settings)
    assert "\n" not in str(caught.value)


def test_bad_images():
    with pytest.raises(ValueError, match="float images"):
        Augment()(torch.zeros(2, 3, 8, 8, dtype=torch.uint8), generator(0))
    with pytest.raises(ValueError, match="1 or 3 channels"):
        Augment()(torch.zeros(2, 4, 8, 8), generator(0))
    out = Augment(contrast=0, saturation=0)(torch.rand(2, 4, 8, 8), generator(0))
    assert out.shape == (2, 4, 8, 8)  # crop, flip and brightness take any number of channels
