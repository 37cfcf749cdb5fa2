"""Random erasing (Zhong et al. 2020), as timm's `RandomErasing(mode="pixel")`.

With probability `probability` an example gets one rectangle of area uniform in `AREA` of the
image and aspect ratio (height / width) log-uniform in `ASPECT`, placed uniformly; after
`ATTEMPTS` rectangles that do not fit inside, it is left alone (timm and torchvision). The
rectangle is filled with per-pixel standard normal noise *after* normalisation, i.e. noise of the
dataset's own mean and std (timm's 'pixel' mode; torchvision's default fills zeros).

The rectangle and a noise seed are drawn per example from grain's per-record generator
(`sample`), tied to the record's position in the stream, and applied per batch after
normalisation (`apply`), so resumed and multi-process runs erase the same pixels. Only the
`image` feature is erased; targets are not changed, which is what classification wants (timm)
and what masks, boxes and points would not: `check` refuses those kinds.
"""

import numpy as np

from vision_jax import errors
from vision_jax.data import transforms

AREA = (0.02, 1 / 3)  # Of the image (timm, torchvision).
ASPECT = (0.3, 1 / 0.3)  # Height / width.
ATTEMPTS = 10
# The drawn parameters ride along the batch until `apply` (as "other" features: not moved).
KINDS = {"erase_box": transforms.OTHER, "erase_seed": transforms.OTHER}


def check(probability: float, kinds: transforms.FeatureKinds) -> None:
  """Raises a `UserError` for a probability outside [0, 1], or (when on) for a feature whose
  targets describe pixels (mask, boxes, points): erasing would leave them describing noise."""
  if not 0 <= probability <= 1:
    raise errors.UserError(f"config.input.random_erasing={probability} is out of range: it "
                           "must be in [0, 1], e.g. 0.25 (0: off).")
  if not probability:
    return
  for key, kind in kinds.items():
    if kind in (transforms.MASK, transforms.BOXES, transforms.POINTS):
      raise errors.UserError(
          f"config.input.random_erasing={probability} would erase image pixels that feature "
          f"{key!r} (kind {kind!r}) still describes; it is for classification-like tasks "
          "(image and 'other' features). Set config.input.random_erasing=0 for this task.")


def sample(example: dict, rng: np.random.Generator, probability: float,
           kinds: transforms.FeatureKinds = transforms.DEFAULT_KINDS) -> dict:
  """Draws one example's rectangle: adds `erase_box` (4,) int64 (top, left, height, width; all
  0: not erased) and `erase_seed` (uint64) of its noise."""
  h, w = transforms.reference_size(example, kinds)
  box = np.zeros(4, np.int64)
  seed = np.uint64(0)
  if rng.random() < probability:
    for _ in range(ATTEMPTS):
      area = h * w * rng.uniform(*AREA)
      aspect = np.exp(rng.uniform(np.log(ASPECT[0]), np.log(ASPECT[1])))
      eh, ew = round(np.sqrt(area * aspect)), round(np.sqrt(area / aspect))
      if eh < h and ew < w:
        box[:] = rng.integers(0, h - eh + 1), rng.integers(0, w - ew + 1), eh, ew
        seed = rng.integers(2**63, dtype=np.uint64)
        break
  return {**example, "erase_box": box, "erase_seed": seed}


def apply(batch: dict) -> dict:
  """Fills each example's `erase_box` of the normalised `image` (B, H, W[, C]) with standard
  normal noise from its `erase_seed`, and drops both."""
  out = dict(batch)
  boxes, seeds = out.pop("erase_box"), out.pop("erase_seed")
  erased = np.flatnonzero(boxes[:, 2] * boxes[:, 3])
  if len(erased):
    image = out["image"].copy()
    for i in erased:
      top, left, eh, ew = boxes[i]
      noise = np.random.default_rng(int(seeds[i])).standard_normal(
          (eh, ew) + image.shape[3:], np.float32)
      image[i, top:top + eh, left:left + ew] = noise.astype(image.dtype)
    out["image"] = image
  return out
