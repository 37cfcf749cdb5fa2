"""Recipe pieces that experiment configs share (big_vision's `configs/common.py`).

Configs in `configs/` start from `config.base_config()` and call these to set the standard
preprocessing and optimiser of a dataset family, so the numbers of a published recipe are
written once.
"""

import math

import ml_collections

from vision_jax import models
from vision_jax.errors import UserError
from vision_jax.models import info

# ImageNet recipes by model family (`ModelInfo.family`): global batch size, SGD learning rate per
# 256 images, weight decay, epochs. AlexNet and VGG as their papers trained them (0.01, decay
# 5e-4), GoogLeNet and ResNet with the large-batch recipe of Goyal et al. (0.1 per 256 images,
# 5 warmup epochs).
_FAMILY_RECIPES = {
    "alexnet": (256, 0.01, 5e-4, 90),
    "zfnet": (256, 0.01, 5e-4, 90),
    "vgg": (256, 0.01, 5e-4, 74),
    "googlenet": (1024, 0.1, 1e-4, 90),
    "resnet": (1024, 0.1, 1e-4, 90),
}


def _family(model: str) -> str:
  """The family whose ImageNet recipe `model` takes: its record's; for a model registered
  without a record, the family its name starts with (e.g. a user's "resnet_se")."""
  record = models.model_info(model)
  if record is not None:
    family = record.family
  else:
    family = next((f for f in _FAMILY_RECIPES if model.startswith(f)), None)
  if family not in _FAMILY_RECIPES:
    choices = [name for name, i in models.MODEL_INFO.items() if i.family in _FAMILY_RECIPES]
    of_family = f" (family {family!r})" if record is not None else ""
    raise UserError(f"No ImageNet recipe for model {model!r}{of_family}; valid choices: "
                    f"{choices}, or a model of your own whose name starts with a family: "
                    f"{sorted(_FAMILY_RECIPES)}.")
  return family


def fashion_mnist(c: ml_collections.ConfigDict, batch_size: int) -> None:
  """Real Fashion-MNIST from Debian's dataset-fashion-mnist files, decoded into memory (55 MB),
  normalised with its statistics, evaluated 1000 images at a time."""
  c.dataset.name = "fashion_mnist_local"
  c.dataset.manual_dir = "/usr/share/datasets/fashion-mnist"
  c.dataset.in_memory = True
  c.input.batch_size = batch_size
  c.input.eval_batch_size = 1000
  c.input.mean, c.input.std = info.FASHION_MNIST_MEAN, info.FASHION_MNIST_STD


def inception_crop_input(c: ml_collections.ConfigDict, image_size: int = 224) -> None:
  """Random-resized-crop training and resize + centre-crop (0.875) evaluation at `image_size`."""
  c.input.image_size = image_size
  c.input.train_crop = "random_resized"
  c.input.center_crop_fraction = 0.875  # 256 → 224.
  c.input.random_flip = True
  c.input.mean, c.input.std = info.IMAGENET_MEAN, info.IMAGENET_STD
  c.input.num_workers = 8  # JPEG decoding and resizing need processes, not threads.
  c.input.prefetch = 4


def large_scale_classification(c: ml_collections.ConfigDict, model: str,
                               num_train_examples: int) -> None:
  """The ImageNet recipe of `model`'s family: input, SGD + Nesterov, warmup + cosine, bf16.

  Args:
    c: a config from `base_config()`, changed in place.
    model: a registry name of the families alexnet, zfnet, vgg, googlenet, resnet.
    num_train_examples: training-set size, for the warmup length (5 epochs where warmed up).
  """
  batch_size, lr_per_256, weight_decay, epochs = _FAMILY_RECIPES[_family(model)]
  inception_crop_input(c)
  c.input.batch_size = batch_size
  c.input.eval_batch_size = 1024
  c.model.name = model
  c.model.dtype = "bfloat16"
  c.optim.name = "sgd"
  c.optim.learning_rate = lr_per_256 * batch_size / 256
  c.optim.momentum = 0.9
  c.optim.nesterov = True
  c.optim.weight_decay = weight_decay
  c.optim.schedule = "cosine"
  warmup_epochs = 5 if batch_size > 256 else 0
  c.optim.warmup_steps = math.ceil(warmup_epochs * num_train_examples / batch_size)
  c.train.num_epochs = epochs
  c.train.label_smoothing = 0.1
  c.train.log_every = 100
  c.train.eval_every = 5000
  c.train.checkpoint_every = 2500


def small_captioner(c: ml_collections.ConfigDict, variant: str) -> None:
  """A small CPU-sized captioner: task, SimpleCNN encoder, LSTM decoder, AdamW, no geometric
  augmentation (flips and crops would make "left of" captions wrong), BLEU-4 as the best metric.

  Args:
    c: the config to set (the dataset, image size and encoder stage stay the caller's).
    variant: "attention" (Show, Attend and Tell) or "show_and_tell" (one pooled vector).

  Raises:
    UserError: for another variant.
  """
  if variant not in ("attention", "show_and_tell"):
    raise UserError(f"Unknown variant {variant!r}; valid choices: ['attention', "
                    "'show_and_tell']")
  c.task = "captioning"
  c.dataset.in_memory = True
  c.input.crop_padding = 0
  c.input.random_flip = False
  c.model.name = "simple_cnn"  # The encoder backbone.
  c.model.kwargs.embed_dim = 64
  c.model.kwargs.hidden_dim = 256
  c.model.kwargs.attention_dim = 128
  c.model.kwargs.attention = variant == "attention"
  c.optim.name = "adamw"
  c.optim.learning_rate = 3e-3
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 200
  c.optim.grad_clip_norm = 1.0
  c.captioning.eval_examples = 1000
  c.train.best_metric = "bleu4"


def small_detector(c: ml_collections.ConfigDict) -> None:
  """A CPU-sized Faster R-CNN for 64x64 scenes of up to 3 objects: letterbox to 64, flips only
  (objects fill the small scenes: crops would cut them), a narrow VGG-11-BN read at strides 4
  and 8, a small RPN and box head, AdamW, mAP@.5 as the best metric. The caller sets the
  dataset, the anchor sizes and the schedule."""
  c.task = "detection"
  c.dataset.in_memory = True
  c.input.image_size = 64
  c.input.crop_padding = 0
  c.input.batch_size = 32
  c.input.eval_batch_size = 200
  c.model.name = "vgg11_bn"
  c.model.kwargs.widths = (16, 32, 64, 16, 16)  # Stages 4 and 5 are not read: narrow.
  d = c.detection
  d.max_boxes = 4  # At most 3 objects per scene.
  d.feature_strides = (4, 8)
  d.feature_width = 64
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
  c.train.log_every = 50
  c.train.best_metric = "map50"
