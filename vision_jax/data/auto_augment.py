"""RandAugment and TrivialAugment on uint8 numpy images, one example at a time.

RandAugment (Cubuk et al. 2019) applies `num_ops` ops drawn uniformly from the list below, each
at the fixed magnitude bin `magnitude`; TrivialAugment (Müller & Hutter 2021, its "wide" space)
applies one op at a magnitude bin drawn uniformly. Both follow torchvision's `RandAugment` and
`TrivialAugmentWide`: the same 14 ops in the same order, the same `NUM_BINS` = 31 magnitude bins
(0..30; torchvision's RandAugment default is bin 9, i.e. 9/30 of the range below; the paper's
M=9 of 10 is bin 27), a random sign for the signed ops, nearest-neighbour resampling and fill 0,
and the pixel arithmetic of `torchvision.transforms.v2.functional` on uint8 tensors.

| op | magnitude at bin 30, RandAugment / TrivialAugment (bin 0: none) | signed |
|---|---|---|
| identity | - | |
| shear_x, shear_y | shear factor 0.3 / 0.99 (x' = x - m·y, y' = y - m·x) | yes |
| translate_x, translate_y | 150/331 of the width (height) / 32 px, in whole pixels | yes |
| rotate | 30 / 135 degrees, counter-clockwise about the image centre | yes |
| brightness, color, contrast, sharpness | factor 1 ± 0.9 / 1 ± 0.99 | yes |
| posterize | 4 / 2 bits kept (8 at bin 0) | |
| solarize | threshold 0 (255 at bin 0: inverts only pixels of 255, as torchvision) | |
| autocontrast, equalize | - | |

Photometric ops change only features of kind `image`. On grayscale images (C = 1) every op is
its single-channel self except `color` (saturation), which is the identity, as in torchvision
and PIL; `contrast` blends towards the image's mean (RGB: the mean of its luma).

Geometric ops (shear, translate, rotate) are one affine map in continuous pixel coordinates of
the example's first image (see `transforms`): images are resampled nearest-neighbour with 0
outside, masks nearest-neighbour with `transforms.MASK_FILL` (255) outside, points are mapped
(points that leave the image keep their coordinates; NaN stays NaN). Boxes cannot follow a
rotation or shear exactly, so `check` refuses a policy for tasks with `boxes` features.
"""

import math

import numpy as np

from vision_jax import errors
from vision_jax.data import transforms

RANDAUGMENT = "randaugment"
TRIVIALAUGMENT = "trivialaugment"
POLICIES = ("", RANDAUGMENT, TRIVIALAUGMENT)  # "": off.
NUM_BINS = 31  # Magnitude bins 0..30 (torchvision's num_magnitude_bins).
OPS = ("identity", "shear_x", "shear_y", "translate_x", "translate_y", "rotate", "brightness",
       "color", "contrast", "sharpness", "posterize", "solarize", "autocontrast", "equalize")
GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
_SIGNED = frozenset(GEOMETRIC + ("brightness", "color", "contrast", "sharpness"))


def magnitudes(policy: str, op: str, size: tuple[int, int]) -> np.ndarray | None:
  """The `NUM_BINS` magnitudes of `op` under `policy` for images of `size` (h, w); None: the
  op has no magnitude. Unsigned: the sign is drawn separately for the ops that have one."""
  wide = policy == TRIVIALAUGMENT
  linear = lambda top: np.linspace(0.0, top, NUM_BINS)  # noqa: E731
  if op in ("shear_x", "shear_y"):
    return linear(0.99 if wide else 0.3)
  if op in ("translate_x", "translate_y"):
    side = size[1] if op == "translate_x" else size[0]
    return linear(32.0 if wide else 150.0 / 331.0 * side)
  if op == "rotate":
    return linear(135.0 if wide else 30.0)
  if op in ("brightness", "color", "contrast", "sharpness"):
    return linear(0.99 if wide else 0.9)
  if op == "posterize":
    return 8 - np.round(np.arange(NUM_BINS) / ((NUM_BINS - 1) / (6 if wide else 4))).astype(int)
  if op == "solarize":
    return np.linspace(255.0, 0.0, NUM_BINS)
  return None


def _image_keys(example: dict, kinds: transforms.FeatureKinds) -> list[str]:
  """The features of kind `image` (a feature without a kind is an error naming it)."""
  return transforms.keys_of(example, kinds, (transforms.IMAGE,))


# --- Checks, when the pipeline is built ----------------------------------------------------------


def check(policy: str, num_ops: int, magnitude: int, kinds: transforms.FeatureKinds) -> None:
  """Raises a `UserError` for a bad setting, or for a feature the policy cannot move exactly."""
  if policy not in POLICIES:
    raise errors.UserError(f"config.input.auto_augment={policy!r} is not valid; valid choices: "
                           f"{list(POLICIES)}")
  if not policy:
    return
  if num_ops < 0 or not 0 <= magnitude < NUM_BINS:
    raise errors.UserError(
        f"config.input.randaugment_num_ops={num_ops} must be >= 0 and randaugment_magnitude="
        f"{magnitude} in [0, {NUM_BINS - 1}].")
  for key, kind in kinds.items():
    if kind == transforms.BOXES:
      raise errors.UserError(
          f"config.input.auto_augment={policy!r} cannot move feature {key!r} (kind 'boxes') "
          "exactly: its rotations and shears turn axis-aligned boxes into other shapes. Set "
          "config.input.auto_augment='' for this task (masks and points do follow it).")


def check_images(example: dict, kinds: transforms.FeatureKinds) -> None:
  """Every `image` feature is uint8 with 1 or 3 channels (what the ops are defined on)."""
  for key in _image_keys(example, kinds):
    x = np.asarray(example[key])
    if x.dtype != np.uint8 or not (x.ndim == 2 or (x.ndim == 3 and x.shape[2] in (1, 3))):
      raise errors.UserError(
          f"config.input.auto_augment works on uint8 images with 1 or 3 channels; feature "
          f"{key!r} is {x.dtype} of shape {x.shape}. Set config.input.auto_augment=''.")


# --- Photometric ops on one (H, W, C) uint8 image, as torchvision.transforms.v2.functional ------


def _blend(x: np.ndarray, other, ratio: float) -> np.ndarray:
  """`x · ratio + other · (1 - ratio)`, rounded as torch does it: float32 `x · ratio`, then one
  fused multiply-add (float64 holds the float32 product exactly), truncated to uint8."""
  scaled = (x.astype(np.float32) * np.float32(ratio)).astype(np.float64)
  out = (scaled + np.float64(other) * np.float64(np.float32(1.0 - ratio))).astype(np.float32)
  return np.clip(out, 0, 255).astype(np.uint8)


def _gray(x: np.ndarray) -> np.ndarray:
  """(H, W, 1) float32 luma, floored (RGB), or the channel itself (grayscale)."""
  x = x.astype(np.float32)
  if x.shape[2] == 1:
    return x
  luma = x[..., 0] * np.float32(0.2989) + x[..., 1] * np.float32(0.587) + x[
      ..., 2] * np.float32(0.114)
  return np.floor(luma)[..., None]


def brightness(x: np.ndarray, factor: float) -> np.ndarray:
  return np.clip(x.astype(np.float32) * np.float32(factor), 0, 255).astype(np.uint8)


def color(x: np.ndarray, factor: float) -> np.ndarray:
  """Saturation; the identity on grayscale images (as torchvision and PIL)."""
  return x if x.shape[2] == 1 else _blend(x, _gray(x), factor)


def contrast(x: np.ndarray, factor: float) -> np.ndarray:
  return _blend(x, _gray(x).mean(dtype=np.float32), factor)


def sharpness(x: np.ndarray, factor: float) -> np.ndarray:
  """Blends with a 3×3 smoothing (1s around a 5, over 13); the border pixels stay."""
  h, w = x.shape[:2]
  if h <= 2 or w <= 2:
    return x
  f = x.astype(np.float32)
  ring = sum(f[dy:h - 2 + dy, dx:w - 2 + dx] for dy in range(3) for dx in range(3)
             if (dy, dx) != (1, 1))
  inner = f[1:-1, 1:-1]
  blurred = np.round(ring * np.float32(1 / 13) + inner * np.float32(5 / 13))
  f[1:-1, 1:-1] = inner + (blurred - inner) * np.float32(1.0 - factor)
  return np.clip(f, 0, 255).astype(np.uint8)


def posterize(x: np.ndarray, bits: int) -> np.ndarray:
  bits = int(bits)
  return x if bits >= 8 else x & np.uint8(((1 << bits) - 1) << (8 - bits))


def solarize(x: np.ndarray, threshold: float) -> np.ndarray:
  return np.where(x >= threshold, 255 - x, x)


def autocontrast(x: np.ndarray) -> np.ndarray:
  """Stretches each channel to [0, 255] (constant channels stay)."""
  f = x.astype(np.float32)
  low, high = f.min(axis=(0, 1)), f.max(axis=(0, 1))
  flat = high == low
  scale = np.where(flat, np.float32(1), (high - low) * np.float32(1 / 255))
  return np.clip((f - np.where(flat, 0, low)) / scale, 0, 255).astype(np.uint8)


def equalize(x: np.ndarray) -> np.ndarray:
  """Histogram equalisation per channel with PIL's lookup table."""
  out = np.empty_like(x)
  for c in range(x.shape[2]):
    channel = x[..., c]
    hist = np.bincount(channel.ravel(), minlength=256)
    cum = np.cumsum(hist)
    step = (channel.size - hist[np.argmax(cum)]) // 255  # Pixels below the top value / 255.
    if step == 0:
      out[..., c] = channel
      continue
    lut = np.concatenate([[0], np.clip((cum[:-1] + step // 2) // step, 0, 255)]).astype(np.uint8)
    out[..., c] = lut[channel]
  return out


_PHOTOMETRIC = {
    "identity": lambda x, m: x,
    "brightness": lambda x, m: brightness(x, 1.0 + m),
    "color": lambda x, m: color(x, 1.0 + m),
    "contrast": lambda x, m: contrast(x, 1.0 + m),
    "sharpness": lambda x, m: sharpness(x, 1.0 + m),
    "posterize": posterize,
    "solarize": solarize,
    "autocontrast": lambda x, m: autocontrast(x),
    "equalize": lambda x, m: equalize(x),
}


# --- Geometric ops: one affine map for every feature ---------------------------------------------


def affine_matrix(op: str, magnitude: float, size: tuple[int, int]) -> np.ndarray:
  """(2, 3) forward map (y, x) → (y', x') of a geometric op, in continuous pixel coordinates of
  an image of `size` (h, w), with torchvision's conventions (`F.affine`, `F.rotate`)."""
  if op == "shear_x":  # About the top-left corner.
    return np.array([[1.0, 0.0, 0.0], [-magnitude, 1.0, 0.0]])
  if op == "shear_y":
    return np.array([[1.0, -magnitude, 0.0], [0.0, 1.0, 0.0]])
  if op == "translate_x":
    return np.array([[1.0, 0.0, 0.0], [0.0, 1.0, float(int(magnitude))]])
  if op == "translate_y":
    return np.array([[1.0, 0.0, float(int(magnitude))], [0.0, 1.0, 0.0]])
  if op == "rotate":  # Counter-clockwise as seen (y down), about the image centre.
    cy, cx = size[0] / 2, size[1] / 2
    c, s = math.cos(math.radians(magnitude)), math.sin(math.radians(magnitude))
    return np.array([[c, -s, cy - c * cy + s * cx], [s, c, cx - s * cy - c * cx]])
  raise ValueError(f"Not a geometric op: {op!r}")


def _warp(x: np.ndarray, forward: np.ndarray, fill) -> np.ndarray:
  """`x` (H, W[, C]) through `forward` (2, 3), nearest neighbour: each output pixel takes the
  source pixel that holds the preimage of its centre (as PIL's NEAREST); `fill` outside."""
  h, w = x.shape[:2]
  inverse = np.linalg.inv(np.vstack([forward, [0.0, 0.0, 1.0]]))[:2]
  y, xx = np.mgrid[0:h, 0:w] + 0.5
  sy = np.floor(inverse[0, 0] * y + inverse[0, 1] * xx + inverse[0, 2]).astype(np.int64)
  sx = np.floor(inverse[1, 0] * y + inverse[1, 1] * xx + inverse[1, 2]).astype(np.int64)
  inside = (sy >= 0) & (sy < h) & (sx >= 0) & (sx < w)
  out = x[np.clip(sy, 0, h - 1), np.clip(sx, 0, w - 1)]
  out[~inside] = fill
  return out


def _move(example: dict, kinds: transforms.FeatureKinds, forward: np.ndarray) -> dict:
  """Every raster and point of `example` through `forward` (in pixels of its first image)."""
  h, w = transforms.reference_size(example, kinds)
  out = dict(example)
  for key, kind in kinds.items():
    if key not in example:
      continue
    x = np.asarray(example[key])
    if kind in (transforms.IMAGE, transforms.MASK):
      # The same map in this raster's own pixels (S · forward · S⁻¹ for its scale S).
      scale = np.array([x.shape[0] / h, x.shape[1] / w])
      own = np.column_stack([forward[:, :2] * scale[:, None] / scale[None, :],
                             forward[:, 2] * scale])
      out[key] = _warp(x, own, transforms.fill_value(kind))
    elif kind == transforms.POINTS:
      moved = x.astype(np.float64) @ forward[:, :2].T + forward[:, 2]
      out[key] = moved.astype(transforms.coordinate_dtype(x))
    elif kind == transforms.BOXES:
      raise errors.UserError(f"Feature {key!r} (kind 'boxes') cannot follow a rotation or "
                             "shear exactly; set config.input.auto_augment=''.")
  return out


def apply_op(example: dict, op: str, magnitude: float,
             kinds: transforms.FeatureKinds = transforms.DEFAULT_KINDS) -> dict:
  """`example` through one op at a signed `magnitude` (as `magnitudes` gives, times ±1)."""
  if op in GEOMETRIC:
    size = transforms.reference_size(example, kinds)
    return _move(example, kinds, affine_matrix(op, magnitude, size))
  fn = _PHOTOMETRIC[op]
  out = dict(example)
  for key in _image_keys(example, kinds):
    x = np.asarray(example[key])
    y = fn(x[..., None] if x.ndim == 2 else x, magnitude)
    out[key] = y[..., 0] if x.ndim == 2 else y
  return out


def _draw(rng: np.random.Generator, policy: str, op: str, size: tuple[int, int],
          magnitude: int | None) -> float:
  """A signed magnitude for `op`: bin `magnitude`, or a random bin when None (TrivialAugment)."""
  values = magnitudes(policy, op, size)
  if values is None:
    return 0.0
  value = float(values[magnitude if magnitude is not None else rng.integers(NUM_BINS)])
  return -value if op in _SIGNED and rng.integers(2) else value


def augment(example: dict, rng: np.random.Generator, policy: str, num_ops: int = 2,
            magnitude: int = 9, kinds: transforms.FeatureKinds = transforms.DEFAULT_KINDS) -> dict:
  """RandAugment (`num_ops` ops at bin `magnitude`) or TrivialAugment (one op, random bin) of
  one example, drawn from `rng` (grain's per-record generator)."""
  size = transforms.reference_size(example, kinds)
  wide = policy == TRIVIALAUGMENT
  for _ in range(1 if wide else num_ops):
    op = OPS[rng.integers(len(OPS))]
    example = apply_op(example, op, _draw(rng, policy, op, size, None if wide else magnitude),
                       kinds)
  return example
