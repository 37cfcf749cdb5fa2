"""Preprocessing as small typed numpy functions on example dicts, composed in Python.

Each function takes a dict and returns a new one: `select`, `resize_and_center_crop`,
`random_resized_crop` and `random_scale_crop` act on one example (sizes may vary before
batching); the other augmentations and `normalize` act on whole batches (leading dimension B),
vectorised. Random ops take an explicit `np.random.Generator`; grain seeds it per element, which
makes every epoch's augmentation reproducible and resumable.

Geometric ops move every feature by its declared *kind* (a `FeatureKinds` mapping, feature →
kind; a task declares it as `Task.feature_kinds`), all with the same crop, scale and flip:

- `image` (H, W[, C]): resampled bilinearly (antialiased when shrinking); 0 outside the image.
  Boxes and points are in pixels of the example's first `image` feature.
- `mask` (H, W[, C]): nearest neighbour, so labels stay labels; `MASK_FILL` (255, "no class")
  outside the image.
- `boxes` (..., M, 4): (ymin, xmin, ymax, xmax) in pixels. Rows without area (ymax <= ymin or
  xmax <= xmin, e.g. all-zero padding) are padding and are never changed. Crops shift, scale and
  clip real boxes to the output window; a box left without area becomes an all-zero row, i.e.
  padding (a task that pairs boxes with labels in another feature must treat such rows as
  padding).
- `points` (..., N, 2): (y, x) in pixels, shifted, scaled and mirrored like the image. Points
  outside the output window keep their (moved) coordinates, so a task can tell where they went;
  NaN rows stay NaN (pad points with NaN).
- `other`: not moved (labels, tokens, ids, ...).

Coordinates are continuous pixel coordinates: pixel (i, j) covers [i, i + 1) × [j, j + 1), so a
left-right flip maps x to W - x, a resize by s maps x to x · s (as PIL resamples), and a crop at
(top, left) subtracts (top, left). A feature without a declared kind is an error naming it: the
ops never guess from a feature's name.
"""

from collections.abc import Mapping, Sequence
import dataclasses
import typing
from typing import Literal

import grain
import numpy as np
from PIL import Image

from vision_jax import errors

Kind = Literal["image", "mask", "boxes", "points", "other"]
KINDS: tuple[str, ...] = typing.get_args(Kind)
IMAGE, MASK, BOXES, POINTS, OTHER = KINDS  # Names for declarations: {"centre": POINTS}.
FeatureKinds = Mapping[str, Kind]  # Feature → kind.
# Classification's features: the default of `Task.feature_kinds` and of the pipeline.
DEFAULT_KINDS: dict[str, Kind] = {"image": IMAGE, "label": OTHER}
_RASTERS = (IMAGE, MASK)  # Kinds that are pixels.
_COORDINATES = (BOXES, POINTS)  # Kinds that are pixel coordinates.
# Mask value of pixels outside the image (padding of crops): no class, so segmentation ignores
# them, as VOC's 255.
MASK_FILL = 255


def undeclared(key: str) -> errors.UserError:
  """The error for a feature that has no kind: names it, the kinds and where to declare them."""
  return errors.UserError(
      f"Feature {key!r} has no declared kind, so geometric augmentation cannot know whether to "
      f"move it; declare it in the task's `feature_kinds` (the pipeline's `kinds`) as one of "
      f"{list(KINDS)} ('other': not moved, e.g. labels, tokens, ids).")


def check_kinds(kinds: FeatureKinds) -> None:
  """Raises a `UserError` naming the feature whose kind is not one of `KINDS`."""
  for key, kind in kinds.items():
    if kind not in KINDS:
      raise errors.UserError(f"Feature {key!r} has kind {kind!r}; valid kinds: {list(KINDS)}.")


def _kind(kinds: FeatureKinds, key: str) -> str:
  if key not in kinds:
    raise undeclared(key)
  return kinds[key]


def keys_of(example: dict, kinds: FeatureKinds, wanted: tuple[str, ...]) -> list[str]:
  """The features of `example` whose kind is in `wanted` (every feature must have a kind)."""
  return [k for k in example if _kind(kinds, k) in wanted]


def reference_size(example: dict, kinds: FeatureKinds, batched: bool = False) -> tuple[int, int]:
  """(H, W) of the first `image` feature: the pixels that boxes and points are in."""
  for key in example:
    if _kind(kinds, key) == "image":
      return example[key].shape[1:3] if batched else example[key].shape[:2]
  raise errors.UserError(f"Features {list(example)} have no feature of kind 'image' that boxes "
                         "and points could be pixels of; declare one in `feature_kinds`.")


def fill_value(kind: str) -> int:
  """What a raster holds where a geometric op leaves no pixel: 0 in images, `MASK_FILL` in
  masks."""
  return 0 if kind == IMAGE else MASK_FILL


def select(example: dict, keys: Sequence[str]) -> dict:
  """Keeps only `keys` (drops ids, captions, ... that the task does not batch)."""
  return {k: example[k] for k in keys}


# --- Coordinates ---------------------------------------------------------------------------------


def _real(boxes: np.ndarray) -> np.ndarray:
  """(..., M) True for boxes with area; the others are padding."""
  return (boxes[..., 2] > boxes[..., 0]) & (boxes[..., 3] > boxes[..., 1])


def coordinate_dtype(x: np.ndarray) -> np.dtype:
  """The dtype of moved boxes or points: their own when floating, else float32."""
  return x.dtype if np.issubdtype(x.dtype, np.floating) else np.dtype(np.float32)


def _affine(x: np.ndarray, kind: str, scale: np.ndarray, shift: np.ndarray,
            size: tuple[int, int]) -> np.ndarray:
  """Maps boxes or points by (y, x) → (y, x) · scale + shift, into an output of `size` (h, w).

  `scale` and `shift` are (..., 2) (y, x), broadcast against the rows. Real boxes are clipped to
  the output and become all-zero rows where nothing is left; padding boxes stay as they are.
  """
  if kind == "points":
    return (x.astype(np.float64) * scale + shift).astype(coordinate_dtype(x))
  scale4, shift4 = np.concatenate([scale, scale], -1), np.concatenate([shift, shift], -1)
  moved = np.clip(x.astype(np.float64) * scale4 + shift4, 0, np.float64([*size, *size]))
  real = _real(x)[..., None]
  return np.where(real & _real(moved)[..., None], moved, np.where(real, 0, x)).astype(
      coordinate_dtype(x))


def _mirror(x: np.ndarray, kind: str, width: int) -> np.ndarray:
  """Boxes or points mirrored left-right in an image `width` wide: x → width - x."""
  if kind == "points":
    return np.stack([x[..., 0], width - x[..., 1]], axis=-1)
  mirrored = np.stack([x[..., 0], width - x[..., 3], x[..., 2], width - x[..., 1]], axis=-1)
  return np.where(_real(x)[..., None], mirrored, x)  # Padding rows stay.


def _move_coordinates(example: dict, kinds: FeatureKinds, scale, shift, size) -> dict:
  """`example` with its boxes and points mapped by `_affine` (one example or a batch)."""
  out = dict(example)
  for key in keys_of(example, kinds, _COORDINATES):
    out[key] = _affine(np.asarray(example[key]), kinds[key], np.asarray(scale, np.float64),
                       np.asarray(shift, np.float64), size)
  return out


def _per_row(values: np.ndarray, x: np.ndarray) -> np.ndarray:
  """(B, 2) per-example values shaped (B, 1, ..., 1, 2) to broadcast against (B, ..., 2|4)."""
  return values.reshape((len(values),) + (1,) * (x.ndim - 2) + (2,))


# --- Batch ops -----------------------------------------------------------------------------------


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


def pad_and_crop(batch: dict, offsets: np.ndarray, padding: int,
                 kinds: FeatureKinds = DEFAULT_KINDS) -> dict:
  """Pads each example of a batch by `padding` on every side and crops back at `offsets`.

  Works on whole batches (B, H, W[, C]): one vectorised pad, then a slice per example, which is
  several times cheaper than per-example numpy calls. `offsets`: (B, 2) top, left. Images are
  padded with 0, masks with `MASK_FILL`; boxes and points move by `padding - offset`.
  """
  h, w = reference_size(batch, kinds, batched=True)
  out = dict(batch)
  for key in keys_of(batch, kinds, _RASTERS):
    x = batch[key]  # (B, H, W, C) or (B, H, W)
    padded = np.pad(x, [(0, 0), (padding, padding), (padding, padding)] + [(0, 0)] * (x.ndim - 3),
                    constant_values=fill_value(kinds[key]))
    out[key] = np.stack([padded[i, t:t + h, l:l + w] for i, (t, l) in enumerate(offsets)])
  for key in keys_of(batch, kinds, _COORDINATES):
    x = np.asarray(batch[key])  # (B, ..., 4) or (B, ..., 2)
    shift = _per_row(padding - np.asarray(offsets, np.float64), x)
    out[key] = _affine(x, kinds[key], np.ones(2), shift, (h, w))
  return out


def flip_where(batch: dict, flip: np.ndarray, kinds: FeatureKinds = DEFAULT_KINDS) -> dict:
  """Flips left-right the examples of a batch where `flip` (B,) is True.

  Moves every image and mask, and boxes and points in pixels of the batch's images (x → W - x);
  padding boxes (rows without area) stay as they are.
  """
  out = dict(batch)
  for key in keys_of(batch, kinds, _RASTERS):
    x = batch[key]
    where = flip.reshape((-1,) + (1,) * (x.ndim - 1))
    out[key] = np.where(where, x[:, :, ::-1], x)
  coordinates = keys_of(batch, kinds, _COORDINATES)
  if coordinates:
    width = reference_size(batch, kinds, batched=True)[1]
    for key in coordinates:
      x = np.asarray(batch[key])
      where = flip.reshape((-1,) + (1,) * (x.ndim - 1))
      out[key] = np.where(where, _mirror(x, kinds[key], width), x)
  return out


def apply_crop_and_flip(batch: dict, padding: int, kinds: FeatureKinds = DEFAULT_KINDS) -> dict:
  """Applies the offsets and flips that `sample_crop_and_flip` drew, and drops them."""
  out = dict(batch)
  offsets, flip = out.pop("crop_offset"), out.pop("flip")
  if padding:
    out = pad_and_crop(out, offsets, padding, kinds)
  return flip_where(out, flip, kinds)


# --- Per-example ops -----------------------------------------------------------------------------


def _resize_box(x: np.ndarray, kind: str, size: tuple[int, int],
                box: tuple[float, float, float, float] | None = None) -> np.ndarray:
  """Resizes `x` (H, W[, C]) to `size` (h, w), reading only `box` (left, top, right, bottom).

  Bilinear for images (antialiased when shrinking, as PIL does), nearest for masks so labels
  stay labels. Cropping through PIL's `box` costs one resample, not a crop plus a resample.
  """
  squeeze = x.ndim == 3 and x.shape[2] == 1
  resample = Image.BILINEAR if kind == "image" else Image.NEAREST
  pil = Image.fromarray(x[..., 0] if squeeze else x)
  y = np.asarray(pil.resize((size[1], size[0]), resample, box=box))
  return y[..., None] if squeeze else y


def _center_crop_geometry(h: int, w: int, size: int,
                          crop_fraction: float) -> tuple[int, int, int, int]:
  """`(new_h, new_w, top, left)`: the resized image and the corner of its centre crop."""
  short = round(size / crop_fraction)
  scale = short / min(h, w)
  new_h, new_w = max(short, round(h * scale)), max(short, round(w * scale))
  return new_h, new_w, (new_h - size) // 2, (new_w - size) // 2


def resize_and_center_crop(example: dict, size: int, crop_fraction: float = 1.0,
                           kinds: FeatureKinds = DEFAULT_KINDS) -> dict:
  """Resizes the shorter side to `size / crop_fraction`, then centre-crops `size`×`size`.

  `crop_fraction=0.875` is the classic ImageNet evaluation (shorter side 256, centre 224).
  Each image and mask is resized from its own size; boxes and points follow the first image.
  """
  out = dict(example)
  for key in keys_of(example, kinds, _RASTERS):
    new_h, new_w, top, left = _center_crop_geometry(*example[key].shape[:2], size, crop_fraction)
    out[key] = _resize_box(example[key], kinds[key], (new_h, new_w))[top:top + size,
                                                                      left:left + size]
  if keys_of(example, kinds, _COORDINATES):
    h, w = reference_size(example, kinds)
    new_h, new_w, top, left = _center_crop_geometry(h, w, size, crop_fraction)
    out = _move_coordinates(out, kinds, (new_h / h, new_w / w), (-top, -left), (size, size))
  return out


def random_resized_crop(example: dict, rng: np.random.Generator, size: int,
                        scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3),
                        attempts: int = 10, kinds: FeatureKinds = DEFAULT_KINDS) -> dict:
  """Inception-style crop: a random area fraction and aspect ratio, resized to `size`×`size`.

  The training augmentation of GoogLeNet and every ImageNet recipe since: the box covers a
  fraction of the image area uniform in `scale` with an aspect ratio log-uniform in `ratio`.
  After `attempts` boxes that do not fit, it falls back to the centred box of the largest
  allowed aspect ratio (as torchvision does). One example (H, W[, C]); masks, boxes and points
  move with it.
  """
  h, w = reference_size(example, kinds)
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
  for key in keys_of(example, kinds, _RASTERS):
    out[key] = _resize_box(example[key], kinds[key], (size, size), box)
  sy, sx = size / crop_h, size / crop_w
  return _move_coordinates(out, kinds, (sy, sx), (-top * sy, -left * sx), (size, size))


def random_scale_crop(example: dict, rng: np.random.Generator, size: int,
                      scale_range: tuple[float, float] = (0.5, 2.0),
                      kinds: FeatureKinds = DEFAULT_KINDS) -> dict:
  """Random scale, then a random `size`×`size` window (the segmentation augmentation).

  The shorter side is resized to `size * s`, s log-uniform in `scale_range`, so the same range
  means the same zoom for images of any size. Where the scaled image is smaller than the
  window, it lands at a random place and the rest is padding: 0 in images, `MASK_FILL` in
  masks. Bilinear for images, nearest for masks; boxes and points move with them. One example
  (H, W[, C]).
  """
  h, w = reference_size(example, kinds)
  factor = size * np.exp(rng.uniform(np.log(scale_range[0]), np.log(scale_range[1]))) / min(h, w)
  new_h, new_w = max(1, round(h * factor)), max(1, round(w * factor))
  # The window's top-left corner in the scaled image; negative: padding above / to the left.
  top = int(rng.integers(min(0, new_h - size), max(0, new_h - size) + 1))
  left = int(rng.integers(min(0, new_w - size), max(0, new_w - size) + 1))
  rows = slice(max(top, 0), min(top + size, new_h))
  cols = slice(max(left, 0), min(left + size, new_w))
  out = dict(example)
  for key in keys_of(example, kinds, _RASTERS):
    x = _resize_box(example[key], kinds[key], (new_h, new_w))
    canvas = np.full((size, size) + x.shape[2:], fill_value(kinds[key]), x.dtype)
    canvas[rows.start - top:rows.stop - top, cols.start - left:cols.stop - left] = x[rows, cols]
    out[key] = canvas
  return _move_coordinates(out, kinds, (new_h / h, new_w / w), (-top, -left), (size, size))


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
