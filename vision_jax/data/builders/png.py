"""PNG encoding of our builders' image features, with PIL rather than TensorFlow.

TFDS encodes an image feature given as a numpy array with `tf.image.encode_png`, so a builder
that yields arrays needs TensorFlow to prepare. Our builders yield the PNG bytes made here
instead, which TFDS stores as they are; `tfds.data_source` decodes them with PIL (or OpenCV), so
preparing and reading both work without TensorFlow, and the pixels read back are the arrays
given (PNG is lossless).
"""

import io

import numpy as np
from PIL import Image

_CHANNELS = (1, 3, 4)  # Grey, RGB, RGBA: what `tfds.features.Image` stores as PNG.


def encode(image: np.ndarray) -> bytes:
  """Encodes one image as PNG bytes.

  Args:
    image: (H, W, C) uint8 with C in 1, 3 or 4 (grey, RGB, RGBA), as `tfds.features.Image`
      takes it.

  Returns:
    The PNG file's bytes; decoding them gives `image` back exactly.

  Raises:
    ValueError: for another dtype or shape (TFDS's own check, lost when it gets bytes).
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] not in _CHANNELS:
    raise ValueError(f"PNG images are (H, W, C) uint8 with C in {_CHANNELS}; got "
                     f"{image.shape} {image.dtype}.")
  pil_image = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)  # Mode L/RGB/RGBA.
  buffer = io.BytesIO()
  pil_image.save(buffer, format="PNG")
  return buffer.getvalue()


def encode_images(example: dict, keys: tuple[str, ...]) -> dict:
  """`example` with the images under `keys` replaced by their PNG bytes (a new dict)."""
  return {k: encode(v) if k in keys else v for k, v in example.items()}
