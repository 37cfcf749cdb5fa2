"""FCN (Long, Shelhamer & Darrell 2015, "Fully Convolutional Networks for Semantic Segmentation").

A classification backbone's convolutional stages, read at strides 32, 16 and 8, are scored per
pixel by 1x1 convolutions; the coarse scores are upsampled (transposed convolutions that start as
bilinear interpolation) and added to the finer scores ("skips"):

- FCN-32s: score the stride-32 stage, upsample x32.
- FCN-16s: score32 upsampled x2 + score16 (from the stride-16 stage), upsample x16.
- FCN-8s:  (that sum) upsampled x2 + score8 (from the stride-8 stage), upsample x8.
- FCN-4s (not in the paper; for small images): one more skip, from the stride-4 stage.

As in the paper, the score layers start at zero, the x2 upsamplings start bilinear and are
learnt, and the last upsampling (to the input's resolution) is fixed bilinear (optionally
learnt). Optionally the classifier's fc6/fc7 come back as convolutions on the stride-32 map
(`head_width`: 4096 with a 7x7 kernel in the paper, for VGG-16). Any backbone that names its
stages `stage<k>` works (VGG, ResNet with the ImageNet stem, GoogLeNet, or a module of one's own;
see `vision_jax.models.backbone`); the stages are picked by their stride. The backbone is built
without its classifier (`num_classes=None`), so VGG's dense layers have no parameters.
`FCNHead` is the head alone, on any feature maps; `FCN` is a backbone plus `FCNHead`.

Sizes: the paper pads the input by 100 px and crops the upsampled maps at computed offsets;
here convolutions keep their "same" padding, the transposed convolutions output exactly
`factor` times their input (PyTorch's padding), and a map that still differs by a pixel or two
from the one it is added to (inputs not divisible by 32) is cropped or edge-padded at the
bottom/right. The logits always come out at the input's resolution.
"""

from collections.abc import Mapping, Sequence
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vision_jax.models import backbone as backbone_lib
from vision_jax.models import precision

# Variant → the strides whose stages it scores, coarsest first. "4s" (one skip further than the
# paper) is for small images, where a stride-8 map has too few cells for thin parts.
STRIDES = {"32s": (32,), "16s": (32, 16), "8s": (32, 16, 8), "4s": (32, 16, 8, 4)}
VARIANTS = tuple(STRIDES)  # The valid `variant`s (`segmentation.variant`).


def _bilinear_profile(factor: int) -> np.ndarray:
  """The 1-D bilinear weights of `bilinear_kernel` (which is their outer product)."""
  size = 2 * factor - factor % 2
  center = factor - 1 if size % 2 == 1 else factor - 0.5
  return 1 - np.abs(np.arange(size) - center) / factor


def bilinear_kernel(factor: int, channels: int) -> np.ndarray:
  """The transposed-convolution kernel of bilinear upsampling by `factor` (the paper's init).

  Each output channel interpolates only its own input channel. Size `2 * factor - factor % 2`,
  centred at `factor - 0.5` (even size) or `factor - 1` (odd size), as in the FCN code
  (`surgery.upsample_filt`): for factor 2 the 1-D profile is (0.25, 0.75, 0.75, 0.25).

  Returns:
    (k, k, channels, channels) float32, zero off the channel diagonal.
  """
  profile = _bilinear_profile(factor)  # (k,)
  size = len(profile)
  kernel = np.zeros((size, size, channels, channels), np.float32)
  kernel[:, :, np.arange(channels), np.arange(channels)] = np.outer(profile, profile)[..., None]
  return kernel


class Upsample(nn.Module):
  """Learnt upsampling by an integer factor: a transposed convolution initialised to bilinear.

  The output is exactly `factor` times the input in height and width (PyTorch's
  `ConvTranspose2d(kernel_size=k, stride=factor, padding=(k - factor) // 2)`).

  Attributes:
    features: Channels in and out (the bilinear init maps each channel to itself).
    factor: Upsampling factor (the stride).
    dtype: Computation dtype.
    param_dtype: Parameter dtype.
  """

  features: int
  factor: int
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """(B, H, W, features) → (B, factor * H, factor * W, features)."""
    f = self.factor
    size = 2 * f - f % 2
    # lax pads the stride-dilated input; k - 1 - p on each side gives PyTorch's padding p.
    pad = size - 1 - (size - f) // 2
    init = lambda key, shape, dtype: jnp.asarray(bilinear_kernel(f, shape[-1]), dtype)  # noqa: E731
    return nn.ConvTranspose(
        self.features, (size, size), strides=(f, f), padding=((pad, pad), (pad, pad)),
        use_bias=False, kernel_init=init, dtype=self.dtype, param_dtype=self.param_dtype,
        name="deconv")(x)


def bilinear_matrix(factor: int, size: int) -> np.ndarray:
  """Bilinear upsampling of one axis of length `size` as a matrix: (factor * size, size).

  Row o holds the weights that `Upsample` at its initialisation (the transposed convolution
  with `bilinear_kernel`, padding p) gives the inputs: out[o] = sum_i w[o + p - factor * i] in[i],
  w the 1-D profile. Rows are then normalised to sum to one: in the interior they already do;
  at the border the transposed convolution's zero padding would fade the output towards zero,
  and normalising replaces that by holding the edge value.
  """
  profile = _bilinear_profile(factor)
  k = len(profile)
  taps = np.arange(factor * size)[:, None] + (k - factor) // 2 - factor * np.arange(size)
  weights = np.where((taps >= 0) & (taps < k), profile[np.clip(taps, 0, k - 1)], 0.0)
  return (weights / weights.sum(1, keepdims=True)).astype(np.float32)


def bilinear_upsample(x: jax.Array, factor: int) -> jax.Array:
  """Fixed bilinear upsampling of (B, H, W, C) by `factor` (the paper's final upsampling).

  Two small matmuls with `bilinear_matrix`, instead of a transposed convolution with a
  2 * factor kernel over every pair of channels (costly at factor 32 on a CPU).
  """
  rows = jnp.asarray(bilinear_matrix(factor, x.shape[1]), x.dtype)  # (f H, H)
  cols = jnp.asarray(bilinear_matrix(factor, x.shape[2]), x.dtype)  # (f W, W)
  return jnp.einsum("oh,bhwc,pw->bopc", rows, x, cols)


def _maps_by_stride(maps: Mapping[Any, jax.Array] | Sequence[jax.Array], height: int,
                    strides: tuple[int, ...]) -> list[jax.Array]:
  """The maps at `strides` (coarsest first) from what `FCNHead` takes (see its `__call__`)."""
  if isinstance(maps, Mapping):
    if all(isinstance(k, str) for k in maps):  # A backbone's features: pick stages by stride.
      return [maps[name] for name in backbone_lib.stages_by_stride(maps, height, strides)]
    missing = [s for s in strides if s not in maps]
    if missing:
      raise ValueError(f"FCNHead needs maps at strides {strides}; got strides {sorted(maps)}.")
    return [maps[s] for s in strides]
  if len(maps) != len(strides):
    raise ValueError(f"FCNHead needs {len(strides)} maps (strides {strides}, coarsest first); "
                     f"got {len(maps)}.")
  return list(maps)


class FCNHead(nn.Module):
  """FCN's head on any feature maps: score layers, learnt x2 upsamplings, skips, final upsample.

  Attributes:
    num_classes: Classes scored at each pixel.
    variant: "32s", "16s", "8s" (the paper's) or "4s": the strides it reads (`STRIDES`).
    head_width: Width of fc6/fc7 recast as convolutions on the stride-32 map before scoring
      (4096 in the paper); 0 scores the map directly.
    head_kernel: Kernel size of fc6 (7 in the paper: VGG's 7x7 pooled map).
    learn_final_upsample: Learn the last upsampling (to the output size) too. The paper fixes it
      to bilinear (Sec. 4.3) and learns only the x2 ones; so does the default, which then costs
      two small matmuls instead of a large transposed convolution.
    dropout_rate: Dropout after fc6 and fc7 in training (0.5 in the paper).
    dtype: Computation dtype; the logits are float32 (float64 in float64 mode).
    param_dtype: Parameter dtype.
  """

  num_classes: int
  variant: str = "8s"
  head_width: int = 0
  head_kernel: int = 7
  learn_final_upsample: bool = False
  dropout_rate: float = 0.5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, maps: Mapping[Any, jax.Array] | Sequence[jax.Array], size: tuple[int, int],
               train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Scores every pixel of an output of `size`.

    Args:
      maps: (B, H / s, W / s, C_s) maps at the variant's strides s: a dict stride -> map, a
        backbone's features dict (its `stage<k>` maps, picked by stride as FCN does), or a
        sequence coarsest first (stride 32 first).
      size: (H, W) of the output (the input image's size).
      train: Dropout after fc6/fc7 in training mode.

    Returns:
      `(logits, score)`: float32 logits (B, H, W, num_classes), and the summed scores at the
      finest stride s, (B, H / s, W / s, num_classes).
    """
    if self.variant not in STRIDES:
      raise ValueError(f"Unknown FCN variant {self.variant!r}; valid choices: {list(VARIANTS)}")
    height, width = size
    strides = STRIDES[self.variant]
    maps = _maps_by_stride(maps, height, strides)
    conv = lambda n, k, name, **kw: nn.Conv(  # noqa: E731
        n, (k, k), dtype=self.dtype, param_dtype=self.param_dtype, name=name, **kw)
    # The paper zero-initialises the score layers.
    score = lambda name: conv(  # noqa: E731
        self.num_classes, 1, name, kernel_init=nn.initializers.zeros)

    y = maps[0]  # (B, H / 32, W / 32, C)
    if self.head_width:
      for name, k in (("fc6", self.head_kernel), ("fc7", 1)):
        y = nn.relu(conv(self.head_width, k, name)(y))
        y = nn.Dropout(self.dropout_rate, deterministic=not train)(y)
    y = score(f"score{strides[0]}")(y)  # (B, H / 32, W / 32, K)
    for coarse, stride, skip in zip(strides, strides[1:], maps[1:]):
      skip = score(f"score{stride}")(skip)  # (B, H / stride, W / stride, K)
      up = Upsample(self.num_classes, coarse // stride, dtype=self.dtype,
                    param_dtype=self.param_dtype, name=f"up{coarse}")(y)
      y = backbone_lib.fit(up, *skip.shape[1:3]) + skip
    if self.learn_final_upsample:
      logits = Upsample(self.num_classes, strides[-1], dtype=self.dtype,
                        param_dtype=self.param_dtype, name=f"up{strides[-1]}_to_1")(y)
    else:
      logits = bilinear_upsample(y, strides[-1])
    logits = backbone_lib.fit(logits, height, width)  # (B, H, W, K)
    return logits.astype(precision.output_dtype(self.dtype)), y


class FCN(nn.Module):
  """Fully convolutional network: a headless backbone, then `FCNHead` on its stages.

  The head shares the FCN's scope, so its layers (`score32`, `up32`, `fc6`, ...) sit next to
  `backbone` in the parameters, as they did before the head was a module of its own.
  `variant`, `head_width`, `head_kernel`, `learn_final_upsample` and `dropout_rate` are
  `config.segmentation` fields, with their defaults from here
  (`vision_jax.tasks.segmentation.task.default_config`).

  Attributes:
    num_classes: Classes scored at each pixel.
    backbone: A registry name, a Module or a constructor (`backbone.build`) whose features
      include `stage<k>` maps at the variant's strides (32, 16, 8; 4 for "4s").
    variant: "32s", "16s", "8s" (the paper's: skips from the stride-16 and stride-8 stages) or
      "4s" (one more, from the stride-4 stage: small images).
    backbone_kwargs: Other fields of the backbone (e.g. `widths` of a small VGG).
    head_width: See `FCNHead`.
    head_kernel: See `FCNHead`.
    learn_final_upsample: See `FCNHead`.
    dropout_rate: See `FCNHead`.
    bn_axis_name: Passed to the backbone's BatchNorm (pmap); None leaves the backbone's default.
    dtype: Computation dtype; the logits are float32 (float64 in float64 mode).
    param_dtype: Parameter dtype.
  """

  num_classes: int
  backbone: backbone_lib.Backbone
  variant: str = "8s"
  backbone_kwargs: flax.core.FrozenDict = flax.core.FrozenDict()
  head_width: int = 0
  head_kernel: int = 7
  learn_final_upsample: bool = False
  dropout_rate: float = 0.5
  bn_axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Scores every pixel.

    Args:
      x: Images, (B, H, W, C).
      train: Backbone BatchNorm statistics and dropout in training mode.

    Returns:
      `(logits, features)`: float32 logits (B, H, W, num_classes) and the backbone's features
      plus `score` (B, H / s, W / s, num_classes), the summed scores at the finest stride `s`.
    """
    kwargs = dict(self.backbone_kwargs)
    if self.bn_axis_name is not None:
      kwargs["bn_axis_name"] = self.bn_axis_name
    backbone = backbone_lib.build(self.backbone, dtype=self.dtype, param_dtype=self.param_dtype,
                                  **kwargs)
    _, features = backbone(x, train=train)
    head = FCNHead(num_classes=self.num_classes, variant=self.variant,
                   head_width=self.head_width, head_kernel=self.head_kernel,
                   learn_final_upsample=self.learn_final_upsample,
                   dropout_rate=self.dropout_rate, dtype=self.dtype,
                   param_dtype=self.param_dtype, name="head")
    nn.share_scope(self, head)  # Its parameters sit next to `backbone`, not under `head/`.
    logits, score = head(features, x.shape[1:3], train=train)
    return logits, {**features, "score": score}
