"""Preprocessing as small typed numpy functions on example dicts, composed in Python.

Each function takes a dict and returns a new one: `select`, `resize_and_center_crop` and
`random_resized_crop` act on one example (sizes may vary before batching); the other
augmentations and `normalize` act on whole batches (leading dimension B), vectorised. Geometric
ops move `image` and, when present, `mask` together (same crop, same flip), so segmentation
reuses them unchanged. Random ops take an explicit `np.random.Generator`; grain seeds it per
element, which makes every epoch's augmentation reproducible and resumable.
"""

import dataclasses
from typing import Sequence

import grain
import numpy as np
from PIL import Image

_GEOMETRIC_KEYS = ("image", "mask")
# Boxes in pixels that flips move with the image (detection); crops and scales do not move them.
BOXES_KEY = "boxes"
# Mask value of pixels outside the image (padding of `random_scale_crop`): no class, so
# segmentation ignores them, as VOC's 255.
MASK_FILL = 255


def select(example: dict, keys: Sequence[str]) -> dict:
  """Keeps only `keys` (drops ids, captions, ... that the task does not batch)."""
  return {k: example[k] for k in keys}


def sample_crop_and_flip(example: dict, rng: np.random.Generator, padding: int,
                         flip: bool) -> dict:
  """Draws one example's augmentation: a crop offset and a flip bit (applied per batch later).

  Drawing per example, from grain's per-record generator, ties the augmentation to the record's
  global position in the data stream; applying it per batch keeps the pixel work vectorised.
  So the same step sees the same augmented batch on any number of processes and devices.

  Adds `crop_offset` (2,) int (top, left in [0, 2 * padding]) and `flip` (bool).
  """
  out = dict(example)
  out["crop_offset"] = rng.integers(0, 2 * padding + 1, size=2)
  out["flip"] = bool(flip and rng.random() < 0.5)
  return out


def pad_and_crop(batch: dict, offsets: np.ndarray, padding: int) -> dict:
  """Zero-pads each image of a batch by `padding` on every side and crops back at `offsets`.

  Works on whole batches (B, H, W[, C]): one vectorised pad, then a slice per example, which is
  several times cheaper than per-example numpy calls. `offsets`: (B, 2) top, left.
  """
  b, h, w = batch["image"].shape[:3]
  out = dict(batch)
  for key in _GEOMETRIC_KEYS:
    if key in batch:
      x = batch[key]  # (B, H, W, C) or (B, H, W)
      padded = np.pad(x, [(0, 0), (padding, padding), (padding, padding)] + [(0, 0)] * (x.ndim - 3))
      out[key] = np.stack([padded[i, t:t + h, l:l + w] for i, (t, l) in enumerate(offsets)])
  return out


def flip_where(batch: dict, flip: np.ndarray) -> dict:
  """Flips left-right the examples of a batch where `flip` (B,) is True.

  Moves `image`, `mask` and, when present, `boxes` (B, M, 4) (ymin, xmin, ymax, xmax) in pixels
  of the batch's images; empty rows (padding) stay as they are.
  """
  out = dict(batch)
  for key in _GEOMETRIC_KEYS:
    if key in batch:
      x = batch[key]
      where = flip.reshape((-1,) + (1,) * (x.ndim - 1))
      out[key] = np.where(where, x[:, :, ::-1], x)
  if BOXES_KEY in batch:
    boxes, width = batch[BOXES_KEY], batch["image"].shape[2]
    mirrored = np.stack([boxes[..., 0], width - boxes[..., 3], boxes[..., 2],
                         width - boxes[..., 1]], axis=-1)
    real = (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])  # (B, M)
    out[BOXES_KEY] = np.where((flip[:, None] & real)[..., None], mirrored, boxes)
  return out


def apply_crop_and_flip(batch: dict, padding: int) -> dict:
  """Applies the offsets and flips that `sample_crop_and_flip` drew, and drops them."""
  out = dict(batch)
  offsets, flip = out.pop("crop_offset"), out.pop("flip")
  if padding:
    out = pad_and_crop(out, offsets, padding)
  return flip_where(out, flip)


def _resize_box(x: np.ndarray, key: str, size: tuple[int, int],
                box: tuple[float, float, float, float] | None = None) -> np.ndarray:
  """Resizes `x` (H, W[, C]) to `size` (h, w), reading only `box` (left, top, right, bottom).

  Bilinear for images (antialiased when shrinking, as PIL does), nearest for masks so labels
  stay labels. Cropping through PIL's `box` costs one resample, not a crop plus a resample.
  """
  squeeze = x.ndim == 3 and x.shape[2] == 1
  resample = Image.BILINEAR if key == "image" else Image.NEAREST
  pil = Image.fromarray(x[..., 0] if squeeze else x)
  y = np.asarray(pil.resize((size[1], size[0]), resample, box=box))
  return y[..., None] if squeeze else y


def resize_and_center_crop(example: dict, size: int, crop_fraction: float = 1.0) -> dict:
  """Resizes the shorter side to `size / crop_fraction`, then centre-crops `size`×`size`.

  `crop_fraction=0.875` is the classic ImageNet evaluation (shorter side 256, centre 224).
  """
  out = dict(example)
  for key in _GEOMETRIC_KEYS:
    if key not in example:
      continue
    h, w = example[key].shape[:2]
    short = round(size / crop_fraction)
    scale = short / min(h, w)
    new_h, new_w = max(short, round(h * scale)), max(short, round(w * scale))
    top, left = (new_h - size) // 2, (new_w - size) // 2
    out[key] = _resize_box(example[key], key, (new_h, new_w))[top:top + size, left:left + size]
  return out


def random_resized_crop(example: dict, rng: np.random.Generator, size: int,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        attempts: int = 10) -> dict:
  """Inception-style crop: a random area fraction and aspect ratio, resized to `size`×`size`.

  The training augmentation of GoogLeNet and every ImageNet recipe since: the box covers a
  fraction of the image area uniform in `scale` with an aspect ratio log-uniform in `ratio`.
  After `attempts` boxes that do not fit, it falls back to the centred box of the largest
  allowed aspect ratio (as torchvision does). One example (H, W[, C]); `mask` moves with it.
  """
  h, w = example["image"].shape[:2]
  area = h * w
  for _ in range(attempts):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    crop_w = round(np.sqrt(target * aspect))
    crop_h = round(np.sqrt(target / aspect))
    if 0 < crop_w <= w and 0 < crop_h <= h:
      top = int(rng.integers(0, h - crop_h + 1))
      left = int(rng.integers(0, w - crop_w + 1))
      break
  else:  # Fallback: whole image, clipped to the allowed aspect ratios.
    aspect = w / h
    crop_w, crop_h = ((w, round(w / ratio[0])) if aspect < ratio[0] else
                      (round(h * ratio[1]), h) if aspect > ratio[1] else (w, h))
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
  box = (left, top, left + crop_w, top + crop_h)
  out = dict(example)
  for key in _GEOMETRIC_KEYS:
    if key in example:
      out[key] = _resize_box(example[key], key, (size, size), box)
  return out


def random_scale_crop(example: dict, rng: np.random.Generator, size: int,
                      scale_range: tuple[float, float] = (0.5, 2.0)) -> dict:
  """Random scale, then a random `size`×`size` window (the segmentation augmentation).

  The shorter side is resized to `size * s`, s log-uniform in `scale_range`, so the same range
  means the same zoom for images of any size. Where the scaled image is smaller than the
  window, it lands at a random place and the rest is padding: 0 in the image, `MASK_FILL` in
  the mask. Bilinear for the image, nearest for the mask. One example (H, W[, C]).
  """
  h, w = example["image"].shape[:2]
  factor = size * np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))) / min(h, w)
  new_h, new_w = max(1, round(h * factor)), max(1, round(w * factor))
  # The window's top-left corner in the scaled image; negative: padding above / to the left.
  top = int(rng.integers(min(0, new_h - size), max(0, new_h - size) + 1))
  left = int(rng.integers(min(0, new_w - size), max(0, new_w - size) + 1))
  rows = slice(max(top, 0), min(top + size, new_h))
  cols = slice(max(left, 0), min(left + size, new_w))
  out = dict(example)
  for key in _GEOMETRIC_KEYS:
    if key in example:
      x = _resize_box(example[key], key, (new_h, new_w))
      canvas = np.full((size, size) + x.shape[2:], 0 if key == "image" else MASK_FILL, x.dtype)
      canvas[rows.start - top:rows.stop - top, cols.start - left:cols.stop - left] = x[rows, cols]
      out[key] = canvas
  return out


def normalize(example: dict, mean: np.ndarray, std: np.ndarray) -> dict:
  """Maps uint8 pixels to float32 `(x / 255 - mean) / std`, per channel (any leading dims)."""
  out = dict(example)
  out["image"] = ((example["image"].astype(np.float32) / 255.0 - mean) / std).astype(np.float32)
  return out


@dataclasses.dataclass(frozen=True)
class MapFn(grain.transforms.Map):
  """A deterministic transform for grain: `fn(example, **kwargs)`."""
  fn: callable
  kwargs: dict = dataclasses.field(default_factory=dict)

  def map(self, element):
    return self.fn(element, **self.kwargs)


@dataclasses.dataclass(frozen=True)
class RandomMapFn(grain.transforms.RandomMap):
  """A random transform for grain: `fn(example, rng, **kwargs)` with grain's per-record rng."""
  fn: callable
  kwargs: dict = dataclasses.field(default_factory=dict)

  def random_map(self, element, rng: np.random.Generator):
    return self.fn(element, rng, **self.kwargs)
