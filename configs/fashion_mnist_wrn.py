"""Fashion-MNIST with a Wide ResNet and random erasing: the GPU recipe aimed at >= 96%.

    python -m vision_jax.main --config=configs/fashion_mnist_wrn.py --workdir=runs/fmnist_wrn
    python -m vision_jax.main --config=configs/fashion_mnist_wrn.py:wrn28_10 --workdir=...

WRN-40-4 (the best of Zalando's benchmark table, 96.7%) or WRN-28-10 (96.35% with random
erasing in Zhong et al. 2020), bf16, batch 128, SGD with Nesterov momentum 0.1 and weight decay
5e-4, 200 epochs with a cosine schedule, pad-2 crops, flips, random erasing (p = 0.5),
test-time flip averaging and an EMA of the weights (both it and the raw weights are evaluated).
Not yet measured: no GPU was lent so far (README, "Fashion-MNIST"); on a CPU it runs, slowly.
"""

from vision_jax import recipes
from vision_jax.config import base_config


def get_config(model: str = "wrn40_4"):
  c = base_config()
  recipes.fashion_mnist(c, batch_size=128)
  c.input.crop_padding = 2
  c.input.random_erasing = 0.5
  c.model.name = model
  c.model.dtype = "bfloat16"
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.1
  c.optim.weight_decay = 5e-4
  c.optim.warmup_steps = 500
  c.train.num_epochs = 200
  c.train.ema_decay = 0.999
  c.train.eval_flip = True
  c.train.eval_every = 4690  # Every 10 epochs.
  c.train.checkpoint_every = 4690
  c.train.best_metric = "accuracy"
  return c
