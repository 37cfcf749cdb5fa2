"""Oxford-IIIT Pet trimaps (pet / background / border) with FCN-8s over ResNet-50 or VGG-16.

    python -m vision_jax.main --config=configs/pets_fcn.py:resnet50 --workdir=runs/pets_fcn8s

GPU-sized (not measured here). TFDS downloads `oxford_iiit_pet` on the first run. Its mask
feature is `segmentation_mask` with values 1 = pet, 2 = background, 3 = border; `label_map`
turns them into classes 1, 0, 2. Images vary in size: training takes random 0.5-2x scales and
256x256 crops with flips, evaluation resizes the shorter side to 256 and takes the centre (so
the mIoU is of that centre crop). The argument is the backbone: resnet50 (ImageNet stem,
stages at strides 8/16/32) or vgg16 (the paper's, with fc6/fc7 as 7x7 and 1x1 convolutions of
width 4096). ImageNet weights help a lot: convert torchvision's (`vision_jax.tools.torch_import`)
and pass `--config.model.init_from=DIR`; backbone parameters load under the FCN's `backbone/`.
"""

from vision_jax.config import base_config
from vision_jax.errors import UserError
from vision_jax.models import info

_BACKBONES = ("resnet50", "vgg16")


def get_config(backbone: str = "resnet50"):
  if backbone not in _BACKBONES:
    raise UserError(f"Unknown backbone {backbone!r}; valid choices: {list(_BACKBONES)}")
  c = base_config()
  c.task = "segmentation"
  c.dataset.name = "oxford_iiit_pet"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"
  c.input.image_size = 256
  c.input.train_crop = "random_scale"
  c.input.scale_range = (0.5, 2.0)
  c.input.mean, c.input.std = info.IMAGENET_MEAN, info.IMAGENET_STD
  c.input.batch_size = 32
  c.input.eval_batch_size = 64
  c.input.num_workers = 8  # JPEG decoding and resizing need processes.
  c.input.prefetch = 4
  c.model.name = backbone
  c.model.dtype = "bfloat16"
  c.segmentation.variant = "8s"
  c.segmentation.class_names = ("background", "pet", "border")
  c.segmentation.mask_key = "segmentation_mask"
  c.segmentation.label_map = (-1, 1, 0, 2)  # Raw 1 pet, 2 background, 3 border; 0 unused.
  if backbone == "vgg16":
    c.segmentation.head_width = 4096  # The paper's fc6 (7x7) and fc7 as convolutions.
    c.segmentation.head_kernel = 7
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 500
  c.optim.grad_clip_norm = 1.0
  c.train.num_epochs = 60  # 3,680 training images: 115 steps per epoch.
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  c.train.best_metric = "miou"
  return c
