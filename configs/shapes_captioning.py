"""Show, Attend and Tell on the embedded shapes dataset: captions that depend on what is where.

    python -m vision_jax.main --config=configs/shapes_captioning.py --workdir=runs/shapes_caption
    python -m vision_jax.main --config=configs/shapes_captioning.py:show_and_tell --workdir=...

A small CNN encodes each 32x32 scene into an 8x8 grid; an LSTM with soft attention over it (and
each cell's position) writes "a large red square right of a small cyan circle". No flips or
crops: they would make "left"/"right" captions wrong. The argument picks `attention` (default)
or `show_and_tell` (one pooled vector, no attention).
"""

from vision_jax.config import base_config


def get_config(variant: str = "attention"):
  if variant not in ("attention", "show_and_tell"):
    raise ValueError(f"Unknown variant {variant!r}; valid choices: ['attention', "
                     "'show_and_tell']")
  c = base_config()
  c.task = "captioning"
  c.dataset.name = "synthetic_shapes/size32"
  c.dataset.in_memory = True
  c.input.batch_size = 128
  c.input.eval_batch_size = 512
  c.input.crop_padding = 0
  c.input.random_flip = False
  c.model.name = "simple_cnn"  # The encoder backbone.
  c.model.kwargs.feature = "conv2"  # (B, 8, 8, 64) at 32x32.
  c.model.kwargs.embed_dim = 64
  c.model.kwargs.hidden_dim = 256
  c.model.kwargs.attention_dim = 128
  c.model.kwargs.attention = variant == "attention"
  c.optim.name = "adamw"
  c.optim.learning_rate = 3e-3
  c.optim.weight_decay = 1e-4
  c.optim.warmup_steps = 200
  c.optim.grad_clip_norm = 1.0
  c.captioning.max_length = 24
  c.captioning.eval_examples = 1000
  c.train.num_epochs = 8
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  c.train.best_metric = "bleu4"
  return c
