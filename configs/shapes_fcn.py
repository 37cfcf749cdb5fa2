"""FCN-4s on the embedded synthetic shapes (64x64): the segmentation acceptance run, on a CPU.

    python -m vision_jax.main --config=configs/shapes_fcn.py --workdir=runs/shapes_fcn

Seven classes per pixel (background and the six shapes) with a compact VGG-11-BN backbone
(widths 8..64, stages at strides 4/8/16/32). Random scale 0.8-1.25x, crop and flip move the
masks with the images. Pictures (image | ground truth | prediction) go to workdir/segmentation/.
FCN-4s adds a stride-4 skip to the paper's FCN-8s: on 64x64 images a stride-8 map has 8x8
cells, too coarse for the rings' holes and the crosses' arms (FCN-8s plateaus at 0.80 mIoU with
this budget, FCN-4s passes it in a quarter of it). The paper's variants:
`--config.segmentation.variant=8s` (or 16s, 32s).
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
  c.model.kwargs.widths = (8, 16, 32, 64, 64)
  c.segmentation.variant = "4s"
  c.segmentation.class_names = ("background", "circle", "square", "triangle", "cross",
                                "diamond", "ring")
  c.optim.name = "adamw"
  c.optim.learning_rate = 3e-3
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 100
  c.train.num_steps = 1200  # 77k images, 3.8 epochs.
  c.train.eval_every = 600
  c.train.checkpoint_every = 600
  c.train.log_every = 100
  c.train.best_metric = "miou"
  return c
