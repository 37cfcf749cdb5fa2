"""Image classification models and the registry that names them.

Every model is a linen Module with fields `num_classes`, `dtype` and `param_dtype`, called as
`model.apply(variables, images, train=...)` on (B, H, W, C) images, returning
`(logits, features)`: float32 logits (B, num_classes) and a dict of named intermediate
activations for heads to reuse (big_vision's convention). Models with BatchNorm keep its state in
the `'batch_stats'` collection; models with dropout draw from the `'dropout'` rng when training.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from vision_jax.models import alexnet, googlenet, resnet, vgg, wide_resnet
from vision_jax.models.mlp import MLP
from vision_jax.models.simple_cnn import SimpleCNN

# Name -> constructor taking the model's fields as keyword arguments. Add new models here.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "mlp": MLP,
    "simple_cnn": SimpleCNN,
    # CIFAR-style (32x32 inputs).
    "resnet20": resnet.ResNet20,
    "resnet32": resnet.ResNet32,
    "resnet56": resnet.ResNet56,
    "wrn28_10": wide_resnet.WRN28_10,
    "wrn40_4": wide_resnet.WRN40_4,
    # ImageNet-style (224x224 inputs).
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
}


def get_model(
    name: str, *, num_classes: int, dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
    **kwargs: Any) -> nn.Module:
  """Builds a registered model.

  Args:
    name: A key of `MODELS`.
    num_classes: Number of output logits.
    dtype: Computation dtype, e.g. jnp.bfloat16 for mixed precision (logits stay float32).
    param_dtype: Parameter dtype.
    **kwargs: Other fields of the model, e.g. `dropout_rate` or `bn_axis_name`.

  Returns:
    The unbound module.

  Raises:
    ValueError: If `name` is not registered.
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; valid choices: {sorted(MODELS)}")
  return MODELS[name](num_classes=num_classes, dtype=dtype, param_dtype=param_dtype, **kwargs)


__all__ = [
    "MODELS", "MLP", "SimpleCNN", "alexnet", "get_model", "googlenet", "resnet", "vgg",
    "wide_resnet"]
