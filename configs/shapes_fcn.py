"""FCN-8s on the embedded synthetic shapes (64x64): the segmentation acceptance run, on a CPU.

    python -m vision_jax.main --config=configs/shapes_fcn.py --workdir=runs/shapes_fcn

Seven classes per pixel (background and the six shapes) with a compact VGG-11-BN backbone
(widths 16..128, stages at strides 8/16/32); random scale 0.5-2x, crop and flip, masks moved
with the images. Writes image | ground truth | prediction pictures to workdir/segmentation/.
Other variants: `--config.segmentation.variant=32s` (or 16s).
"""

from vision_jax.config import base_config


def get_config():
  c = base_config()
  c.task = "segmentation"
  c.dataset.name = "synthetic_shapes/size64"
  c.dataset.in_memory = True  # 330 MB decoded (images and masks).
  c.input.image_size = 64
  c.input.train_crop = "random_scale"
  c.input.scale_range = (0.8, 1.25)
  c.input.crop_padding = 0
  c.input.batch_size = 64
  c.input.eval_batch_size = 200
  c.model.name = "vgg11_bn"
  c.model.kwargs.widths = (16, 32, 64, 128, 128)
  c.segmentation.variant = "8s"
  c.segmentation.class_names = ("background", "circle", "square", "triangle", "cross",
                                "diamond", "ring")
  c.optim.name = "adamw"
  c.optim.learning_rate = 3e-3
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 100
  c.train.num_steps = 1300
  c.train.eval_every = 650
  c.train.checkpoint_every = 650
  c.train.log_every = 100
  c.train.best_metric = "miou"
  return c
