"""Model summary: layers, output shapes, parameters and FLOPs per image.

    python -m vision_jax.tools.summary resnet50 [--image_size=224] [--num_classes=1000] [--depth=1]
    python -m vision_jax.tools.summary my_net --imports=my_paper.models  # A model of your own.

FLOPs are XLA's count for one image's inference forward pass (a multiply-add counts as 2).
"""

import dataclasses

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax import config as config_lib
from vision_jax import errors, models
from vision_jax.models import input_size

_IMAGE_SIZE = flags.DEFINE_integer("image_size", 224, "Input height and width.")
_CHANNELS = flags.DEFINE_integer("channels", 3, "Input channels.")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", 1000, "Output classes.")
_DEPTH = flags.DEFINE_integer("depth", 1, "Module nesting depth shown in the layer table.")
_IMPORTS = flags.DEFINE_list(
    "imports", [], "Modules to import first, e.g. a paper's package that registers its models "
    "(as config.imports).")


@dataclasses.dataclass(frozen=True)
class ModelStats:
  """Size and cost of a model on one input shape."""
  name: str
  input_shape: tuple[int, ...]  # (H, W, C)
  num_params: int
  flops_per_image: float


def model_stats(name: str, image_size: int, channels: int = 3,
                num_classes: int = 1000) -> ModelStats:
  """Counts parameters (no allocation: `jax.eval_shape`) and inference FLOPs of one image."""
  model = models.get_model(name, num_classes=num_classes)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  num_params = sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))
  forward = jax.jit(lambda v, x: model.apply(v, x, train=False)[0])
  cost = forward.lower(variables, images).compile().cost_analysis()
  return ModelStats(name, (image_size, image_size, channels), num_params, float(cost["flops"]))


def summary(name: str, image_size: int, channels: int = 3, num_classes: int = 1000,
            depth: int = 1) -> str:
  """The layer table (flax `nn.tabulate`) followed by totals, as printable text."""
  model = models.get_model(name, num_classes=num_classes)
  images = jnp.zeros((1, image_size, image_size, channels), jnp.float32)
  table = nn.tabulate(model, jax.random.key(0), depth=depth,
                      console_kwargs={"width": 160, "force_terminal": False})(images, train=False)
  stats = model_stats(name, image_size, channels, num_classes)
  return (f"{table}\n{name} on {stats.input_shape}: {stats.num_params:,} parameters, "
          f"{stats.flops_per_image / 1e9:.3f} GFLOPs per image (inference)")


def main(argv):
  config_lib.import_modules(_IMPORTS.value, field="--imports")
  if len(argv) != 2:
    raise app.UsageError(f"Name one model; valid choices: {sorted(models.MODELS)}")
  models.get_model(argv[1], num_classes=_NUM_CLASSES.value)  # Checks the name and class count.
  if _CHANNELS.value < 1:
    raise errors.UserError(f"--channels={_CHANNELS.value} must be >= 1.")
  input_size.check_input_size(argv[1], (_IMAGE_SIZE.value, _IMAGE_SIZE.value, _CHANNELS.value),
                              fix="Set --image_size to at least that.")
  print(summary(argv[1], _IMAGE_SIZE.value, _CHANNELS.value, _NUM_CLASSES.value, _DEPTH.value))


if __name__ == "__main__":
  errors.run(main)
