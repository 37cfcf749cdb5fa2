"""Show, Attend and Tell on COCO captions (TFDS `coco_captions`), ResNet-50 encoder: GPU-sized.

    python -m vision_jax.main --config=configs/coco_captioning.py --workdir=runs/coco_sat

Training captions come from the first reference of each image, eval scores against all five.
Words seen fewer than 5 times become <unk>. Unmeasured here (no GPU was lent).
"""

from vision_jax.config import base_config
from vision_jax.models import info


def get_config():
  c = base_config()
  c.task = "captioning"
  c.dataset.name = "coco_captions"
  c.dataset.train_split = "train"
  c.dataset.eval_split = "val"
  c.input.image_size = 224
  c.input.crop_padding = 0
  c.input.random_flip = False  # "left of" would become wrong.
  c.input.mean, c.input.std = info.IMAGENET_MEAN, info.IMAGENET_STD
  c.input.batch_size = 128
  c.input.eval_batch_size = 256
  c.input.num_workers = 8
  c.model.name = "resnet50"
  c.model.dtype = "bfloat16"
  c.model.kwargs.feature = "stage4"  # (B, 7, 7, 2048) at 224x224.
  # The backbone's unused 1-class classifier, so that this config's checkpoints trained before
  # backbones could be headless still load (Captioner.backbone_classes); new work can drop it.
  c.model.kwargs.backbone_classes = 1
  c.model.kwargs.embed_dim = 512
  c.model.kwargs.hidden_dim = 512
  c.model.kwargs.attention_dim = 512
  c.model.kwargs.dropout_rate = 0.5
  c.optim.name = "adamw"
  c.optim.learning_rate = 4e-4
  c.optim.warmup_steps = 1000
  c.optim.grad_clip_norm = 5.0
  c.captioning.caption_key = "captions/text"
  c.captioning.min_count = 5
  c.captioning.max_length = 22
  c.captioning.eval_examples = 5000
  c.train.num_epochs = 20
  c.train.eval_every = 5000
  c.train.checkpoint_every = 2500
  c.train.best_metric = "cider"
  return c
