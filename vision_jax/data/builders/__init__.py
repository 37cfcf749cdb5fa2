"""The project's own TFDS datasets.

Importing this package registers them with TFDS, so that `tfds.builder(name)` and
`tfds.data_source(name)` find them by name; `BUILDERS` lists them explicitly.
"""

from vision_jax.data.builders import fashion_mnist_local, fashion_scenes, synthetic_shapes

BUILDERS: dict[str, type] = {
    "synthetic_shapes": synthetic_shapes.SyntheticShapes,
    "fashion_mnist_local": fashion_mnist_local.FashionMnistLocal,
    "fashion_scenes": fashion_scenes.FashionScenes,
}
