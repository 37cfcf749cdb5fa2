"""Fashion-MNIST on a CPU: the most accurate recipe found for this project's 2-core CPU in 15 min.

    python -m vision_jax.main --config=configs/fashion_mnist_cpu.py --workdir=runs/fmnist_cpu

A 3-stage simple CNN (3x3 convolutions of 32, 64, 128 channels, each followed by 2x2 max
pooling, a 512-wide hidden layer with dropout 0.3) for 26 epochs at batch 64, data-parallel over
2 CPU devices (`parallel.cpu_devices`: ~1.6x the images/s of one device on 2 cores): AdamW 1.5e-3
with warmup and a cosine decay, label smoothing 0.1, pad-2 crops and flips, an EMA of the
weights (0.998), test-time flip averaging. Measured in docs/classification.md ("Fashion-MNIST").
Reads /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist).
"""

from vision_jax import recipes
from vision_jax.config import base_config


def get_config():
  c = base_config()
  recipes.fashion_mnist(c, batch_size=64)
  c.input.crop_padding = 2
  c.parallel.cpu_devices = 2  # Two CPU devices on 2 cores: a speed setting (1 device: same maths).
  c.model.name = "simple_cnn"
  c.model.kwargs.features = (32, 64, 128)
  c.model.kwargs.hidden = 512
  c.model.kwargs.dropout_rate = 0.3
  c.optim.name = "adamw"
  c.optim.learning_rate = 1.5e-3
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 200
  c.train.num_epochs = 26
  c.train.label_smoothing = 0.1
  c.train.ema_decay = 0.998
  c.train.eval_flip = True
  c.train.eval_every = 6094  # Every 6.5 epochs (937.5 steps each): the accuracy-vs-time curve.
  c.train.checkpoint_every = 1875  # Every 2 epochs: a killed run loses at most ~1 minute.
  c.train.best_metric = "accuracy"
  return c
