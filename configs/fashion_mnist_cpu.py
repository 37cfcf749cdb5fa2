"""Fashion-MNIST on a CPU: as accurate as 15 minutes of this project's 2-core CPU allow.

    python -m vision_jax.main --config=configs/fashion_mnist_cpu.py --workdir=runs/fmnist_cpu

ResNet-20 (BatchNorm, the CIFAR stem) for 4 epochs at batch 256: SGD with Nesterov momentum,
a short warmup and a cosine decay to 0, label smoothing, pad-2 crops and flips, and test-time
flip averaging. Measured numbers and the command that gives them: README, "Fashion-MNIST".
Reads /usr/share/datasets/fashion-mnist (Debian's dataset-fashion-mnist).
"""

from vision_jax.config import base_config


def get_config():
  c = base_config()
  c.dataset.name = "fashion_mnist_local"
  c.dataset.manual_dir = "/usr/share/datasets/fashion-mnist"
  c.dataset.in_memory = True  # 55 MB decoded.
  c.input.batch_size = 256
  c.input.eval_batch_size = 1000
  c.input.crop_padding = 2
  c.input.mean = (0.286,)
  c.input.std = (0.353,)
  c.model.name = "resnet20"
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.2
  c.optim.weight_decay = 5e-4
  c.optim.warmup_steps = 100
  c.train.num_epochs = 4
  c.train.label_smoothing = 0.1
  c.train.eval_flip = True
  c.train.eval_every = 235  # About one epoch (234.4 steps): the accuracy-against-time curve.
  c.train.checkpoint_every = 235
  c.train.best_metric = "accuracy"
  return c
