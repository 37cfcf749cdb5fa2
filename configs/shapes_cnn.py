"""The default experiment: a small CNN on the embedded synthetic shapes dataset (no download).

    python -m vision_jax.main --config=configs/shapes_cnn.py --workdir=runs/shapes_cnn

Classifies the shape of the largest object in 32x32 scenes (6 classes); `make train` runs this.
"""

from vision_jax.config import base_config


def get_config():
  c = base_config()
  c.dataset.name = "synthetic_shapes/size32"
  c.dataset.in_memory = True  # 61 MB decoded.
  c.model.name = "simple_cnn"
  c.model.kwargs.hidden = 256
  c.model.kwargs.dropout_rate = 0.0
  c.input.batch_size = 128
  c.input.crop_padding = 2
  c.optim.name = "adamw"
  c.optim.learning_rate = 2e-3
  c.train.num_epochs = 10
  return c
