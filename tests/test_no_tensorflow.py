"""Preparing and reading our datasets with TensorFlow absent (the training install has none).

Each test runs a script in a fresh interpreter whose `sitecustomize` hides TensorFlow, as if it
were not installed. (`sys.modules["tensorflow"] = None` would not do: TFDS then believes TF is
loaded and breaks.)
"""

import os
import subprocess
import sys
import textwrap

_HIDE_TENSORFLOW = '''
import importlib.machinery
_find_spec = importlib.machinery.PathFinder.find_spec
def _hide_tensorflow(cls, name, path=None, target=None):
  if name.split(".")[0] == "tensorflow":
    return None  # As if TensorFlow were not installed: `import tensorflow` raises ImportError.
  return _find_spec(name, path, target)
# A classmethod, like the original: pytest's import hook keeps a reference to it.
importlib.machinery.PathFinder.find_spec = classmethod(_hide_tensorflow)
'''

# Shared by the scripts: checks the blocker works, and writes fake Fashion-MNIST IDX files.
_PRELUDE = '''
import gzip, os, struct, sys
import numpy as np
try:
  import tensorflow
  raise AssertionError("TensorFlow is not hidden")
except ImportError:
  pass

def write_idx(path, array):
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
      f">{array.ndim}I", *array.shape)
  with open(path, "wb") as f:
    f.write(gzip.compress(header + array.astype(np.uint8).tobytes()))

def fake_fashion_mnist(directory, n=40):
  from vision_jax.data.builders import fashion_mnist_local
  os.makedirs(directory)
  rng = np.random.default_rng(0)
  for images_name, labels_name in fashion_mnist_local.FILES.values():
    items = np.zeros((n, 28, 28), np.uint8)
    items[:, 4:24, 6:22] = rng.integers(80, 256, (n, 20, 16))  # A garment-like block.
    write_idx(os.path.join(directory, images_name + ".gz"), items)
    write_idx(os.path.join(directory, labels_name + ".gz"), np.arange(n) % 10)
'''


def _run_without_tensorflow(tmp_path, script: str) -> str:
  """Runs `script` with TensorFlow hidden; returns its stdout, failing on a non-zero exit."""
  (tmp_path / "hide_tf").mkdir()
  (tmp_path / "hide_tf" / "sitecustomize.py").write_text(_HIDE_TENSORFLOW)
  path = os.pathsep.join(filter(None, [str(tmp_path / "hide_tf"), os.environ.get("PYTHONPATH")]))
  env = {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu"}
  (tmp_path / "script.py").write_text(_PRELUDE + textwrap.dedent(script))  # TFDS builders
  # look up their module's `__file__`.
  result = subprocess.run([sys.executable, "script.py"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-5000:]
  return result.stdout


def test_our_builders_prepare_and_read_without_tensorflow(tmp_path):
  out = _run_without_tensorflow(tmp_path, """
      import tensorflow_datasets as tfds
      from vision_jax import config as config_lib
      from vision_jax.data import datasets, pipeline
      from vision_jax.data.builders import fashion_mnist_local, fashion_scenes, synthetic_shapes

      data_dir, manual_dir = "data", "fashion-mnist"
      fake_fashion_mnist(manual_dir)
      download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
      sizes = {"train": 12, "test": 6}
      for builder in (
          synthetic_shapes.SyntheticShapes(config=synthetic_shapes.SyntheticShapesConfig(
              name="tiny32", size=32, num_examples=sizes), data_dir=data_dir),
          fashion_scenes.FashionScenes(config=fashion_scenes.FashionScenesConfig(
              name="tiny32", size=32, num_examples=sizes), data_dir=data_dir),
          fashion_mnist_local.FashionMnistLocal(data_dir=data_dir)):
        builder.download_and_prepare(file_format="array_record", download_config=download_config)

      options = pipeline.InputOptions(eval_batch_size=8)
      for name, keys, image_shape, splits in (
          ("synthetic_shapes/tiny32", ("image", "label", "mask"), (32, 32, 3), sizes),
          ("fashion_scenes/tiny32", ("image", "mask"), (32, 32, 1), sizes),
          ("fashion_mnist_local", ("image", "label"), (28, 28, 1), {"train": 40, "test": 40})):
        builder = datasets.get_builder(name, data_dir=data_dir, manual_dir=manual_dir,
                                       prepare=False)
        info = datasets.info(builder)
        assert info.image_shape == image_shape, info
        assert {k: v.num_examples for k, v in builder.info.splits.items()} == splits
        source = datasets.open_split(builder, "test", keys=keys)
        example = source[0]
        assert example["image"].shape == image_shape and example["image"].dtype == np.uint8
        if "mask" in keys:
          assert example["mask"].shape == image_shape[:2] + (1,), example["mask"].shape
        kinds = {"image": "image", "label": "other", "mask": "mask"}
        batch = next(pipeline.eval_batches(source, options, keys=keys, kinds=kinds))  # Grain.
        assert batch["image"].shape == (8,) + image_shape, batch["image"].shape
        assert np.isfinite(batch["image"]).all() and batch["image"].std() > 0
        print(name, "ok")
      assert "tensorflow" not in sys.modules
  """)
  assert out.count(" ok") == 3, out


def test_a_builder_that_needs_tensorflow_says_to_install_the_prepare_extra(tmp_path):
  # A stand-in for a stock TFDS dataset: its builder hands TFDS numpy images, which TFDS
  # encodes with TensorFlow.
  _run_without_tensorflow(tmp_path, """
      import tensorflow_datasets as tfds
      from vision_jax import errors
      from vision_jax.data import datasets

      class NumpyImages(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
          return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict(
              {"image": tfds.features.Image(shape=(8, 8, 3)), "label": tfds.features.ClassLabel(
                  num_classes=2)}))

        def _split_generators(self, dl_manager):
          return {"train": self._generate_examples()}

        def _generate_examples(self):
          for i in range(4):
            yield i, {"image": np.zeros((8, 8, 3), np.uint8), "label": i % 2}

      try:
        datasets.get_builder("numpy_images", data_dir="data")
        raise AssertionError("no error")
      except errors.UserError as error:
        message = str(error)
      assert "needs TensorFlow" in message and "requirements-prepare.txt" in message, message
      assert "numpy_images" in message and "[prepare]" in message, message
  """)
