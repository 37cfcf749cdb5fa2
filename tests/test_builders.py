"""Tests for the project's TFDS builders and the synthetic scene renderer."""

import gzip
import os
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds

from vision_jax.data import builders
from vision_jax.data.builders import fashion_mnist_local, shapes_render, synthetic_shapes

_SCENE_SEEDS = range(200)


def _scene(seed: int, size: int = 32) -> dict:
  return shapes_render.render_scene(np.random.default_rng(seed), size)


# --- Renderer ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [32, 64])
def test_render_types_and_shapes(size):
  s = _scene(0, size)
  n = len(s["boxes"])
  assert s["image"].shape == (size, size, 3) and s["image"].dtype == np.uint8
  assert s["mask"].shape == (size, size) and s["mask"].dtype == np.uint8
  assert s["boxes"].shape == (n, 4) and s["boxes"].dtype == np.float32
  assert s["box_labels"].shape == (n,) and s["colours"].shape == (n,)
  assert 1 <= n <= 3
  assert isinstance(s["label"], int) and isinstance(s["caption"], str)


def test_render_is_deterministic():
  a, b, c = _scene(7), _scene(7), _scene(8)
  for key in ("image", "mask", "instances", "boxes", "box_labels", "colours"):
    np.testing.assert_array_equal(a[key], b[key])
  assert (a["label"], a["caption"]) == (b["label"], b["caption"])
  assert not np.array_equal(a["image"], c["image"])


def test_label_is_the_clearly_largest_object():
  for seed in _SCENE_SEEDS:
    s = _scene(seed)
    visible = np.bincount(s["instances"].ravel(), minlength=len(s["boxes"]) + 1)[1:]  # (N,)
    assert s["label"] == s["box_labels"][0]
    assert np.all(visible[0] >= shapes_render.MIN_MAIN_RATIO * visible[1:]), seed


def test_mask_matches_instances():
  for seed in _SCENE_SEEDS:
    s = _scene(seed)
    lut = np.concatenate([[0], s["box_labels"] + 1])
    np.testing.assert_array_equal(s["mask"], lut[s["instances"]])
    assert set(np.unique(s["instances"])) == set(range(len(s["boxes"]) + 1)), seed


def test_boxes_are_tight_around_visible_pixels():
  for seed in _SCENE_SEEDS:
    s = _scene(seed)
    size = s["image"].shape[0]
    assert np.all((s["boxes"] >= 0) & (s["boxes"] <= 1))
    for i, box in enumerate(s["boxes"]):
      rows, cols = np.nonzero(s["instances"] == i + 1)
      expected = np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]) / size
      np.testing.assert_allclose(box, expected, atol=1e-6)


def test_objects_contrast_with_background():
  for seed in _SCENE_SEEDS:
    s = _scene(seed)
    image = s["image"].astype(np.float32)
    background = image[s["instances"] == 0].mean(0)
    for i in range(len(s["boxes"])):
      inside = image[s["instances"] == i + 1].mean(0)
      # Textured backgrounds vary, so this is loose; the renderer enforces 100 per object.
      assert np.linalg.norm(inside - background) > 40, seed


def test_caption_names_main_object():
  colour_names = list(shapes_render.COLOURS)
  for seed in _SCENE_SEEDS:
    s = _scene(seed)
    words = s["caption"].split()
    main = f"{colour_names[s['colours'][0]]} {shapes_render.SHAPES[s['label']]}"
    assert s["caption"].startswith(("a ", "an ")) and main in s["caption"], s["caption"]
    assert set(words) <= set(shapes_render.CAPTION_WORDS), s["caption"]
    if len(s["boxes"]) == 1:
      assert "large" not in words and "small" not in words
    else:
      assert words[1] == "large" and words.count("small") == len(s["boxes"]) - 1


def test_caption_relations_and_positions():
  objects = [dict(shape="circle", colour="red", cx=0.2, cy=0.5),
             dict(shape="square", colour="blue", cx=0.8, cy=0.45)]
  assert shapes_render.caption(objects) == "a large red circle left of a small blue square"
  objects.append(dict(shape="ring", colour="white", cx=0.25, cy=0.9))
  assert shapes_render.caption(objects) == (
      "a large red circle above a small white ring and left of a small blue square")
  assert shapes_render.caption([dict(shape="cross", colour="orange", cx=0.8, cy=0.1)]) == (
      "an orange cross in the top right")


def test_scenes_vary():
  scenes = [_scene(seed) for seed in _SCENE_SEEDS]
  assert {s["label"] for s in scenes} == set(range(len(shapes_render.SHAPES)))
  assert {len(s["boxes"]) for s in scenes} == {1, 2, 3}
  assert len({s["caption"] for s in scenes}) > 150
  assert len({c for s in scenes for c in s["colours"]}) == len(shapes_render.COLOURS)


# --- synthetic_shapes -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_shapes(tmp_path_factory):
  """A 64/16-example synthetic_shapes, prepared once as array_record."""
  data_dir = tmp_path_factory.mktemp("tfds")
  config = synthetic_shapes.SyntheticShapesConfig(
      name="tiny32", size=32, num_examples={"train": 64, "test": 16})
  builder = synthetic_shapes.SyntheticShapes(config=config, data_dir=data_dir)
  builder.download_and_prepare(file_format="array_record")
  return builder


def test_registry_and_default_config():
  assert builders.BUILDERS["synthetic_shapes"] is synthetic_shapes.SyntheticShapes
  assert builders.BUILDERS["fashion_mnist_local"] is fashion_mnist_local.FashionMnistLocal
  assert "synthetic_shapes" in tfds.list_builders(with_community_datasets=False)
  builder = tfds.builder("synthetic_shapes", data_dir="/nonexistent")
  assert builder.builder_config.name == "size32"
  assert builder.info.features["image"].shape == (32, 32, 3)
  assert tfds.builder("synthetic_shapes/size64", data_dir="/nonexistent").builder_config.size == 64
  assert builder.builder_config.num_examples == synthetic_shapes.NUM_EXAMPLES


def test_tiny_build_reads_back_as_numpy(tiny_shapes):
  info = tiny_shapes.info
  assert {k: v.num_examples for k, v in info.splits.items()} == {"train": 64, "test": 16}
  assert info.features["label"].names == list(shapes_render.SHAPES)
  assert info.supervised_keys == ("image", "label")
  src = tfds.data_source("synthetic_shapes/tiny32", data_dir=tiny_shapes.data_dir_root,
                         split="train")
  assert len(src) == 64
  for i in range(len(src)):
    ex = src[i]
    assert ex["image"].shape == (32, 32, 3) and ex["image"].dtype == np.uint8
    assert ex["mask"].shape == (32, 32, 1) and ex["mask"].dtype == np.uint8
    assert 0 <= ex["label"] < len(shapes_render.SHAPES)
    # Sequence features come back as lists of per-object arrays.
    bbox = np.asarray(ex["objects"]["bbox"])  # (N, 4)
    labels = np.asarray(ex["objects"]["label"])  # (N,)
    assert bbox.shape == (len(labels), 4) and bbox.dtype == np.float32
    assert labels[0] == ex["label"]
    assert set(np.unique(ex["mask"])) == {0} | set(labels + 1)
    assert isinstance(ex["caption"], bytes)
    assert shapes_render.SHAPES[ex["label"]] in ex["caption"].decode()


def test_reading_needs_no_tensorflow(tiny_shapes):
  # `sys.modules["tensorflow"] = None` is no test: TFDS then believes TF is loaded and breaks.
  script = textwrap.dedent(f"""
      import importlib.machinery, sys
      find_spec = importlib.machinery.PathFinder.find_spec
      def hide_tensorflow(name, path=None, target=None):
        if name.split(".")[0] == "tensorflow":
          return None  # As if TensorFlow were not installed.
        return find_spec(name, path, target)
      importlib.machinery.PathFinder.find_spec = staticmethod(hide_tensorflow)
      import tensorflow_datasets as tfds
      from vision_jax.data import builders
      src = tfds.data_source("synthetic_shapes/tiny32", data_dir={str(tiny_shapes.data_dir_root)!r},
                             split="train")
      assert len(src) == 64 and src[5]["image"].shape == (32, 32, 3)
      assert "tensorflow" not in sys.modules
  """)
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-3000:]


def test_tiny_build_matches_renderer(tiny_shapes):
  # Every example is the renderer's output for (split seed, index), whatever the split size.
  # TFDS shuffles examples when writing, so match them by caption and compare the pixels.
  src = tiny_shapes.as_data_source(split="test")
  stored = {src[i]["caption"].decode(): src[i] for i in range(len(src))}
  for i in range(16):
    expected = synthetic_shapes.make_example("test", i, 32)
    ex = stored[expected["caption"]]
    np.testing.assert_array_equal(ex["image"], expected["image"])
    np.testing.assert_array_equal(ex["mask"], expected["mask"])
    np.testing.assert_allclose(np.asarray(ex["objects"]["bbox"]), expected["objects"]["bbox"])


# --- fashion_mnist_local ----------------------------------------------------------------------


def _write_idx(path: str, array: np.ndarray, compress: bool) -> None:
  """Writes `array` (uint8) as an IDX file, by hand, so the parser is tested independently."""
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
      f">{array.ndim}I", *array.shape)
  data = header + array.astype(np.uint8).tobytes()
  with open(path, "wb") as f:
    f.write(gzip.compress(data) if compress else data)


@pytest.mark.parametrize("compress", [False, True])
def test_read_idx(tmp_path, compress):
  images = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
  _write_idx(tmp_path / "images", images, compress)
  out = fashion_mnist_local.read_idx(tmp_path / "images")
  np.testing.assert_array_equal(out, images)
  assert out.dtype == np.uint8


def test_read_idx_big_endian_int32(tmp_path):
  values = np.array([1, -2, 70000], ">i4")
  (tmp_path / "x").write_bytes(struct.pack(">BBBBI", 0, 0, 0x0C, 1, 3) + values.tobytes())
  out = fashion_mnist_local.read_idx(tmp_path / "x")
  np.testing.assert_array_equal(out, [1, -2, 70000])
  assert out.dtype == np.int32 and out.dtype.isnative


def test_read_idx_rejects_bad_files(tmp_path):
  (tmp_path / "junk").write_bytes(b"not an idx file")
  with pytest.raises(ValueError, match="not an IDX file"):
    fashion_mnist_local.read_idx(tmp_path / "junk")
  (tmp_path / "short").write_bytes(struct.pack(">BBBBI", 0, 0, 0x08, 1, 5) + b"abc")
  with pytest.raises(ValueError, match="header says"):
    fashion_mnist_local.read_idx(tmp_path / "short")


def _fake_fashion_mnist(directory, n_train=12, n_test=5) -> None:
  rng = np.random.default_rng(0)
  for split, n in (("train", n_train), ("test", n_test)):
    images_name, labels_name = fashion_mnist_local.FILES[split]
    _write_idx(os.path.join(directory, images_name + ".gz"),
               rng.integers(0, 256, (n, 28, 28)), compress=True)
    _write_idx(os.path.join(directory, labels_name), np.arange(n) % 10, compress=False)


def test_fashion_mnist_missing_dir_names_dir_and_files(tmp_path):
  missing = tmp_path / "nowhere"
  builder = fashion_mnist_local.FashionMnistLocal(data_dir=tmp_path / "tfds")
  config = tfds.download.DownloadConfig(manual_dir=os.fspath(missing))
  with pytest.raises(FileNotFoundError) as e:
    builder.download_and_prepare(file_format="array_record", download_config=config)
  assert str(missing) in str(e.value) and "does not exist" in str(e.value)
  for images_name, labels_name in fashion_mnist_local.FILES.values():
    assert images_name in str(e.value) and labels_name in str(e.value)


def test_fashion_mnist_incomplete_dir_names_missing_files(tmp_path):
  _fake_fashion_mnist(tmp_path)
  os.remove(tmp_path / "t10k-labels-idx1-ubyte")
  with pytest.raises(FileNotFoundError, match=r"is missing: t10k-labels-idx1-ubyte\[\.gz\]\."):
    fashion_mnist_local.find_files(tmp_path)


def test_fashion_mnist_builds_from_fake_files(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  _fake_fashion_mnist(manual)
  builder = fashion_mnist_local.FashionMnistLocal(data_dir=tmp_path / "tfds")
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual)))
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 12, "test": 5}
  assert builder.info.features["label"].names == list(fashion_mnist_local.CLASS_NAMES)
  src = tfds.data_source("fashion_mnist_local", data_dir=tmp_path / "tfds", split="test")
  labels = sorted(src[i]["label"] for i in range(len(src)))
  assert labels == list(range(5))
  assert src[0]["image"].shape == (28, 28, 1) and src[0]["image"].dtype == np.uint8


@pytest.mark.skipif(not os.path.isdir(fashion_mnist_local.DEFAULT_MANUAL_DIR),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_real_files(tmp_path):
  # No manual_dir: the builder defaults to DEFAULT_MANUAL_DIR.
  builder = tfds.builder("fashion_mnist_local", data_dir=tmp_path)
  builder.download_and_prepare(file_format="array_record")
  splits = {k: v.num_examples for k, v in builder.info.splits.items()}
  assert splits == {"train": 60_000, "test": 10_000}
  src = builder.as_data_source(split="test")
  examples = [src[i] for i in range(0, len(src), 50)]  # 200 spread-out examples.
  labels = np.array([ex["label"] for ex in examples])
  assert labels.min() >= 0 and labels.max() <= 9 and len(set(labels)) == 10
  images = np.stack([ex["image"] for ex in examples])  # (200, 28, 28, 1)
  # Fashion-MNIST's mean pixel is ~73 (0.286 * 255); blank or garbled files would be far off.
  assert 60 < images.mean() < 90 and images.max() == 255
  test_images = fashion_mnist_local.read_idx(
      os.path.join(fashion_mnist_local.DEFAULT_MANUAL_DIR, "t10k-images-idx3-ubyte.gz"))
  assert test_images.shape == (10_000, 28, 28)
  assert test_images.sum(dtype=np.int64) == sum(  # Every image stored, none altered.
      int(src[i]["image"].sum(dtype=np.int64)) for i in range(len(src)))
