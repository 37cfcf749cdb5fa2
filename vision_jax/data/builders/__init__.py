"""The project's own TFDS datasets.

Importing this package registers them with TFDS, so that `tfds.builder(name)` and
`tfds.data_source(name)` find them by name; `BUILDERS` lists them explicitly.
"""

from vision_jax.data.builders import fashion_mnist_local
from vision_jax.data.builders import fashion_scenes
from vision_jax.data.builders import synthetic_shapes

BUILDERS: dict[str, type] = {
    "synthetic_shapes": synthetic_shapes.SyntheticShapes,
    "fashion_mnist_local": fashion_mnist_local.FashionMnistLocal,
    "fashion_scenes": fashion_scenes.FashionScenes,
}
