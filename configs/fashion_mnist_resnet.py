"""Fashion-MNIST with a CIFAR-style ResNet (default ResNet-20) in bf16: the GPU recipe.

    python -m vision_jax.main --config=configs/fashion_mnist_resnet.py --workdir=runs/fmnist_rn20
    python -m vision_jax.main --config=configs/fashion_mnist_resnet.py:resnet56 --workdir=...

On a CPU it runs too, only slowly. The argument after ':' picks the ResNet depth.
"""

from vision_jax import recipes
from vision_jax.config import base_config


def get_config(model: str = "resnet20"):
  c = base_config()
  recipes.fashion_mnist(c, batch_size=256)
  c.input.crop_padding = 2
  c.model.name = model
  c.model.dtype = "bfloat16"
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.2
  c.optim.weight_decay = 5e-4
  c.optim.warmup_steps = 500
  c.train.num_epochs = 40
  c.train.label_smoothing = 0.1
  c.train.eval_every = 2000
  c.train.checkpoint_every = 2000
  return c
