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
  # 5 epochs at a high learning rate without crops: >= 95% in about 90 s of a 2-core CPU (README,
  # "Results"); 10 epochs of 2e-3 with pad-2 crops gave 97.5% in 3 min.
  c.input.crop_padding = 0
  c.optim.name = "adamw"
  c.optim.learning_rate = 5e-3
  c.train.num_epochs = 5
  return c
