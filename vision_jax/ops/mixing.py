"""mixup and CutMix inside the compiled train step, on the global batch (timm's `Mixup`, batch
mode).

Every example is mixed with its partner in the *global* batch reversed (timm's pairing): row i
with row B - 1 - i. One λ per batch, and for CutMix one box, drawn from a key that the train
step derives from the run's key and the step only (never from iterator state), so a batch is
mixed the same way on any topology and after a resume:
- under `jit` the step sees the global batch, and `x[::-1]` is the global reversal whatever the
  sharding (XLA moves the rows);
- under `pmap` device d holds rows [d b, (d + 1) b) of n devices; their partners are device
  n - 1 - d's rows reversed, fetched with one `ppermute`, so pmap gives jit's numbers.
Mixing happens before gradient accumulation splits the batch, so micro-batches see the whole
batch's pairs.

mixup (Zhang et al. 2018): x = λ x_i + (1 - λ) x_j, λ ~ Beta(α, α). CutMix (Yun et al. 2019):
a box of area fraction about 1 - λ is pasted from x_j; the box is clipped at the border and λ is
recomputed from the pixels actually kept, so the targets weigh each image by its visible area.
"""

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class MixOptions:
  """`config.train` mixing fields (0 α turns that method off).

  Attributes:
    mixup_alpha: α of mixup's Beta(α, α) (timm/DeiT: 0.8); 0: no mixup.
    cutmix_alpha: α of CutMix's Beta(α, α) (timm/DeiT: 1.0); 0: no CutMix.
    prob: probability that a batch is mixed at all.
    switch_prob: with both on, probability that a mixed batch uses CutMix rather than mixup.
  """
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  prob: float = 1.0
  switch_prob: float = 0.5

  @property
  def enabled(self) -> bool:
    return (self.mixup_alpha > 0 or self.cutmix_alpha > 0) and self.prob > 0


def partner(x: jax.Array, axis_name: str | None = None) -> jax.Array:
  """Each row's partner in the global batch reversed: row i ↔ row B - 1 - i.

  Args:
    x: (B, ...) the global batch under `jit` (axis_name None), or one device's share of it
      under `pmap` (shares in device order, as `parallel.pmap_batch` lays them out).
    axis_name: pmap's device axis, or None under `jit`.
  """
  if axis_name is None:
    return x[::-1]
  n = jax.lax.axis_size(axis_name)
  return jax.lax.ppermute(x, axis_name, perm=[(d, n - 1 - d) for d in range(n)])[::-1]


def cutmix_box(key: jax.Array, lam: jax.Array, height: int,
               width: int) -> tuple[jax.Array, jax.Array]:
  """timm's `rand_bbox`: a box of sides about sqrt(1 - λ) H and W, centred uniformly, clipped.

  Returns:
    `(inside, lam)`: inside (H, W) bool, True where the partner's pixels are pasted; lam the
    fraction of pixels the image keeps, 1 - box area / (H W) after clipping.
  """
  ratio = jnp.sqrt(1.0 - lam)
  half_h = jnp.floor(height * ratio).astype(jnp.int32) // 2
  half_w = jnp.floor(width * ratio).astype(jnp.int32) // 2
  key_y, key_x = jax.random.split(key)
  cy = jax.random.randint(key_y, (), 0, height)
  cx = jax.random.randint(key_x, (), 0, width)
  y0, y1 = jnp.clip(cy - half_h, 0, height), jnp.clip(cy + half_h, 0, height)
  x0, x1 = jnp.clip(cx - half_w, 0, width), jnp.clip(cx + half_w, 0, width)
  rows, cols = jnp.arange(height)[:, None], jnp.arange(width)[None, :]
  inside = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  area = ((y1 - y0) * (x1 - x0)).astype(jnp.float32)
  return inside, 1.0 - area / (height * width)


def draw(key: jax.Array, options: MixOptions, height: int,
         width: int) -> tuple[jax.Array, jax.Array, jax.Array]:
  """One batch's mix: `(lam, use_cutmix, inside)`.

  lam () float32 is the weight of each image's own label (1 when the batch is not mixed);
  use_cutmix () bool; inside (H, W) bool, CutMix's box (unused by mixup).
  """
  k_apply, k_switch, k_mixup, k_cutmix, k_box = jax.random.split(key, 5)
  one = jnp.ones((), jnp.float32)
  apply = jax.random.uniform(k_apply, ()) < options.prob
  if options.mixup_alpha > 0 and options.cutmix_alpha > 0:
    use_cutmix = jax.random.uniform(k_switch, ()) < options.switch_prob
  else:
    use_cutmix = jnp.asarray(options.cutmix_alpha > 0)
  lam_mixup = (jax.random.beta(k_mixup, options.mixup_alpha, options.mixup_alpha,
                               dtype=jnp.float32) if options.mixup_alpha > 0 else one)
  lam_cutmix = (jax.random.beta(k_cutmix, options.cutmix_alpha, options.cutmix_alpha,
                                dtype=jnp.float32) if options.cutmix_alpha > 0 else one)
  inside, lam_cutmix = cutmix_box(k_box, lam_cutmix, height, width)
  lam = jnp.where(apply, jnp.where(use_cutmix, lam_cutmix, lam_mixup), one)
  return lam, apply & use_cutmix, inside


def mix_images(images: jax.Array, key: jax.Array, options: MixOptions,
               axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
  """Mixes (B, H, W, C) images with their partners; returns them and the batch's λ ()."""
  lam, use_cutmix, inside = draw(key, options, images.shape[1], images.shape[2])
  others = partner(images, axis_name)
  blended = lam.astype(images.dtype) * images + (1 - lam).astype(images.dtype) * others
  pasted = jnp.where(inside[None, :, :, None], others, images)
  # lam == 1 (not mixed) keeps the images bit for bit.
  mixed = jnp.where(use_cutmix, pasted, jnp.where(lam < 1, blended, images))
  return mixed, lam


def mix_targets(one_hot: jax.Array, other: jax.Array, lam: jax.Array) -> jax.Array:
  """λ one_hot + (1 - λ) other; lam broadcasts against (B, K) targets, e.g. (B, 1)."""
  return lam * one_hot + (1 - lam) * other
