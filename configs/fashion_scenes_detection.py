"""Faster R-CNN on scenes of real Fashion-MNIST garments (10 classes), on a CPU.

    python -m vision_jax.main --config=configs/fashion_scenes_detection.py --workdir=runs/fs_frcnn

`fashion_scenes/size64` is built once from /usr/share/datasets/fashion-mnist (set
--config.dataset.manual_dir elsewhere): 64x64 grey canvases with 1-3 garments of 22-42 px,
later ones partly covering earlier ones, each with its tight box and Fashion-MNIST class. The
detector is the one of configs/shapes_detection.py (VGG-11-BN widths 16, 32, 64; one map at
stride 4) with anchors for these larger, often tall (trousers, dresses) or wide (bags) items.
"""

from vision_jax import recipes
from vision_jax.config import base_config
from vision_jax.data.builders import fashion_mnist_local


def get_config():
  c = base_config()
  recipes.small_detector(c)
  c.dataset.name = "fashion_scenes/size64"
  c.dataset.manual_dir = "/usr/share/datasets/fashion-mnist"
  c.input.mean = (0.366,)
  c.input.std = (0.218,)
  c.detection.class_names = fashion_mnist_local.CLASS_NAMES
  c.detection.anchor_sizes = (16.0, 24.0, 32.0, 48.0)
  c.train.num_steps = 1500  # 48k scenes, 2.4 epochs.
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  return c
