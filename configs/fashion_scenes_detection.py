"""Faster R-CNN on scenes of real Fashion-MNIST garments (10 classes), on a CPU.

    python -m vision_jax.main --config=configs/fashion_scenes_detection.py --workdir=runs/fs_frcnn

`fashion_scenes/size64` is built once from /usr/share/datasets/fashion-mnist (set
--config.dataset.manual_dir elsewhere): 64x64 grey canvases with 1-3 garments of 22-42 px,
later ones partly covering earlier ones, each with its tight box and Fashion-MNIST class. The
detector is the one of configs/shapes_detection.py (VGG-11-BN widths 16, 32, 64; one map at
stride 4) with anchors for these larger, often tall (trousers, dresses) or wide (bags) items.
"""

from vision_jax.config import base_config
from vision_jax.data.builders import fashion_mnist_local


def get_config():
  c = base_config()
  c.task = "detection"
  c.dataset.name = "fashion_scenes/size64"
  c.dataset.manual_dir = "/usr/share/datasets/fashion-mnist"
  c.dataset.in_memory = True
  c.input.image_size = 64
  c.input.crop_padding = 0  # Flips only: crops would move pixels but not boxes.
  c.input.mean = (0.366,)
  c.input.std = (0.218,)
  c.input.batch_size = 32
  c.input.eval_batch_size = 200
  c.model.name = "vgg11_bn"
  c.model.kwargs.widths = (16, 32, 64, 16, 16)  # Stages 4 and 5 are not read: narrow.
  d = c.detection
  d.class_names = fashion_mnist_local.CLASS_NAMES
  d.max_boxes = 4  # At most 3 garments per scene.
  d.feature_strides = (4, 8)
  d.feature_width = 64
  d.anchor_sizes = (16.0, 24.0, 32.0, 48.0)
  d.anchor_ratios = (0.5, 1.0, 2.0)
  d.rpn_width = 64
  d.rpn_pre_nms_train = 300
  d.rpn_post_nms_train = 48
  d.rpn_pre_nms_test = 300
  d.rpn_post_nms_test = 32
  d.roi_batch_size = 32
  d.head_width = 128
  d.max_detections = 20
  d.eval_max_detections = 20
  c.optim.name = "adamw"
  c.optim.learning_rate = 2e-3
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 100
  c.optim.grad_clip_norm = 10.0
  c.train.num_steps = 1500  # 48k scenes, 2.4 epochs.
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.log_every = 50
  c.train.best_metric = "map50"
  return c
