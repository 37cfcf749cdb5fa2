"""Fashion-MNIST (real, local IDX files) with the simple LeNet-like CNN, sized for a CPU.

    python -m vision_jax.main --config=configs/fashion_mnist_cnn.py --workdir=runs/fmnist_cnn

Reads /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist); point
--config.dataset.manual_dir elsewhere if your files live there. `experiments/fashion_mnist.sh`
runs this and prints the test accuracy.
"""

from vision_jax import recipes
from vision_jax.config import base_config


def get_config():
  c = base_config()
  recipes.fashion_mnist(c, batch_size=128)
  c.input.crop_padding = 0  # Flips only: for a short CPU run, crops cost more than they give.
  c.model.name = "simple_cnn"
  c.model.kwargs.hidden = 256
  c.model.kwargs.dropout_rate = 0.3
  c.optim.name = "adamw"
  c.optim.learning_rate = 2e-3
  c.optim.weight_decay = 1e-4
  c.train.num_epochs = 8
  c.train.eval_every = 2000
  c.train.checkpoint_every = 2000
  return c
