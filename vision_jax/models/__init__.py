"""Image classification models and the registry that names them.

Every model is a linen Module with fields `num_classes`, `dtype` and `param_dtype`, called as
`model.apply(variables, images, train=...)` on (B, H, W, C) images, returning
`(logits, features)`: float32 logits (B, num_classes) and a dict of named intermediate
activations for heads to reuse (big_vision's convention). Models with BatchNorm keep its state in
the `'batch_stats'` collection; models with dropout draw from the `'dropout'` rng when training.
"""

from collections.abc import Callable
import dataclasses
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vision_jax import errors, registry
from vision_jax.models import alexnet, googlenet, resnet, vgg, wide_resnet
from vision_jax.models.info import MODEL_INFO, model_info, ModelInfo
from vision_jax.models.mlp import MLP
from vision_jax.models.simple_cnn import SimpleCNN

# Name -> constructor taking the model's fields as keyword arguments. Built-in models are listed
# here, and their facts (family, usual input, torchvision name ...) in `info.MODEL_INFO`; code
# outside the package adds its own with `register` (a record is optional).
MODELS: registry.Registry[Callable[..., nn.Module]] = registry.Registry(
    "model", "vision_jax.models.register", {
    "mlp": MLP,
    "simple_cnn": SimpleCNN,
    # CIFAR-style.
    "resnet20": resnet.ResNet20,
    "resnet32": resnet.ResNet32,
    "resnet56": resnet.ResNet56,
    "wrn28_10": wide_resnet.WRN28_10,
    "wrn40_4": wide_resnet.WRN40_4,
    # ImageNet-style.
    "resnet18": resnet.ResNet18,
    "resnet34": resnet.ResNet34,
    "resnet50": resnet.ResNet50,
    "resnet101": resnet.ResNet101,
    "resnet152": resnet.ResNet152,
    "alexnet": alexnet.AlexNet,
    "zfnet": alexnet.ZFNet,
    "vgg11": vgg.VGG11,
    "vgg13": vgg.VGG13,
    "vgg16": vgg.VGG16,
    "vgg19": vgg.VGG19,
    "vgg11_bn": vgg.VGG11BN,
    "vgg13_bn": vgg.VGG13BN,
    "vgg16_bn": vgg.VGG16BN,
    "vgg19_bn": vgg.VGG19BN,
    "googlenet": googlenet.GoogLeNet,
})
register = MODELS.register


# Fields `get_model` sets itself, so they are no model kwargs.
_SET_BY_GET_MODEL = ("parent", "name", "num_classes", "dtype", "param_dtype")


def model_fields(name: str) -> tuple[str, ...] | None:
  """The fields of model `name` that `get_model` takes as kwargs (None: not a dataclass)."""
  constructor = MODELS.lookup(name)
  cls = getattr(constructor, "func", constructor)  # Variants are `functools.partial`s.
  if not dataclasses.is_dataclass(cls):
    return None
  return tuple(sorted(f.name for f in dataclasses.fields(cls) if f.name not in _SET_BY_GET_MODEL))


def get_model(
    name: str, *, num_classes: int | None, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
    **kwargs: Any) -> nn.Module:
  """Builds a registered model.

  Args:
    name: A key of `MODELS` (built in, or added with `register`).
    num_classes: Number of output logits; None builds the model without its classifier.
    dtype: Computation dtype, e.g. jnp.bfloat16 for mixed precision (logits stay float32).
    param_dtype: Parameter dtype.
    **kwargs: Other fields of the model, e.g. `dropout_rate` or `bn_axis_name`.

  Returns:
    The unbound module.

  Raises:
    errors.UserError: If `name` is not registered, `num_classes` is below 1, or a kwarg is no
      field of the model.
  """
  constructor = MODELS.lookup(name)
  if num_classes is not None and num_classes < 1:
    raise errors.UserError(f"num_classes={num_classes} for model {name!r} must be >= 1 (the "
                           "number of output logits).")
  fields = model_fields(name)
  unknown = sorted(set(kwargs) - set(fields)) if fields is not None else []
  if unknown:
    raise errors.UserError(f"Model {name!r} has no field {', '.join(unknown)}; its fields: "
                           f"{', '.join(fields)}.")
  return constructor(num_classes=num_classes, dtype=dtype, param_dtype=param_dtype, **kwargs)


__all__ = [
    "MODELS", "MODEL_INFO", "MLP", "ModelInfo", "SimpleCNN", "alexnet", "get_model", "googlenet",
    "model_fields", "model_info", "register", "resnet", "vgg", "wide_resnet"]
