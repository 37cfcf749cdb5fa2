"""The example paper's experiment: its task and backbone, trained by vision_jax's CLI.

    cd experiments && python -m vision_jax.main --config=example_paper/config.py \
        --workdir=/tmp/paper

`get_config("resnet20")` puts the same head on a zoo backbone instead.
"""

from vision_jax.config import base_config


def get_config(backbone: str = "paper_net"):
  c = base_config()
  c.imports = ("example_paper",)  # Registers `paper_net` and `shape_and_centre` everywhere.
  c.task = "shape_and_centre"
  c.dataset.name = "synthetic_shapes/size32"
  c.dataset.in_memory = True
  c.model.name = backbone
  c.model.kwargs.centre_weight = 1.0
  c.input.batch_size = 64
  c.input.crop_padding = 2
  c.optim.name = "adamw"
  c.optim.learning_rate = 2e-3
  c.train.num_epochs = 3
  c.train.best_metric = "accuracy"
  return c
