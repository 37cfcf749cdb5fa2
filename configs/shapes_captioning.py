"""Show, Attend and Tell on the embedded shapes dataset: captions that depend on what is where.

    python -m vision_jax.main --config=configs/shapes_captioning.py --workdir=runs/shapes_caption
    python -m vision_jax.main --config=configs/shapes_captioning.py:show_and_tell --workdir=...

A small CNN encodes each 32x32 scene into an 8x8 grid; an LSTM with soft attention over it (and
each cell's position) writes "a large red square right of a small cyan circle". No flips or
crops: they would make "left"/"right" captions wrong. The argument picks `attention` (default)
or `show_and_tell` (one pooled vector, no attention).
"""

from vision_jax import recipes
from vision_jax.config import base_config


def get_config(variant: str = "attention"):
  c = base_config()
  recipes.small_captioner(c, variant)
  c.dataset.name = "synthetic_shapes/size32"
  c.input.batch_size = 128
  c.input.eval_batch_size = 512
  c.model.kwargs.feature = "conv2"  # (B, 8, 8, 64) at 32x32.
  # The backbone's unused 1-class classifier, so that this config's checkpoints trained before
  # backbones could be headless still load (Captioner.backbone_classes); new work can drop it.
  c.model.kwargs.backbone_classes = 1
  c.captioning.max_length = 24
  c.train.num_epochs = 8
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  return c
