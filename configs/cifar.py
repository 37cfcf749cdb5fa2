"""CIFAR-10 / CIFAR-100 with a Wide ResNet or CIFAR ResNet (pad-and-crop, flips, SGD, 200 epochs).

    python -m vision_jax.main --config=configs/cifar.py --workdir=runs/c10_wrn28_10
    python -m vision_jax.main --config=configs/cifar.py:cifar100,wrn40_4 --workdir=runs/c100_wrn

The argument after ':' is `dataset[,model]`: cifar10 or cifar100; wrn28_10 (default), wrn40_4,
resnet20/32/56. Zagoruyko & Komodakis' recipe: batch 128, SGD + Nesterov 0.1, decay 5e-4,
cosine instead of their step schedule.
"""

from vision_jax.config import base_config
from vision_jax.errors import UserError
from vision_jax.models import info

_STATS = {"cifar10": (info.CIFAR10_MEAN, info.CIFAR10_STD),
          "cifar100": (info.CIFAR100_MEAN, info.CIFAR100_STD)}


def get_config(arg: str = "cifar10,wrn28_10"):
  dataset, _, model = arg.partition(",")
  if dataset not in _STATS:
    raise UserError(f"Unknown CIFAR dataset {dataset!r}; valid choices: {sorted(_STATS)}")
  c = base_config()
  c.dataset.name = dataset
  c.dataset.in_memory = True  # 150 MB decoded.
  c.input.batch_size = 128
  c.input.eval_batch_size = 1000
  c.input.crop_padding = 4
  c.input.mean, c.input.std = _STATS[dataset]
  c.model.name = model or "wrn28_10"
  c.model.dtype = "bfloat16"
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.1
  c.optim.weight_decay = 5e-4
  c.optim.warmup_steps = 390  # One epoch.
  c.train.num_epochs = 200
  c.train.eval_every = 3900  # Every 10 epochs.
  c.train.checkpoint_every = 1950
  return c
