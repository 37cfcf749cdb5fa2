"""Show, Attend and Tell on scenes of real Fashion-MNIST garments: "a dress left of a bag".

    python -m vision_jax.main --config=configs/fashion_scenes_captioning.py --workdir=runs/fs_caption

`fashion_scenes/size64` is built once from /usr/share/datasets/fashion-mnist (set
--config.dataset.manual_dir elsewhere): 64x64 grey canvases with 1-3 garments, each caption
naming the garment with the most visible pixels and where it is relative to the others (see
`vision_jax.data.builders.fashion_scenes.caption`). A small CNN encodes each scene into an 8x8
grid that an LSTM with soft attention reads. No flips or crops: they would make "left of" wrong.
The argument picks `attention` (default) or `show_and_tell`.
"""

from vision_jax import recipes
from vision_jax.config import base_config


def get_config(variant: str = "attention"):
  c = base_config()
  recipes.small_captioner(c, variant)
  c.dataset.name = "fashion_scenes/size64"
  c.dataset.manual_dir = "/usr/share/datasets/fashion-mnist"
  c.input.image_size = 64
  c.input.mean = (0.366,)
  c.input.std = (0.218,)
  c.input.batch_size = 128
  c.input.eval_batch_size = 512
  c.model.kwargs.features = (32, 64, 64)  # SimpleCNN's convolutions (a backbone field).
  c.model.kwargs.feature = "conv3"  # (B, 8, 8, 64) at 64x64.
  # The backbone's unused 1-class classifier, so that this config's checkpoints trained before
  # backbones could be headless still load (Captioner.backbone_classes); new work can drop it.
  c.model.kwargs.backbone_classes = 1
  c.captioning.max_length = 16
  c.train.num_steps = 1000  # 128k scenes, 6.4 epochs.
  c.train.eval_every = 500
  c.train.checkpoint_every = 500
  return c
