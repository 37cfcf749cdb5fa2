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

from vision_jax import recipes
from vision_jax.config import base_config
from vision_jax.data.builders import shapes_render


def get_config():
  c = base_config()
  recipes.small_detector(c)
  c.dataset.name = "synthetic_shapes/size64"
  c.detection.class_names = shapes_render.SHAPES
  c.detection.anchor_sizes = (8.0, 16.0, 32.0)
  c.train.num_steps = 600  # 19k images, about one epoch.
  c.train.eval_every = 300
  c.train.checkpoint_every = 300
  return c
