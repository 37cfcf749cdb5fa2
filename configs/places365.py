"""Places365-Standard scene classification (365 classes, 1.8M images at 256×256).

    python -m vision_jax.main --config=configs/places365.py:resnet50 --workdir=runs/places_rn50

TFDS `places365_small` downloads the 256×256 release (about 24 GB) on first use. The model
argument and its recipe work as in `configs/imagenet.py`.
"""

from vision_jax import recipes
from vision_jax.config import base_config


def get_config(model: str = "resnet50"):
  c = base_config()
  c.dataset.name = "places365_small"
  c.dataset.eval_split = "validation"
  recipes.large_scale_classification(c, model, num_train_examples=1_803_460)
  return c
