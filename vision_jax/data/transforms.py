"""Preprocessing as small typed numpy functions on example dicts, composed in Python.

Each function takes a dict and returns a new one: `select` and `resize_and_center_crop` act on
one example (sizes may vary before batching); augmentation and `normalize` act on whole batches
(leading dimension B), vectorised. Geometric ops move `image` and, when present, `mask` together
(same crop, same flip), so segmentation reuses them unchanged. Random ops take an explicit
`np.random.Generator`; grain seeds it per element, which makes every epoch's augmentation
reproducible and resumable.
"""

import dataclasses
from typing import Sequence

import grain
import numpy as np
from PIL import Image

_GEOMETRIC_KEYS = ("image", "mask")


def select(example: dict, keys: Sequence[str]) -> dict:
  """Keeps only `keys` (drops ids, captions, ... that the task does not batch)."""
  return {k: example[k] for k in keys}


def pad_and_random_crop(batch: dict, rng: np.random.Generator, padding: int) -> dict:
  """Zero-pads each image of a batch by `padding` on every side and crops back at random.

  Works on whole batches (B, H, W[, C]): one vectorised pad, then a slice per example, which is
  several times cheaper than per-example numpy calls.
  """
  b, h, w = batch["image"].shape[:3]
  offsets = rng.integers(0, 2 * padding + 1, size=(b, 2))  # (B, 2): top, left
  out = dict(batch)
  for key in _GEOMETRIC_KEYS:
    if key in batch:
      x = batch[key]  # (B, H, W, C) or (B, H, W)
      padded = np.pad(x, [(0, 0), (padding, padding), (padding, padding)] + [(0, 0)] * (x.ndim - 3))
      out[key] = np.stack([padded[i, t:t + h, l:l + w] for i, (t, l) in enumerate(offsets)])
  return out


def random_flip(batch: dict, rng: np.random.Generator) -> dict:
  """Flips each example of a batch left-right with probability 1/2."""
  flip = rng.random(len(batch["image"])) < 0.5  # (B,)
  out = dict(batch)
  for key in _GEOMETRIC_KEYS:
    if key in batch:
      x = batch[key]
      where = flip.reshape((-1,) + (1,) * (x.ndim - 1))
      out[key] = np.where(where, x[:, :, ::-1], x)
  return out


def resize_and_center_crop(example: dict, size: int) -> dict:
  """Resizes the shorter side to `size` (bilinear; nearest for masks), then centre-crops."""
  out = dict(example)
  for key in _GEOMETRIC_KEYS:
    if key not in example:
      continue
    x = example[key]
    h, w = x.shape[:2]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    resample = Image.BILINEAR if key == "image" else Image.NEAREST
    squeeze = x.ndim == 3 and x.shape[2] == 1
    pil = Image.fromarray(x[..., 0] if squeeze else x).resize((new_w, new_h), resample)
    y = np.asarray(pil)
    y = y[..., None] if squeeze else y
    top, left = (new_h - size) // 2, (new_w - size) // 2
    out[key] = y[top:top + size, left:left + size]
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
