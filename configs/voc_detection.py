"""Faster R-CNN on PASCAL VOC 2007 (TFDS `voc/2007`, 20 classes), VGG-16 backbone: GPU-sized.

    python -m vision_jax.main --config=configs/voc_detection.py --workdir=runs/voc_frcnn

The paper's VOC 2007 setting, approximately: VGG-16 (conv5 at stride 16, merged with conv4 at
stride 8 by the neck), images letterboxed to 512 px, trained on trainval, evaluated on test.
Reports COCO-style mAP and mAP@.5 (VOC's own metric is 11-point AP@.5 with "difficult" boxes
ignored; here difficult boxes count as ordinary ground truth). Start the backbone from
ImageNet weights with `--config.model.init_from=DIR`. Unmeasured here (no GPU); the tests run
it on `tfds.testing.mock_data`.
"""

from vision_jax.config import base_config
from vision_jax.models import info

# TFDS voc/2007's `objects/label` names, in their order.
CLASS_NAMES = ("aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair",
               "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")


def get_config():
  c = base_config()
  c.task = "detection"
  c.dataset.name = "voc/2007"
  c.dataset.train_split = "train+validation"
  c.dataset.eval_split = "test"
  c.input.image_size = 512
  c.input.crop_padding = 0  # Flips only.
  c.input.mean, c.input.std = info.IMAGENET_MEAN, info.IMAGENET_STD
  c.input.batch_size = 8
  c.input.eval_batch_size = 8
  c.input.num_workers = 4
  c.model.name = "vgg16"
  c.model.dtype = "bfloat16"
  d = c.detection
  d.class_names = CLASS_NAMES
  d.max_boxes = 50
  d.feature_strides = (8, 16)
  d.feature_width = 512
  d.anchor_sizes = (32.0, 64.0, 128.0, 256.0, 512.0)
  d.anchor_ratios = (0.5, 1.0, 2.0)
  d.rpn_pre_nms_train = 2000
  d.rpn_post_nms_train = 512
  d.rpn_pre_nms_test = 1000
  d.rpn_post_nms_test = 300
  d.roi_batch_size = 128
  d.head_width = 1024
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.01
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 5e-4
  c.optim.warmup_steps = 500
  c.train.num_epochs = 16
  c.train.eval_every = 5000
  c.train.checkpoint_every = 2500
  c.train.best_metric = "map50"
  return c
