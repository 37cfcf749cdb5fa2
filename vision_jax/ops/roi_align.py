"""RoIAlign (He et al. 2017, "Mask R-CNN"): fixed-size features of boxes by bilinear sampling.

Each box is divided into `output_size` bins; each bin averages `sampling_ratio`² bilinearly
interpolated samples on a regular grid inside it (Detectron2's `ROIAlign`, `aligned=True`: a
box coordinate x in image pixels is x * spatial_scale - 0.5 in feature-map pixels, whose
centres sit at integers). Samples beyond half a pixel outside the map are 0, samples just
outside it take the border value, as in Detectron2.

Bilinear weights factor into a row part and a column part, and the sample grid is a product of
rows and columns, so every bin's average is `Wy @ F @ Wx^T` with small (bins, H) and (bins, W)
interpolation matrices per box: two matmuls instead of a gather of 4 neighbours per sample,
which is faster on CPUs and GPUs and has a matmul for a gradient. Static shapes: a fixed number
of boxes per image.
"""

import jax
import jax.numpy as jnp


def _axis_weights(start: jax.Array, size: jax.Array, bins: int, sampling_ratio: int,
                  length: int) -> jax.Array:
  """Interpolation matrix of one axis: each bin's mean bilinear weight on each map pixel.

  Args:
    start: (...,) box start on this axis, in feature-map pixels (centres at integers).
    size: (...,) box extent in feature-map pixels.
    bins: output bins along the axis.
    sampling_ratio: samples per bin along the axis.
    length: the map's length along the axis.

  Returns:
    (..., bins, length) float32 weights.
  """
  bin_size = size / bins  # (...,)
  # Sample positions: start + (bin + (s + 0.5) / ratio) * bin_size.
  offsets = (jnp.arange(bins)[:, None] + (jnp.arange(sampling_ratio)[None, :] + 0.5)
             / sampling_ratio)  # (bins, ratio)
  pos = start[..., None, None] + offsets * bin_size[..., None, None]  # (..., bins, ratio)
  inside = (pos >= -1.0) & (pos <= length)  # Detectron2: farther out samples are 0.
  pos = jnp.clip(pos, 0.0, length - 1.0)
  grid = jnp.arange(length, dtype=pos.dtype)  # (length,)
  weights = jnp.maximum(0.0, 1.0 - jnp.abs(pos[..., None] - grid))  # (..., bins, ratio, length)
  weights = weights * inside[..., None]
  return weights.mean(axis=-2)  # (..., bins, length)


def roi_align(features: jax.Array, boxes: jax.Array, output_size: int | tuple[int, int],
              spatial_scale: float, sampling_ratio: int = 2, aligned: bool = True) -> jax.Array:
  """Pools a fixed-size feature map for every box.

  Args:
    features: (B, H, W, C) feature maps.
    boxes: (B, R, 4) boxes (ymin, xmin, ymax, xmax) in input-image pixels, R per image.
    output_size: bins per side, an int or (rows, columns) (7 in Faster R-CNN's box head).
    spatial_scale: feature-map pixels per image pixel (1 / the map's stride).
    sampling_ratio: samples per bin along each axis (static; Detectron2's adaptive 0 is not
      supported, as it would make shapes depend on the data).
    aligned: subtract half a pixel (Detectron2's `aligned=True`; False is the original
      Mask R-CNN's misaligned version, which also forces boxes to be at least 1 pixel).

  Returns:
    (B, R, rows, columns, C) pooled features, in the features' dtype.

  Raises:
    ValueError: for a sampling ratio < 1.
  """
  if sampling_ratio < 1:
    raise ValueError(f"sampling_ratio={sampling_ratio} must be >= 1 (static sampling grid).")
  rows, cols = (output_size, output_size) if isinstance(output_size, int) else output_size
  _, height, width, _ = features.shape
  offset = 0.5 if aligned else 0.0
  scaled = boxes.astype(jnp.promote_types(boxes.dtype, jnp.float32)) * spatial_scale - offset
  y0, x0, y1, x1 = (scaled[..., i] for i in range(4))
  h, w = y1 - y0, x1 - x0
  if not aligned:
    h, w = jnp.maximum(h, 1.0), jnp.maximum(w, 1.0)
  wy = _axis_weights(y0, h, rows, sampling_ratio, height).astype(features.dtype)  # (B, R, r, H)
  wx = _axis_weights(x0, w, cols, sampling_ratio, width).astype(features.dtype)  # (B, R, c, W)
  per_row = jnp.einsum("brph,bhwc->brpwc", wy, features)  # (B, R, rows, W, C)
  return jnp.einsum("brpwc,brqw->brpqc", per_row, wx)  # (B, R, rows, cols, C)
