"""Faster R-CNN on the embedded synthetic shapes (64x64): the detection acceptance run, on a CPU.

    python -m vision_jax.main --config=configs/shapes_detection.py --workdir=runs/shapes_detection

Six classes (the shapes; every object of a scene has a box, 1-3 per image, 2-11% of the image
area, i.e. about 9-30 px a side). A compact VGG-11-BN backbone (widths 16, 32, 64); the neck
merges its stride-8 stage into its stride-4 stage, so the RPN and RoIAlign read one 16x16 map.
Stages 4 and 5 are not read (they still run, for their BatchNorm statistics), so they are
kept narrow.
Anchors of 8, 16 and 32 px at three aspect ratios. Horizontal flips move the boxes with the
images. Eval reports COCO-style mAP@[.5:.95], mAP@.5 and mAP@.75 over the 2,000 test images;
pictures (ground truth | predictions) go to workdir/detection/.
"""

from vision_jax.config import base_config
from vision_jax.data.builders import shapes_render


def get_config():
  c = base_config()
  c.task = "detection"
  c.dataset.name = "synthetic_shapes/size64"
  c.dataset.in_memory = True
  c.input.image_size = 64
  c.input.crop_padding = 0  # Flips only: crops would move pixels but not boxes.
  c.input.batch_size = 32
  c.input.eval_batch_size = 200
  c.model.name = "vgg11_bn"
  c.model.kwargs.widths = (16, 32, 64, 16, 16)
  d = c.detection
  d.class_names = shapes_render.SHAPES
  d.max_boxes = 4  # At most 3 objects per scene.
  d.feature_strides = (4, 8)
  d.feature_width = 64
  d.anchor_sizes = (8.0, 16.0, 32.0)
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
  c.train.num_steps = 600  # 19k images, about one epoch.
  c.train.eval_every = 300
  c.train.checkpoint_every = 300
  c.train.log_every = 50
  c.train.best_metric = "map50"
  return c
