"""TFDS builder for `synthetic_shapes`: rendered scenes, nothing to download.

One dataset serves classification (`label`), semantic segmentation (`mask`), detection
(`objects`) and captioning (`caption`); see `shapes_render` for what a scene contains.

    import tensorflow_datasets as tfds
    from vision_jax.data import builders  # Registers the builder with TFDS.
    tfds.builder("synthetic_shapes/size32", data_dir=d).download_and_prepare(
        file_format="array_record")  # No TF: images and masks are PNGs encoded with PIL.
    train = tfds.data_source("synthetic_shapes/size32", data_dir=d, split="train")  # No TF.
    train[0]  # {'image': (32, 32, 3) uint8, 'label': int, 'mask': (32, 32, 1) uint8,
              #  'objects': {'bbox': N arrays (4,) float32, 'label': N np.int64},
              #  'caption': bytes}

Sequence features decode to per-object lists: `np.stack(ex["objects"]["bbox"])` gives (N, 4).
Example i of a split is rendered from the seed (split seed, i) alone, so the data is the same on
every machine, and a config with fewer examples holds exactly the first examples of the full one
(TFDS shuffles the stored order, deterministically). For a small build (tests, smoke runs) pass
a custom config; it is stored in its own directory, next to size32 and size64:

    config = SyntheticShapesConfig(name="tiny32", size=32, num_examples={"train": 64, "test": 16})
    SyntheticShapes(config=config, data_dir=d).download_and_prepare(file_format="array_record")
"""

import dataclasses

import numpy as np
import tensorflow_datasets as tfds

from vision_jax.data.builders import png, shapes_render

NUM_EXAMPLES = {"train": 20_000, "test": 2_000}
# One fixed seed per split; never change them, or "synthetic_shapes" changes meaning.
_SPLIT_SEEDS = {"train": 20240101, "test": 20240102}


@dataclasses.dataclass(eq=False)
class SyntheticShapesConfig(tfds.core.BuilderConfig):
  """Image size and examples per split of one `synthetic_shapes` variant.

  Attributes:
    size: image height and width in pixels.
    num_examples: split name ("train" or "test") -> number of examples to render.
  """
  size: int = 32
  num_examples: dict[str, int] = dataclasses.field(default_factory=lambda: dict(NUM_EXAMPLES))


class SyntheticShapes(tfds.core.GeneratorBasedBuilder):
  """Textured scenes of 1–3 coloured shapes, labelled by the largest one."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {
      "1.0.0": "Initial release.",
      "1.1.0": "Images and masks stored as PNGs encoded with PIL, so preparing needs no "
               "TensorFlow (the same examples, pixel for pixel).",
  }
  BUILDER_CONFIGS = [
      SyntheticShapesConfig(name="size32", size=32, description="32x32 images."),
      SyntheticShapesConfig(name="size64", size=64, description="64x64 images."),
  ]
  DEFAULT_CONFIG_NAME = "size32"

  def _info(self) -> tfds.core.DatasetInfo:
    s = self.builder_config.size
    return self.dataset_info_from_configs(
        description=(
            "Synthetic scenes: a large main object (its shape is `label`) and up to two smaller "
            "distractors of random shape, colour, size and rotation on a textured background. "
            "`mask` is per-pixel 0 = background, 1 + shape index; `objects` holds each visible "
            "object's tight box and shape, the main object first; `caption` names the main "
            "object's colour and shape and where it is relative to the others."),
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(s, s, 3)),
            "label": tfds.features.ClassLabel(names=shapes_render.SHAPES),
            # PNG like the image: lossless, small, and decoded without TensorFlow.
            "mask": tfds.features.Image(shape=(s, s, 1)),
            "objects": tfds.features.Sequence({
                "bbox": tfds.features.BBoxFeature(),
                "label": tfds.features.ClassLabel(names=shapes_render.SHAPES),
            }),
            "caption": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is rendered; nothing to download.
    unknown = set(self.builder_config.num_examples) - set(_SPLIT_SEEDS)
    if unknown:
      raise ValueError(f"num_examples names unknown splits {sorted(unknown)}; valid splits: "
                       f"{sorted(_SPLIT_SEEDS)}")
    return {split: self._generate_examples(split, n)
            for split, n in self.builder_config.num_examples.items()}

  def _generate_examples(self, split: str, num_examples: int):
    for i in range(num_examples):
      yield i, png.encode_images(make_example(split, i, self.builder_config.size),
                                 ("image", "mask"))


def make_example(split: str, index: int, size: int) -> dict:
  """Renders one example as this dataset's features, before they are encoded as PNGs.

  Args:
    split: "train" or "test"; each has its own seed.
    index: position in the split; with the split's seed it fixes the scene.
    size: image height and width in pixels.

  Returns:
    A dict with image (size, size, 3) uint8, label int, mask (size, size, 1) uint8,
    objects {bbox (N, 4) float32, label (N,) int64} with the main object first, caption str.
  """
  scene = shapes_render.render_scene(np.random.default_rng([_SPLIT_SEEDS[split], index]), size)
  return {
      "image": scene["image"],
      "label": scene["label"],
      "mask": scene["mask"][..., None],  # (H, W, 1)
      "objects": {"bbox": scene["boxes"], "label": scene["box_labels"]},
      "caption": scene["caption"],
  }
