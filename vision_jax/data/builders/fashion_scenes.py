"""TFDS builder for `fashion_scenes`: real Fashion-MNIST garments placed on textured canvases.

A segmentation, detection and captioning dataset made locally from the Fashion-MNIST IDX files (see `fashion_mnist_local`;
no download): each scene is a greyscale canvas (64x64 by default) with a smooth, noisy
background and 1-3 garments at random sizes and places, later ones on top. `mask` is per pixel
0 = background, 1 + the garment's Fashion-MNIST class (so 11 classes, `CLASS_NAMES`); a
garment's pixels are its silhouette: the item's pixels above `THRESHOLD` with holes filled.
Train scenes use Fashion-MNIST's train images, test scenes its test images.

    import tensorflow_datasets as tfds
    from vision_jax.data import builders  # Registers the builder with TFDS.
    tfds.builder("fashion_scenes/size64").download_and_prepare(file_format="array_record")
    train = tfds.data_source("fashion_scenes/size64", split="train")
    train[0]  # {'image': (64, 64, 1) uint8, 'mask': (64, 64, 1) uint8,
              #  'objects': {'bbox': N arrays (4,) float32, 'label': N np.int64},
              #  'caption': b'a dress left of a bag'}

Scene i of a split is drawn from the seed (split seed, i) alone, so the data is the same on
every machine. Small builds (tests) take a custom config, as `synthetic_shapes` does:

    config = FashionScenesConfig(name="tiny32", size=32, num_examples={"train": 64, "test": 16})
    FashionScenes(config=config, data_dir=d).download_and_prepare(
        file_format="array_record", download_config=tfds.download.DownloadConfig(manual_dir=m))
"""

import dataclasses

import numpy as np
from PIL import Image
from scipy import ndimage
import tensorflow_datasets as tfds

from vision_jax.data.builders import fashion_mnist_local, png, shapes_render

CLASS_NAMES = ("background",) + fashion_mnist_local.CLASS_NAMES
NUM_EXAMPLES = {"train": 20_000, "test": 2_000}
# One fixed seed per split; never change them, or "fashion_scenes" changes meaning.
_SPLIT_SEEDS = {"train": 20250301, "test": 20250302}
THRESHOLD = 10  # Item pixels above this (of 255) are garment; Fashion-MNIST's ground is ~0.
ITEM_SIZE = (0.35, 0.65)  # An item's side as a fraction of the canvas (28 px items → 22-42 px).
MIN_VISIBLE = 0.6  # Each garment keeps at least this fraction of its silhouette uncovered.
_ATTEMPTS = 20  # Placements tried per extra garment before the scene keeps fewer.
# The word(s) a caption uses for each Fashion-MNIST class (the tokenizer would split "T-shirt/top").
CAPTION_NAMES = ("top", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
                 "bag", "ankle boot")


@dataclasses.dataclass(eq=False)
class FashionScenesConfig(tfds.core.BuilderConfig):
  """Canvas size, garments per scene and examples per split of one `fashion_scenes` variant.

  Attributes:
    size: canvas height and width in pixels.
    max_items: garments per scene are uniform in [1, max_items].
    num_examples: split name ("train" or "test") -> number of scenes.
  """
  size: int = 64
  max_items: int = 3
  num_examples: dict[str, int] = dataclasses.field(default_factory=lambda: dict(NUM_EXAMPLES))


def silhouette(item: np.ndarray) -> np.ndarray:
  """The garment's pixels of a Fashion-MNIST item (H, W) uint8: above THRESHOLD, holes filled."""
  return ndimage.binary_fill_holes(item > THRESHOLD)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """A smooth grey field (3x3 to 5x5 control values, bicubic) plus pixel noise; (H, W) float."""
  k = int(rng.integers(3, 6))
  control = Image.fromarray(rng.uniform(0, 160, (k, k)).astype(np.float32))  # Mode "F".
  field = np.asarray(control.resize((size, size), Image.BICUBIC))
  return field + rng.normal(0, rng.uniform(2, 12), (size, size))


def render_scene(rng: np.random.Generator, items: np.ndarray, labels: np.ndarray, size: int,
                 max_items: int = 3) -> dict:
  """Draws one scene from a pool of Fashion-MNIST items.

  Args:
    rng: the scene's generator (everything random comes from it).
    items: (N, 28, 28) uint8 item images to pick from.
    labels: (N,) their classes.
    size: canvas side in pixels.
    max_items: garments are uniform in [1, max_items] (fewer if they do not fit).

  Returns:
    image (size, size) uint8; mask (size, size) uint8, 0 background, 1 + class;
    instances (size, size) uint8, 0 background, k for the k-th garment; boxes (n, 4) float32
    (ymin, xmin, ymax, xmax in [0, 1], tight around each garment's visible pixels); box_labels
    (n,) int64 classes; items (n,) int64 indices into `items`; caption str (see `caption`).
  """
  image = _background(rng, size)
  instances = np.zeros((size, size), np.uint8)
  areas, chosen = [], []
  for _ in range(int(rng.integers(1, max_items + 1))):
    for _ in range(_ATTEMPTS):
      index = int(rng.integers(len(items)))
      side = max(4, round(size * rng.uniform(*ITEM_SIZE)))
      pixels = np.asarray(Image.fromarray(items[index]).resize((side, side), Image.BILINEAR))
      shape = silhouette(pixels)  # (side, side) bool
      top, left = rng.integers(0, size - side + 1, size=2)
      trial = instances.copy()
      trial[top:top + side, left:left + side][shape] = len(chosen) + 1
      visible = np.bincount(trial.ravel(), minlength=len(chosen) + 2)[1:]  # (n + 1,)
      if shape.sum() and np.all(visible >= MIN_VISIBLE * np.array(areas + [shape.sum()])):
        instances = trial
        image[top:top + side, left:left + side][shape] = pixels[shape]
        areas.append(int(shape.sum()))
        chosen.append(index)
        break
  chosen = np.array(chosen, np.int64)
  box_labels = labels[chosen].astype(np.int64)
  boxes = np.zeros((len(chosen), 4), np.float32)
  for k in range(len(chosen)):
    rows, cols = np.nonzero(instances == k + 1)
    boxes[k] = np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]) / size
  lut = np.concatenate([[0], box_labels + 1]).astype(np.uint8)
  visible = np.bincount(instances.ravel(), minlength=len(chosen) + 1)[1:]  # (n,)
  return {"image": np.clip(np.round(image), 0, 255).astype(np.uint8), "mask": lut[instances],
          "instances": instances, "boxes": boxes, "box_labels": box_labels, "items": chosen,
          "caption": caption(boxes, box_labels, visible)}


def caption(boxes: np.ndarray, box_labels: np.ndarray, areas: np.ndarray) -> str:
  """Says which garments a scene holds and where, e.g. "a dress left of a bag and above a sandal".

  The main garment is the one with the most visible pixels. Alone, it gets its place by thirds
  of the canvas ("a coat in the top left"); otherwise it is related to each other garment by the
  dominant axis between the box centres, the others listed left to right (the wording of
  `synthetic_shapes`, with `CAPTION_NAMES` for the classes).

  Args:
    boxes: (n, 4) ymin, xmin, ymax, xmax in [0, 1] of the visible pixels.
    box_labels: (n,) Fashion-MNIST classes.
    areas: (n,) visible pixels of each garment.
  """
  places = [{"cx": (b[1] + b[3]) / 2, "cy": (b[0] + b[2]) / 2,
             "name": f"{shapes_render.article(CAPTION_NAMES[k])} {CAPTION_NAMES[k]}"}
            for b, k in zip(boxes, box_labels)]
  main = places.pop(int(np.argmax(areas)))
  if not places:
    return f"{main['name']} {shapes_render.position(main['cx'], main['cy'])}"
  return shapes_render.relate(main["name"], main, places)


class FashionScenes(tfds.core.GeneratorBasedBuilder):
  """Scenes of 1-3 real Fashion-MNIST garments on a textured canvas, with per-pixel classes."""

  VERSION = tfds.core.Version("1.2.0")
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "Adds `caption` (the same scenes: images, masks and boxes unchanged).",
                   "1.2.0": "Images and masks stored as PNGs encoded with PIL, so preparing "
                            "needs no TensorFlow (the same examples, pixel for pixel)."}
  BUILDER_CONFIGS = [FashionScenesConfig(name="size64", size=64, description="64x64 canvases.")]
  DEFAULT_CONFIG_NAME = "size64"
  MANUAL_DOWNLOAD_INSTRUCTIONS = fashion_mnist_local.FashionMnistLocal.MANUAL_DOWNLOAD_INSTRUCTIONS

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.size
    return self.dataset_info_from_configs(
        description=(
            "Fashion-MNIST garments (1-3, random sizes and places, later ones on top) on smooth "
            "noisy grey backgrounds. `mask` is per pixel 0 = background, 1 + the Fashion-MNIST "
            "class; `objects` holds each garment's tight box and class; `caption` says which "
            "garments are where, e.g. 'a dress left of a bag and above a sandal'."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(s, s, 1)),
            "mask": tfds.features.Image(shape=(s, s, 1)),
            "objects": tfds.features.Sequence({
                "bbox": tfds.features.BBoxFeature(),
                "label": tfds.features.ClassLabel(names=fashion_mnist_local.CLASS_NAMES),
            }),
            "caption": tfds.features.Text(),
        }),
        homepage="https://github.com/zalandoresearch/fashion-mnist",
    )

  def download_and_prepare(self, *, download_config=None, **kwargs):
    """As `tfds.core.DatasetBuilder.download_and_prepare`, reading Debian's Fashion-MNIST files
    by default (see `fashion_mnist_local.FashionMnistLocal.download_and_prepare`)."""
    download_config = download_config or tfds.download.DownloadConfig()
    if download_config.manual_dir is None:
      download_config = download_config.replace(
          manual_dir=fashion_mnist_local.DEFAULT_MANUAL_DIR)
    if not self.is_prepared():
      fashion_mnist_local.find_files(download_config.manual_dir)  # Names what is missing.
    super().download_and_prepare(download_config=download_config, **kwargs)

  def _split_generators(self, dl_manager):
    unknown = set(self.builder_config.num_examples) - set(_SPLIT_SEEDS)
    if unknown:
      raise ValueError(f"num_examples names unknown splits {sorted(unknown)}; valid splits: "
                       f"{sorted(_SPLIT_SEEDS)}")
    files = fashion_mnist_local.find_files(dl_manager.manual_dir)
    return {split: self._generate_examples(split, n, *files[split])
            for split, n in self.builder_config.num_examples.items()}

  def _generate_examples(self, split: str, num_examples: int, images_path: str,
                         labels_path: str):
    items = fashion_mnist_local.read_idx(images_path)  # (N, 28, 28)
    labels = fashion_mnist_local.read_idx(labels_path)  # (N,)
    for i in range(num_examples):
      yield i, png.encode_images(make_example(split, i, items, labels, self.builder_config),
                                 ("image", "mask"))


def make_example(split: str, index: int, items: np.ndarray, labels: np.ndarray,
                 config: FashionScenesConfig) -> dict:
  """Scene `index` of `split` as this dataset's features, before they are encoded as PNGs."""
  scene = render_scene(np.random.default_rng([_SPLIT_SEEDS[split], index]), items, labels,
                       config.size, config.max_items)
  return {"image": scene["image"][..., None], "mask": scene["mask"][..., None],  # (H, W, 1)
          "objects": {"bbox": scene["boxes"], "label": scene["box_labels"]},
          "caption": scene["caption"]}
