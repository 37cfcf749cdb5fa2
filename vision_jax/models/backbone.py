"""The backbone contract: what a head reads of a classification model, and `build`, how it gets one.

A backbone is a linen Module with the fields

- `num_classes: int | None`: the classifier's logits; None builds no classifier (no parameters,
  no classifier dropout), as big_vision's `if self.num_classes:`.
- `dtype`, `param_dtype`: computation and parameter dtypes.
- `bn_axis_name: str | None` (optional, models with BatchNorm): the device axis over which
  BatchNorm averages batch statistics (pmap / shard_map); heads pass theirs on, and the trainer
  sets it under pmap.

It is called as `logits, features = model.apply(variables, images, train=...)` on (B, H, W, C)
images. `logits` are float32 (B, num_classes), or None without a classifier; `features` is a
dict of named activations:

- `stage<k>`: (B, H / s, W / s, C_k) maps, k growing with depth. Heads find a stage's stride s
  from its size (s = H / its height, rounded to a power of two: `stages_by_stride`) and take
  the deepest stage at each stride they need, so k need not be log2(s): ResNet's `stage4` and
  VGG's `stage5` are both stride 32. FCN and Faster R-CNN read these.
- `pre_logits`: (B, D), the vector the classifier reads (flattened where it reads a map), taken
  before the classifier's dropout, so the same with and without a classifier. R-CNN and the
  captioner (Show and Tell) read it.
- Anything else the model names (`pooled`, `conv2`, `hidden`, `fc7`, GoogLeNet's `aux1` ...).

BatchNorm statistics live in the `'batch_stats'` collection; dropout draws from the `'dropout'`
rng in training.

The classifier of each zoo family, i.e. what `num_classes=None` leaves out, and `pre_logits`:

| family | classifier | `pre_logits` |
|---|---|---|
| MLP | the final Dense `head` | the last hidden layer (B, hidden_sizes[-1]) |
| SimpleCNN | dropout and `head` | `hidden` (B, hidden) |
| ResNet, Wide ResNet | `head` | `pooled`, the global average (B, C) |
| GoogLeNet | dropout and `head`, and the auxiliary classifiers `aux1`, `aux2` | `pooled` (B, 1024) |
| AlexNet, ZFNet, VGG | fc6, fc7, `head` and their dropout (torchvision's `classifier`) | `pooled` flattened (B, 36 C) / (B, 49 C) |
| the same with `fc_in_trunk=True` | `head` (VGG: and the dropout before it) | `fc7` (B, hidden) |

Zoo models with `stage<k>` maps: ResNet, Wide ResNet, VGG, GoogLeNet. MLP, SimpleCNN (`conv<k>`)
and AlexNet/ZFNet (`conv<k>`) have none, so they serve R-CNN and the captioner but not FCN or
Faster R-CNN.
"""

from collections.abc import Callable, Mapping
import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

# What heads accept as their `backbone`: a registry name, a module, or a module constructor.
Backbone = str | nn.Module | Callable[..., nn.Module]


def describe(backbone: Backbone) -> str:
  """A short name of `backbone` for messages: the registry name, or the class's name."""
  if isinstance(backbone, str):
    return repr(backbone)
  if isinstance(backbone, nn.Module):
    return type(backbone).__name__
  return getattr(getattr(backbone, "func", backbone), "__name__", repr(backbone))


def _same(field: str, a: Any, b: Any) -> bool:
  """Whether a module's `field` value `a` is the `b` a head asks for (dtypes by their name)."""
  if field in ("dtype", "param_dtype") and a is not None and b is not None:
    return jnp.dtype(a) == jnp.dtype(b)
  return a == b


def _renamed(module: nn.Module, name: str | None) -> nn.Module:
  """A copy of `module` (same fields) named `name`, bound to the module being defined now."""
  fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
            if f.init and f.name not in ("parent", "name")}
  return type(module)(**fields, name=name)


def build(backbone: Backbone, *, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
          name: str | None = "backbone", **fields: Any) -> nn.Module:
  """The headless backbone (no classifier) a head calls, as its submodule `name`.

  Call it where submodules are defined: in the head's `@nn.compact` method or its `setup`
  (there, assign the result to an attribute, which names it; pass `name=None`).

  Args:
    backbone: One of
      - a registry name: `models.get_model(backbone, num_classes=None, dtype=dtype,
        param_dtype=param_dtype, **fields)`;
      - a constructor (a Module class, or a `functools.partial` of one), called as
        `backbone(num_classes=None, dtype=dtype, param_dtype=param_dtype, name=name, **fields)`;
      - a Module instance, used as it is. It must already be headless and agree with what the
        head asks: `num_classes` None and `dtype`, `param_dtype` equal where it has those
        attributes, and `fields` equal. A head that holds it as a field has it bound under that
        field's name; it is then used itself when `name` is that name, else copied under
        `name`.
    dtype: Computation dtype.
    param_dtype: Parameter dtype.
    name: The submodule's name: its parameters live under it (e.g. `params/backbone/...`).
    **fields: Other fields of the backbone, e.g. `widths` or `bn_axis_name`.

  Returns:
    The module; `module(images, train=...)` returns `(None, features)`.

  Raises:
    errors.UserError: for an unknown registry name or a field the registry model lacks.
    ValueError: for a Module instance that has a classifier, lacks one of `fields` or disagrees
      with the head (the message says what to construct instead), or a constructor that
      returns no Module.
  """
  if isinstance(backbone, str):
    from vision_jax import models  # pylint: disable=g-import-not-at-top  # models imports us.
    # get_model checks the name and fields. Its module, made here, is bound under an automatic
    # name and never called (no parameters); the copy named `name` is the one used.
    module = models.get_model(backbone, num_classes=None, dtype=dtype, param_dtype=param_dtype,
                              **fields)
    return _renamed(module, name)
  if isinstance(backbone, nn.Module):
    missing = sorted(k for k in fields if not hasattr(backbone, k))
    if missing:
      raise ValueError(f"The backbone module {describe(backbone)} has no field "
                       f"{', '.join(missing)}, which the head sets.")
    asked = {"num_classes": None, "dtype": dtype, "param_dtype": param_dtype, **fields}
    wrong = {k: getattr(backbone, k) for k, v in asked.items()
             if hasattr(backbone, k) and not _same(k, getattr(backbone, k), v)}
    if wrong:
      have = ", ".join(f"{k}={v!r}" for k, v in wrong.items())
      want = ", ".join(f"{k}={asked[k]!r}" for k in wrong)
      raise ValueError(
          f"The backbone module {describe(backbone)} has {have}, but the head needs {want}. "
          "A module is used as it is: construct it with those values (num_classes=None: a "
          "classifier no head reads would add untrained parameters), or pass its class or a "
          "functools.partial of it, which the head builds with its own fields.")
    if backbone.scope is not None and backbone.name == name:  # Bound to the head as `name`.
      return backbone
    return _renamed(backbone, name)
  if not callable(backbone):
    raise TypeError(f"backbone={backbone!r} is neither a registry name, a Module nor a "
                    "constructor of one.")
  module = backbone(num_classes=None, dtype=dtype, param_dtype=param_dtype, name=name, **fields)
  if not isinstance(module, nn.Module):
    raise ValueError(f"The backbone constructor {describe(backbone)} returned "
                     f"{type(module).__name__}, not a linen Module.")
  return module


def fit(x: jax.Array, height: int, width: int) -> jax.Array:
  """Crops (bottom/right) or edge-pads `x` (B, H, W, C) to (B, height, width, C)."""
  x = x[:, :height, :width]
  pad_h, pad_w = height - x.shape[1], width - x.shape[2]
  if pad_h or pad_w:
    x = jnp.pad(x, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)), mode="edge")
  return x


def stages_by_stride(features: Mapping[str, jax.Array], input_size: int,
                     strides=(32, 16, 8)) -> tuple[str, ...]:
  """The backbone stage at each of `strides`: for each, the deepest `stage<k>` that has it.

  A stage's stride is `input_size / its height`, rounded to a power of two, so sizes not
  divisible by 32 (floor or ceil pooling) still count.

  Raises:
    ValueError: naming the stages and their strides when one is missing.
  """
  found = {}
  for name, x in features.items():
    if name.startswith("stage") and name[5:].isdigit() and x.ndim == 4:
      found[name] = 2 ** round(math.log2(input_size / x.shape[1]))
  picked = []
  for stride in strides:
    names = sorted((n for n, s in found.items() if s == stride), key=lambda n: int(n[5:]))
    if not names:
      raise ValueError(f"The backbone has no stage at stride {stride}; its stages and strides "
                       f"at {input_size} px: {found}. This head needs stages at strides {strides} "
                       "(e.g. VGG, ResNet-18/50 with the ImageNet stem, GoogLeNet).")
    picked.append(names[-1])
  return tuple(picked)
