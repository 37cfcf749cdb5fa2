"""TFDS builder for Fashion-MNIST read from local IDX files (no download, no checksums).

TFDS's own `fashion_mnist` checks the download's checksums, which Debian's recompressed copy
(package `dataset-fashion-mnist`) fails; this builder parses the IDX files itself, gzipped or not.
"""

import gzip
import os
import zlib

import numpy as np
import tensorflow_datasets as tfds

from vision_jax import errors
from vision_jax.data.builders import png

DEFAULT_MANUAL_DIR = "/usr/share/datasets/fashion-mnist"
CLASS_NAMES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
               "Sneaker", "Bag", "Ankle boot")
# Split -> (images file, labels file), each found with or without a ".gz" suffix.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

_REINSTALL = ("download it again, or reinstall the package: "
              "apt-get install --reinstall dataset-fashion-mnist.")
# IDX type byte -> element type; IDX data is big-endian.
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Reads one IDX file (the MNIST format), plain or gzip-compressed.

  The header is two zero bytes, a type byte, the number of dimensions, then each dimension as a
  big-endian uint32; the data follows, big-endian, row-major.

  Args:
    path: the file; gzip is recognised by its magic bytes, not by the name.

  Returns:
    An array of the header's shape, in native byte order (uint8 for Fashion-MNIST).

  Raises:
    errors.UserError: naming the file when it is damaged: a truncated or corrupt gzip stream, a
      bad header, or a data size that does not match the header.
  """
  with open(path, "rb") as f:
    raw = f.read()
  if raw[:2] == b"\x1f\x8b":
    try:
      raw = gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as error:
      raise errors.UserError(f"{path} is damaged ({error}); {_REINSTALL}") from error
  if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
    raise errors.UserError(f"{path} is damaged: not an IDX file (header {raw[:4].hex()}); "
                           f"{_REINSTALL}")
  dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
  shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
  offset = 4 + 4 * ndim
  expected = int(np.prod(shape)) * dtype.itemsize
  if len(raw) - offset != expected:
    raise errors.UserError(f"{path} is damaged: its header says {shape} x {dtype.itemsize} B = "
                           f"{expected} B of data, it has {len(raw) - offset} B; {_REINSTALL}")
  return np.frombuffer(raw, dtype, offset=offset).reshape(shape).astype(dtype.newbyteorder("="))


def find_files(directory: str | os.PathLike) -> dict[str, tuple[str, str]]:
  """Locates the four IDX files in `directory`, preferring uncompressed copies.

  Args:
    directory: where the files should be (a manual_dir).

  Returns:
    Split -> (images path, labels path).

  Raises:
    errors.MissingFileError: naming the directory and every missing file.
  """
  found, missing = {}, []
  for split, names in FILES.items():
    paths = []
    for name in names:
      candidates = [os.path.join(directory, name + ext) for ext in ("", ".gz")]
      existing = [p for p in candidates if os.path.isfile(p)]
      if existing:
        paths.append(existing[0])
      else:
        missing.append(f"{name}[.gz]")
    found[split] = tuple(paths)
  if missing:
    state = "is missing" if os.path.isdir(directory) else "does not exist, so it lacks"
    raise errors.MissingFileError(
        f"Fashion-MNIST directory {os.fspath(directory)!r} {state}: {', '.join(missing)}. "
        + FashionMnistLocal.MANUAL_DOWNLOAD_INSTRUCTIONS)
  return found


class FashionMnistLocal(tfds.core.GeneratorBasedBuilder):
  """Fashion-MNIST (28x28 grey clothing images, 10 classes) from local IDX files."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "Images stored as PNGs encoded with PIL, so preparing needs no TensorFlow (the "
               "same examples, pixel for pixel).",
  }
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Put the Fashion-MNIST IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
      "t10k-images-idx3-ubyte and t10k-labels-idx1-ubyte (each optionally .gz) in one directory "
      "and pass it as tfds.download.DownloadConfig(manual_dir=...). Without a manual_dir the "
      f"builder reads {DEFAULT_MANUAL_DIR}, where Debian's `apt install dataset-fashion-mnist` "
      "puts them; the originals are at https://github.com/zalandoresearch/fashion-mnist.")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Fashion-MNIST: 70,000 28x28 greyscale images of 10 clothing classes.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(names=CLASS_NAMES),
        }),
        supervised_keys=("image", "label"),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def download_and_prepare(self, *, download_config=None, **kwargs):
    """As `tfds.core.DatasetBuilder.download_and_prepare`, with Debian's manual_dir by default.

    Raises:
      FileNotFoundError: naming the directory and the missing files, when the dataset is not
        prepared yet and the manual directory lacks some of them.
    """
    download_config = download_config or tfds.download.DownloadConfig()
    if download_config.manual_dir is None:
      download_config = download_config.replace(manual_dir=DEFAULT_MANUAL_DIR)
    if not self.is_prepared():
      # Checked here because TFDS's `dl_manager.manual_dir` only asserts "does not exist or is
      # empty", without naming the missing files.
      find_files(download_config.manual_dir)
    super().download_and_prepare(download_config=download_config, **kwargs)

  def _split_generators(self, dl_manager):
    files = find_files(dl_manager.manual_dir)
    return {split: self._generate_examples(*paths) for split, paths in files.items()}

  def _generate_examples(self, images_path: str, labels_path: str):
    images, labels = read_idx(images_path), read_idx(labels_path)  # (N, 28, 28), (N,)
    if images.shape[1:] != (28, 28) or images.shape[0] != labels.shape[0]:
      raise errors.UserError(f"{images_path} {images.shape} and {labels_path} {labels.shape} do "
                             f"not hold matching 28x28 images and labels; {_REINSTALL}")
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": png.encode(image[..., None]), "label": int(label)}  # (28, 28, 1)
