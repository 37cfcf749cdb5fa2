"""Transforms, dataset lookup and the grain pipeline."""

import jax
import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vision_jax import config as config_lib
from vision_jax.data import datasets, pipeline, transforms


def _example(h=8, w=10):
  image = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
  return {"image": image, "mask": image[..., :1].copy(), "label": 3}


def _batch(b=16, h=8, w=10):
  images = np.arange(b * h * w * 3, dtype=np.uint8).reshape(b, h, w, 3)
  return {"image": images, "mask": images[..., :1].copy(), "label": np.arange(b)}


def test_crop_and_flip_move_image_and_mask_together():
  rng = np.random.default_rng(0)
  for _ in range(5):
    out = transforms.random_flip(transforms.pad_and_random_crop(_batch(), rng, padding=3), rng)
    assert out["image"].shape == (16, 8, 10, 3) and out["mask"].shape == (16, 8, 10, 1)
    np.testing.assert_array_equal(out["image"][..., :1], out["mask"])
    np.testing.assert_array_equal(out["label"], np.arange(16))


def test_crop_is_a_shifted_window_of_each_zero_padded_image():
  batch = _batch()
  out = transforms.pad_and_random_crop(batch, np.random.default_rng(1), padding=2)
  shifts = set()
  for i in range(16):
    padded = np.pad(batch["image"][i], ((2, 2), (2, 2), (0, 0)))
    matches = [(t, l) for t in range(5) for l in range(5)
               if np.array_equal(out["image"][i], padded[t:t + 8, l:l + 10])]
    assert matches
    shifts.add(matches[0])
  assert len(shifts) > 1  # Each example gets its own offset.


def test_flip_reverses_columns_of_about_half_the_batch():
  batch = _batch(64)
  out = transforms.random_flip(batch, np.random.default_rng(0))
  flipped = [np.array_equal(o, b[:, ::-1]) for o, b in zip(out["image"], batch["image"])]
  kept = [np.array_equal(o, b) for o, b in zip(out["image"], batch["image"])]
  assert all(f != k for f, k in zip(flipped, kept))
  assert 16 < sum(flipped) < 48


def test_resize_and_center_crop_and_normalize():
  out = transforms.resize_and_center_crop(_example(16, 24), size=8)
  assert out["image"].shape == (8, 8, 3) and out["mask"].shape == (8, 8, 1)
  norm = transforms.normalize(out, mean=np.float32(0.5), std=np.float32(0.25))
  assert norm["image"].dtype == np.float32
  np.testing.assert_allclose(norm["image"], (out["image"] / 255 - 0.5) / 0.25, atol=1e-6)


def _input_config(batch_size=32, eval_batch_size=32):
  c = config_lib.base_config().input
  c.batch_size, c.eval_batch_size = batch_size, eval_batch_size
  return c


def _dataset_config(data_dir, name="synthetic_shapes/tiny32", prepare=False):
  return ml_collections.ConfigDict({"name": name, "data_dir": data_dir, "manual_dir": None,
                                    "prepare": prepare})


def test_in_memory_source_equals_the_array_record_source(tiny_shapes_dir):
  builder = datasets.get_builder(_dataset_config(tiny_shapes_dir))
  disk = datasets.open_split(builder, "train")
  memory = datasets.open_split(builder, "train", in_memory=True)
  assert len(disk) == len(memory) == 256
  for i in (0, 17, 255):
    np.testing.assert_array_equal(disk[i]["image"], memory[i]["image"])
    assert disk[i]["label"] == memory[i]["label"]
  assert set(memory[0]) == {"image", "label"}


def test_eval_batches_cover_the_split_once_with_masked_padding(tiny_shapes_dir):
  builder = datasets.get_builder(_dataset_config(tiny_shapes_dir))
  source = datasets.open_split(builder, "test", in_memory=True)  # 64 examples
  batches = list(pipeline.eval_batches(_input_config(eval_batch_size=48), source))
  assert [b["image"].shape for b in batches] == [(48, 32, 32, 3)] * 2
  assert sum(b["weight"].sum() for b in batches) == 64
  assert not batches[1]["image"][16:].any()  # Padding is zeros with weight 0.
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:64],
                                [source[i]["label"] for i in range(64)])


def test_train_loader_is_seeded_and_resumes_from_its_state(tiny_shapes_dir):
  builder = datasets.get_builder(_dataset_config(tiny_shapes_dir))
  source = datasets.open_split(builder, "train", in_memory=True)
  loader = pipeline.train_loader(_input_config(), source, seed=7)
  first = iter(loader)
  for _ in range(3):
    next(first)
  state = first.get_state()
  expected = [next(first) for _ in range(10)]  # Crosses an epoch boundary (256 / 32 = 8).
  resumed = iter(pipeline.train_loader(_input_config(), source, seed=7))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    np.testing.assert_array_equal(want["image"], got["image"])
    np.testing.assert_array_equal(want["label"], got["label"])
  other_seed = next(iter(pipeline.train_loader(_input_config(), source, seed=8)))
  assert not np.array_equal(other_seed["label"], next(iter(loader))["label"])
  assert expected[0]["image"].dtype == np.float32 and expected[0]["image"].shape == (32, 32, 32, 3)


def test_global_batch_is_sharded_over_the_mesh():
  from vision_jax.train import parallel
  mesh = parallel.make_mesh()
  batch = {"image": np.zeros((16, 4, 4, 3), np.float32), "label": np.arange(16)}
  out = pipeline.to_global(batch, parallel.data_sharding(mesh))
  assert out["image"].shape == (16, 4, 4, 3)
  assert len(out["label"].addressable_shards) == jax.device_count() == 8
  assert out["label"].addressable_shards[1].data.tolist() == [2, 3]


def test_unprepared_dataset_with_prepare_off_names_the_fix(tmp_path):
  config = _dataset_config(str(tmp_path), name="synthetic_shapes/size32")
  with pytest.raises(FileNotFoundError, match="vision_jax.data.prepare"):
    datasets.get_builder(config)


def test_stock_tfds_names_go_through_the_same_path():
  with tfds.testing.mock_data(num_examples=10):
    builder = datasets.get_builder(_dataset_config(None, name="cifar100", prepare=True))
    source = datasets.open_split(builder, "train")
    assert datasets.info(builder).num_classes == 100
    assert source[0]["image"].shape == (32, 32, 3)


def test_worker_processes_are_deterministic_and_resumable(tiny_shapes_dir):
  """With worker processes each worker batches its own records, so batches differ from
  `num_workers=0`, but a given worker count is reproducible and resumes exactly."""
  builder = datasets.get_builder(_dataset_config(tiny_shapes_dir))
  source = datasets.open_split(builder, "train", in_memory=True)
  config = _input_config()
  config.num_workers = 2
  first = iter(pipeline.train_loader(config, source, seed=3))
  next(first)
  state = first.get_state()
  expected = [next(first) for _ in range(3)]
  resumed = iter(pipeline.train_loader(config, source, seed=3))
  resumed.set_state(state)
  for want in expected:
    got = next(resumed)
    assert got["image"].shape == (32, 32, 32, 3)
    np.testing.assert_array_equal(want["image"], got["image"])
    np.testing.assert_array_equal(want["label"], got["label"])
