"""Faster R-CNN on COCO 2017 (TFDS `coco/2017`, 80 classes), ResNet-50 backbone: GPU-sized.

    python -m vision_jax.main --config=configs/coco_detection.py --workdir=runs/coco_frcnn

Images are letterboxed to 512 px (longer side; Detectron2 uses 800-1333). The neck merges
ResNet-50's stride-16 stage into its stride-8 stage; 15 anchors per cell (5 sizes x 3 ratios)
replace the FPN's levels. Crowd boxes are dropped from training and evaluation (COCO's
evaluation ignores detections on them instead). Start the backbone from ImageNet weights with
`--config.model.init_from=DIR` (see vision_jax.tools.torch_import). Unmeasured here (no GPU);
the tests run it on `tfds.testing.mock_data`.
"""

from vision_jax.config import base_config
from vision_jax.models import info

# COCO's 80 object categories in id order, the order of TFDS coco/2017's `objects/label`.
CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat",
    "traffic light", "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog",
    "horse", "sheep", "cow", "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella",
    "handbag", "tie", "suitcase", "frisbee", "skis", "snowboard", "sports ball", "kite",
    "baseball bat", "baseball glove", "skateboard", "surfboard", "tennis racket", "bottle",
    "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple", "sandwich",
    "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote",
    "keyboard", "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book",
    "clock", "vase", "scissors", "teddy bear", "hair drier", "toothbrush")


def get_config():
  c = base_config()
  c.task = "detection"
  c.dataset.name = "coco/2017"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "validation"
  c.input.image_size = 512
  c.input.crop_padding = 0  # Flips only.
  c.input.mean, c.input.std = info.IMAGENET_MEAN, info.IMAGENET_STD
  c.input.batch_size = 16
  c.input.eval_batch_size = 16
  c.input.num_workers = 8
  c.model.name = "resnet50"
  c.model.dtype = "bfloat16"
  d = c.detection
  d.class_names = CLASS_NAMES
  d.max_boxes = 100
  d.feature_strides = (8, 16)
  d.feature_width = 256
  d.anchor_sizes = (16.0, 32.0, 64.0, 128.0, 256.0)
  d.anchor_ratios = (0.5, 1.0, 2.0)
  d.rpn_pre_nms_train = 2000
  d.rpn_post_nms_train = 1000
  d.rpn_pre_nms_test = 1000
  d.rpn_post_nms_test = 1000
  d.roi_batch_size = 512
  d.head_width = 1024
  d.max_detections = 100
  c.optim.name = "sgd"
  c.optim.learning_rate = 0.02
  c.optim.momentum = 0.9
  c.optim.nesterov = False
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 1000
  c.train.num_epochs = 12  # Detectron2's 1x schedule is about 12.7 epochs at batch 16.
  c.train.eval_every = 10000
  c.train.checkpoint_every = 2500
  c.train.best_metric = "map"
  return c
