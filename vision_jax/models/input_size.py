"""Whether a model's feature maps survive an image size, found by tracing (nothing computed).

Too small an image shrinks some feature map to zero size: a global average over it is NaN, a
flatten gives an empty vector. `check_input_size` traces `model.init` with `jax.eval_shape`,
watching every module's inputs and outputs (a fraction of a second), and raises one error
naming the model, the size and the smallest square size that works.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax import errors, models

_LARGEST = 4096  # Search bound for the smallest size; beyond it the problem is not the size.


def _problem(name: str, height: int, width: int, channels: int, kwargs: dict) -> str | None:
  """Why `name` cannot take (height, width, channels) images, or None when it can."""
  model = models.get_model(name, num_classes=1, **kwargs)
  empty = []  # The first module that gets or gives a zero-size array, and its shape.

  def record(next_fun, args, call_kwargs, context):
    for where, value in (("the input of", args), ("the output of", None)):
      if value is None:
        value = out = next_fun(*args, **call_kwargs)
      shapes = [x.shape for x in jax.tree.leaves(value) if hasattr(x, "shape")]
      if not empty and any(0 in shape for shape in shapes):
        path = "/".join(context.module.path) or name
        empty.append(f"{where} {path} would be {[s for s in shapes if 0 in s][0]}")
    return out

  images = jax.ShapeDtypeStruct((1, height, width, channels), jnp.float32)
  try:
    with nn.intercept_methods(record):
      jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  except errors.UserError:
    raise
  except Exception as error:  # pylint: disable=broad-except  (e.g. a zero-size layer's init)
    return empty[0] if empty else f"{type(error).__name__}: {str(error).splitlines()[0]}"
  return empty[0] if empty else None


def smallest_size(name: str, channels: int = 3, start: int = 1, **kwargs: Any) -> int | None:
  """The smallest square size >= `start` that model `name` takes (None: none up to 4096)."""
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  if _problem(name, start, start, channels, kwargs) is None:
    return start
  low, high = start, start  # low fails; find a high that works, then bisect.
  while _problem(name, high, high, channels, kwargs) is not None:
    if high >= _LARGEST:
      return None
    low, high = high, min(2 * high, _LARGEST)
  while high - low > 1:
    middle = (low + high) // 2
    if _problem(name, middle, middle, channels, kwargs) is None:
      high = middle
    else:
      low = middle
  return high


def check_input_size(name: str, image_shape: tuple[int, int, int], fix: str = "",
                     field: str = "", **kwargs: Any) -> None:
  """Raises a `UserError` when model `name` (with `kwargs`) cannot take `image_shape` images.

  Args:
    name: a registry model (a classifier, or the backbone of a task's model).
    image_shape: (H, W, C) of one image.
    fix: appended to the message, e.g. which config field to change.
    field: the setting that chose the size, e.g. "config.input.image_size=8": leads the message.
    **kwargs: the model's fields.
  """
  height, width, channels = image_shape
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
  if min(height, width) >= 1 and _problem(name, height, width, channels, kwargs) is None:
    return
  smallest = smallest_size(name, channels, max(height, width, 0) + 1, **kwargs)
  if smallest is None:
    return  # Not a size problem: building the model reports it.
  why = _problem(name, height, width, channels, kwargs) if min(height, width) >= 1 else None
  raise errors.UserError(
      f"{field + ': ' if field else ''}Model {name!r} cannot take {height}x{width} images: "
      f"{'its feature maps shrink to nothing (' + why + ')' if why else 'they are empty'}; "
      f"the smallest size it accepts is {smallest}x{smallest}.{' ' + fix if fix else ''}")
