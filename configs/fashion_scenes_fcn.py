"""FCN-32s vs 16s vs 8s (vs 4s) on scenes of real Fashion-MNIST garments (11 classes), on a CPU.

    python -m vision_jax.main --config=configs/fashion_scenes_fcn.py:8s --workdir=runs/fs_fcn8s

The argument is the variant: 32s, 16s, 8s or 4s; each run has the same budget (steps, batch,
backbone), so the comparison isolates the skips. `fashion_scenes/size64` is built once from
/usr/share/datasets/fashion-mnist (set --config.dataset.manual_dir elsewhere): 64x64 grey
canvases with 1-3 garments (see vision_jax/data/builders/fashion_scenes.py). The backbone is
the compact VGG-11-BN of configs/shapes_fcn.py (widths 8..64: stages at strides 4/8/16/32).
"""

from vision_jax.config import base_config
from vision_jax.data.builders import fashion_scenes
from vision_jax.errors import UserError
from vision_jax.tasks.segmentation import fcn


def get_config(variant: str = "8s"):
  if variant not in fcn.VARIANTS:
    raise UserError(f"Unknown FCN variant {variant!r}; valid choices: {list(fcn.VARIANTS)}")
  c = base_config()
  c.task = "segmentation"
  c.dataset.name = "fashion_scenes/size64"
  c.dataset.manual_dir = "/usr/share/datasets/fashion-mnist"
  c.dataset.in_memory = True  # 164 MB decoded.
  c.input.image_size = 64
  c.input.train_crop = "random_scale"
  c.input.scale_range = (0.8, 1.25)
  c.input.crop_padding = 0
  c.input.mean = (0.366,)
  c.input.std = (0.218,)
  c.input.batch_size = 64
  c.input.eval_batch_size = 200
  c.model.name = "vgg11_bn"
  c.model.kwargs.widths = (8, 16, 32, 64, 64)
  c.segmentation.variant = variant
  c.segmentation.class_names = fashion_scenes.CLASS_NAMES
  c.optim.name = "adamw"
  c.optim.learning_rate = 3e-3
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 100
  c.train.num_steps = 1500  # 96k scenes, 4.8 epochs.
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  c.train.log_every = 100
  c.train.best_metric = "miou"
  return c
