"""Real images to look at, all available offline: a photograph, Fashion-MNIST, a shapes scene.

`load(source)` returns uint8 (H, W) greyscale or (H, W, 3) RGB:
  photo          Grace Hopper's portrait (512 x 600), bundled with matplotlib as sample data.
  fashion_mnist  one 28 x 28 test image from the local IDX files (Debian's
                 `dataset-fashion-mnist` puts them in /usr/share/datasets/fashion-mnist).
  shapes         one scene of the project's synthetic shapes dataset, rendered on the fly.
"""

import matplotlib.cbook
import numpy as np
from PIL import Image

from vision_jax import errors
from vision_jax.data.builders import fashion_mnist_local, shapes_render

SOURCES = ("photo", "fashion_mnist", "shapes")


def photo(gray: bool = True, size: int | None = None) -> np.ndarray:
  """Grace Hopper, (H, W) or (H, W, 3) uint8; `size` resizes the shorter side."""
  path = matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)
  image = Image.open(path).convert("L" if gray else "RGB")
  if size is not None:
    scale = size / min(image.size)
    image = image.resize((round(image.width * scale), round(image.height * scale)),
                         Image.BILINEAR)
  return np.asarray(image)


def fashion_mnist(index: int = 0,
                  directory: str = fashion_mnist_local.DEFAULT_MANUAL_DIR) -> np.ndarray:
  """The `index`-th Fashion-MNIST test image, (28, 28) uint8."""
  images_path, _ = fashion_mnist_local.find_files(directory)["test"]
  return fashion_mnist_local.read_idx(images_path)[index]


def shapes(seed: int = 0, size: int = 64) -> np.ndarray:
  """A synthetic shapes scene, (size, size, 3) uint8."""
  return shapes_render.render_scene(np.random.default_rng(seed), size)["image"]


def load(source: str, gray: bool = True, index: int = 0, size: int = 128) -> np.ndarray:
  """One image by source name (see the module docstring).

  Args:
    source: one of `SOURCES`.
    gray: convert to greyscale (H, W).
    index: the Fashion-MNIST item, or the shapes scene's seed.
    size: the photo's shorter side in pixels (small keeps the pictures' PNGs small).

  Raises:
    ValueError: for an unknown source, naming the valid ones.
  """
  if source == "photo":
    image = photo(gray=gray, size=size)
  elif source == "fashion_mnist":
    image = fashion_mnist(index)
  elif source == "shapes":
    image = shapes(seed=index)
  else:
    raise errors.UserError(f"Unknown image source {source!r}; valid choices: {list(SOURCES)}")
  if gray and image.ndim == 3:
    image = np.asarray(Image.fromarray(image).convert("L"))
  return image
