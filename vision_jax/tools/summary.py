"""Model summary: layers, output shapes, parameters and FLOPs per image; the zoo table.

    python -m vision_jax.tools.summary resnet50 [--image_size=224] [--num_classes=1000] [--depth=1]
    python -m vision_jax.tools.summary my_net --imports=my_paper.models  # A model of your own.

FLOPs are XLA's count for one image's inference forward pass (a multiply-add counts as 2). The
input defaults to the model's usual one (its record, `vision_jax.models.info`; 224×224×3 and
1000 classes for a model without a record). `zoo_table` is docs/zoo.md's table of every zoo
model, which `experiments/zoo_table.py --write` writes.
"""

import dataclasses

from absl import app, flags
import flax.linen as nn
import jax
import jax.numpy as jnp

from vision_jax import config as config_lib
from vision_jax import errors, models
from vision_jax.models import input_size

_IMAGE_SIZE = flags.DEFINE_integer("image_size", None,
                                   "Input height and width (default: the model's usual size).")
_CHANNELS = flags.DEFINE_integer("channels", None, "Input channels (default: the model's usual).")
_NUM_CLASSES = flags.DEFINE_integer("num_classes", None,
                                    "Output classes (default: the model's usual dataset's).")
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


def usual_input(name: str) -> tuple[int, int, int]:
  """(image size, channels, classes) that model `name` is usually run at: from its record, or
  ImageNet's 224, 3 and 1000 for a model without one."""
  info = models.model_info(name)
  if info is None:
    return 224, 3, 1000
  height, _, channels = info.input_size  # Square for every zoo model.
  return height, channels, info.num_classes


def _abstract(name: str, image_size: int, channels: int, num_classes: int):
  """Model `name`, a one-image input and its variables, as shapes only (`jax.eval_shape`)."""
  model = models.get_model(name, num_classes=num_classes)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, channels), jnp.float32)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x, train=False), images)
  return model, images, variables


def model_params(name: str, image_size: int, channels: int = 3, num_classes: int = 1000) -> int:
  """Counts the parameters of model `name` on that input, allocating and compiling nothing."""
  _, _, variables = _abstract(name, image_size, channels, num_classes)
  return sum(leaf.size for leaf in jax.tree.leaves(variables["params"]))


def model_stats(name: str, image_size: int, channels: int = 3,
                num_classes: int = 1000) -> ModelStats:
  """Counts parameters (no allocation: `jax.eval_shape`) and inference FLOPs of one image."""
  model, images, variables = _abstract(name, image_size, channels, num_classes)
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


ZOO_TABLE_HEADER = ("| model | input | classes | parameters | GFLOPs / image | ILSVRC |\n"
                    "|---|---|---|---:|---:|---|")


def zoo_table_row(name: str) -> str:
  """One row of the zoo table: model `name` (which has a record) at its usual input."""
  info = models.model_info(name)
  height, width, channels = info.input_size
  stats = model_stats(name, height, channels, info.num_classes)
  return (f"| `{name}` | {height}×{width}×{channels} | {info.num_classes} | "
          f"{stats.num_params:,} | {stats.flops_per_image / 1e9:.3f} | {info.ilsvrc} |")


def zoo_table() -> str:
  """The zoo table (markdown) of docs/zoo.md: every built-in model at its usual input, with its
  parameters, inference GFLOPs per image and ILSVRC result (compiles every model: minutes)."""
  return "\n".join([ZOO_TABLE_HEADER, *(zoo_table_row(name) for name in models.MODEL_INFO)])


def main(argv):
  config_lib.import_modules(_IMPORTS.value, field="--imports")
  if len(argv) != 2:
    raise app.UsageError(f"Name one model; valid choices: {sorted(models.MODELS)}")
  name = argv[1]
  usual_size, usual_channels, usual_classes = usual_input(name)
  image_size = usual_size if _IMAGE_SIZE.value is None else _IMAGE_SIZE.value
  channels = usual_channels if _CHANNELS.value is None else _CHANNELS.value
  num_classes = usual_classes if _NUM_CLASSES.value is None else _NUM_CLASSES.value
  models.get_model(name, num_classes=num_classes)  # Checks the name and class count.
  if channels < 1:
    raise errors.UserError(f"--channels={channels} must be >= 1.")
  input_size.check_input_size(name, (image_size, image_size, channels),
                              fix="Set --image_size to at least that.")
  print(summary(name, image_size, channels, num_classes, _DEPTH.value))


if __name__ == "__main__":
  errors.run(main)
