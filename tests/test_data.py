"""Transforms, dataset lookup and the grain pipeline."""

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vision_jax import config as config_lib
from vision_jax.data import datasets, pipeline, transforms
from vision_jax.models import info


KINDS = {"image": "image", "mask": "mask", "label": "other"}


def _example(h=8, w=10):
  image = np.arange(h * w * 3, dtype=np.uint8).reshape(h, w, 3)
  return {"image": image, "mask": image[..., :1].copy(), "label": 3}


def _batch(b=16, h=8, w=10):
  images = (np.arange(b * h * w * 3) % 251).astype(np.uint8).reshape(b, h, w, 3)  # No 255.
  return {"image": images, "mask": images[..., :1].copy(), "label": np.arange(b)}


def _sampled(batch, rng, padding=3):
  """Draws per-example augmentation for a batch, as the pipeline does record by record."""
  draws = [transforms.sample_crop_and_flip({}, rng, padding, flip=True)
           for _ in range(len(batch["image"]))]
  return {**batch, "crop_offset": np.stack([d["crop_offset"] for d in draws]),
          "flip": np.array([d["flip"] for d in draws])}


def test_crop_and_flip_move_image_and_mask_together():
  rng = np.random.default_rng(0)
  for _ in range(5):
    out = transforms.apply_crop_and_flip(_sampled(_batch(), rng), padding=3, kinds=KINDS)
    assert set(out) == {"image", "mask", "label"}
    assert out["image"].shape == (16, 8, 10, 3) and out["mask"].shape == (16, 8, 10, 1)
    outside = out["mask"] == transforms.MASK_FILL  # Padding: 255 in masks, 0 in images.
    np.testing.assert_array_equal(out["image"][..., :1], np.where(outside, 0, out["mask"]))
    np.testing.assert_array_equal(out["label"], np.arange(16))


def test_crop_is_a_shifted_window_of_each_zero_padded_image():
  batch = _batch()
  offsets = np.random.default_rng(1).integers(0, 5, size=(16, 2))
  out = transforms.pad_and_crop(batch, offsets, padding=2, kinds=KINDS)
  for i, (t, l) in enumerate(offsets):
    padded = np.pad(batch["image"][i], ((2, 2), (2, 2), (0, 0)))
    np.testing.assert_array_equal(out["image"][i], padded[t:t + 8, l:l + 10])
  assert len({tuple(o) for o in offsets}) > 1  # Each example gets its own offset.


def test_flip_reverses_columns_of_about_half_the_batch():
  batch = _batch(64)
  out = transforms.apply_crop_and_flip(_sampled(batch, np.random.default_rng(0)), padding=0,
                                      kinds=KINDS)
  flipped = [np.array_equal(o, b[:, ::-1]) for o, b in zip(out["image"], batch["image"])]
  kept = [np.array_equal(o, b) for o, b in zip(out["image"], batch["image"])]
  assert all(f != k for f, k in zip(flipped, kept))
  assert 16 < sum(flipped) < 48


def test_resize_and_center_crop_and_normalize():
  out = transforms.resize_and_center_crop(_example(16, 24), size=8, kinds=KINDS)
  assert out["image"].shape == (8, 8, 3) and out["mask"].shape == (8, 8, 1)
  norm = transforms.normalize(out, mean=np.float32(0.5), std=np.float32(0.25))
  assert norm["image"].dtype == np.float32
  np.testing.assert_allclose(norm["image"], (out["image"] / 255 - 0.5) / 0.25, atol=1e-6)


def test_center_crop_fraction_resizes_the_shorter_side_to_size_over_fraction():
  # A 64×96 image whose left half is 0 and right half 255: at fraction 0.5 the shorter side
  # becomes 32/0.5 = 64 (no resize), and the 32×32 centre straddles the edge in the middle.
  image = np.zeros((64, 96, 3), np.uint8)
  image[:, 48:] = 255
  out = transforms.resize_and_center_crop({"image": image}, size=32, crop_fraction=0.5)
  np.testing.assert_array_equal(out["image"], image[16:48, 32:64])


def test_random_resized_crop_moves_image_and_mask_together_and_varies():
  rng = np.random.default_rng(0)
  h, w = 60, 80
  rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
  image = np.stack([rows * 4, cols * 3, np.zeros_like(rows)], -1).astype(np.uint8)  # (H, W, 3)
  example = {"image": image, "mask": (cols * 3).astype(np.uint8)[..., None], "label": 1}
  boxes = set()
  for _ in range(20):
    out = transforms.random_resized_crop(example, rng, size=16, kinds=KINDS)
    assert out["image"].shape == (16, 16, 3) and out["mask"].shape == (16, 16, 1)
    assert out["label"] == 1
    # Column index survives in both: the mask (nearest) stays within rounding of the image.
    assert np.abs(out["image"][..., 1].astype(int) - out["mask"][..., 0]).max() <= 6
    boxes.add((out["image"][0, 0, 0], out["image"][0, 0, 1], out["image"][-1, -1, 1]))
  assert len(boxes) > 10  # Different areas, ratios and places.


def test_random_resized_crop_area_and_ratio_stay_in_range():
  rng = np.random.default_rng(1)
  rows, cols = np.meshgrid(np.arange(100), np.arange(100), indexing="ij")
  image = np.stack([rows, cols, rows], -1).astype(np.uint8)  # Pixels say where they are.
  for _ in range(100):
    out = transforms.random_resized_crop({"image": image}, rng, size=8, scale=(0.25, 0.5),
                                         ratio=(1.0, 1.0))["image"].astype(float)
    # Bilinear samples of a linear ramp: the 8 samples span 7/8 of the box's side.
    side_h = (out[-1, 0, 0] - out[0, 0, 0]) * 8 / 7
    side_w = (out[0, -1, 1] - out[0, 0, 1]) * 8 / 7
    assert abs(side_h - side_w) <= 2  # Square boxes (ratio 1).
    assert 50 - 2 <= side_h <= 100 * np.sqrt(0.5) + 2  # Area 25%..50% of 100×100.
  # With scale=(1, 1) and ratio=(1, 1) on a square image the crop is the whole image.
  whole = transforms.random_resized_crop({"image": image}, rng, size=100, scale=(1, 1),
                                         ratio=(1, 1))
  np.testing.assert_array_equal(whole["image"], image)


def test_random_resized_crop_falls_back_to_a_centred_box_for_extreme_images():
  # 4×200: no box of >= 8% area with ratio in [3/4, 4/3] fits, so the centred 4×5 box is used.
  image = np.tile(np.arange(200, dtype=np.uint8)[None, :, None], (4, 1, 3))
  out = transforms.random_resized_crop({"image": image}, np.random.default_rng(0), size=5)
  np.testing.assert_array_equal(out["image"][0, :, 0], np.arange(97, 102, dtype=np.uint8))


def test_imagenet_style_pipeline_on_variable_size_mock_images():
  c = pipeline.InputOptions(batch_size=8, eval_batch_size=8, image_size=24,
                            train_crop="random_resized", center_crop_fraction=0.875,
                            mean=info.IMAGENET_MEAN, std=info.IMAGENET_STD)
  with tfds.testing.mock_data(num_examples=12):
    builder = datasets.get_builder("imagenet2012", prepare=True)
    assert datasets.info(builder).image_shape is None  # Sizes vary, as in the real dataset.
    source = datasets.open_split(builder, "train")
    shapes = {source[i]["image"].shape for i in range(len(source))}
    assert len(shapes) > 1
    train = next(pipeline.train_batches(source, c, seed=0))
    evals = list(pipeline.eval_batches(datasets.open_split(builder, "validation"), c))
  assert train["image"].shape == (8, 24, 24, 3) and train["image"].dtype == np.float32
  assert all(b["image"].shape == (8, 24, 24, 3) for b in evals)
  assert sum(b["weight"].sum() for b in evals) == 12


def test_random_resized_crop_needs_an_image_size():
  c = config_lib.base_config()
  c.input.train_crop = "random_resized"
  with pytest.raises(ValueError, match="image_size"):
    config_lib.validate(c, num_devices=1)
  c.input.train_crop = "inception"
  with pytest.raises(ValueError, match="random_resized"):
    config_lib.validate(c, num_devices=1)


def _input_config(batch_size=32, eval_batch_size=32, **fields):
  return pipeline.InputOptions(batch_size=batch_size, eval_batch_size=eval_batch_size, **fields)


def _tiny_shapes(data_dir):
  return datasets.get_builder("synthetic_shapes/tiny32", data_dir=data_dir, prepare=False)


def test_in_memory_source_equals_the_array_record_source(tiny_shapes_dir):
  builder = _tiny_shapes(tiny_shapes_dir)
  disk = datasets.open_split(builder, "train")
  memory = datasets.open_split(builder, "train", in_memory=True)
  assert len(disk) == len(memory) == 256
  for i in (0, 17, 255):
    np.testing.assert_array_equal(disk[i]["image"], memory[i]["image"])
    assert disk[i]["label"] == memory[i]["label"]
  assert set(memory[0]) == {"image", "label"}


def test_eval_batches_cover_the_split_once_with_masked_padding(tiny_shapes_dir):
  builder = _tiny_shapes(tiny_shapes_dir)
  source = datasets.open_split(builder, "test", in_memory=True)  # 64 examples
  batches = list(pipeline.eval_batches(source, _input_config(eval_batch_size=48)))
  assert [b["image"].shape for b in batches] == [(48, 32, 32, 3)] * 2
  assert sum(b["weight"].sum() for b in batches) == 64
  assert not batches[1]["image"][16:].any()  # Padding is zeros with weight 0.
  np.testing.assert_array_equal(np.concatenate([b["label"] for b in batches])[:64],
                                [source[i]["label"] for i in range(64)])


def _shapes_train(tiny_shapes_dir):
  return datasets.open_split(_tiny_shapes(tiny_shapes_dir), "train", in_memory=True)


def _assert_same_batches(expected, actual):
  for want, got in zip(expected, actual, strict=True):
    np.testing.assert_array_equal(want["image"], got["image"])
    np.testing.assert_array_equal(want["label"], got["label"])


def test_train_batches_are_seeded_and_start_at_any_step(tiny_shapes_dir):
  source = _shapes_train(tiny_shapes_dir)
  stream = pipeline.train_batches(source, _input_config(), seed=7)
  batches = [next(stream) for _ in range(13)]  # Crosses an epoch boundary (256 / 32 = 8).
  resumed = pipeline.train_batches(source, _input_config(), seed=7, start_step=3)
  _assert_same_batches(batches[3:], [next(resumed) for _ in range(10)])
  # Each epoch is a new permutation of all 256 records.
  epoch1 = np.concatenate([b["label"] for b in batches[:8]])
  epoch2 = np.concatenate([b["label"] for b in batches[8:13]])
  assert sorted(np.bincount(epoch1)) == sorted(np.bincount([source[i]["label"]
                                                            for i in range(256)]))
  assert not np.array_equal(epoch1[:len(epoch2)], epoch2)
  other_seed = next(pipeline.train_batches(source, _input_config(), seed=8))
  assert not np.array_equal(other_seed["label"], batches[0]["label"])
  assert batches[0]["image"].dtype == np.float32 and batches[0]["image"].shape == (32, 32, 32, 3)


def test_processes_together_read_exactly_the_single_process_batch(tiny_shapes_dir, monkeypatch):
  """Global batch s is the same records with the same augmentation on any process count."""
  source = _shapes_train(tiny_shapes_dir)
  single = pipeline.train_batches(source, _input_config(), seed=5, start_step=6)
  expected = [next(single) for _ in range(3)]
  shares = []
  monkeypatch.setattr(pipeline.jax, "process_count", lambda: 4)
  for p in range(4):
    monkeypatch.setattr(pipeline.jax, "process_index", lambda p=p: p)
    stream = pipeline.train_batches(source, _input_config(), seed=5, start_step=6)
    shares.append([next(stream) for _ in range(3)])
  for step, want in enumerate(expected):
    local = [shares[p][step] for p in range(4)]
    assert all(part["image"].shape == (8, 32, 32, 3) for part in local)
    # Process p holds global rows [8p, 8p + 8): in process order the shares are the batch.
    for key in ("image", "label"):
      np.testing.assert_array_equal(want[key], np.concatenate([part[key] for part in local]))


def test_processes_together_read_exactly_the_single_process_eval_batches(tiny_shapes_dir,
                                                                          monkeypatch):
  """Eval: the same padded global batches on any process count, even where a share is empty."""
  source = datasets.open_split(_tiny_shapes(tiny_shapes_dir), "test", in_memory=True)  # 64
  config = _input_config(eval_batch_size=48)  # 2 batches: 48, then 16 + 32 padding.
  expected = list(pipeline.eval_batches(source, config))
  monkeypatch.setattr(pipeline.jax, "process_count", lambda: 4)
  shares = []
  for p in range(4):  # Blocks of 12: the second batch is 12 + 4 rows, then 2 empty shares.
    monkeypatch.setattr(pipeline.jax, "process_index", lambda p=p: p)
    shares.append(list(pipeline.eval_batches(source, config)))
  assert [len(s) for s in shares] == [2] * 4
  for k, want in enumerate(expected):
    for key in ("image", "label", "weight"):
      np.testing.assert_array_equal(want[key], np.concatenate([s[k][key] for s in shares]))


def test_global_batch_is_sharded_over_the_mesh():
  from vision_jax import sharding
  mesh = sharding.make_mesh()
  batch = {"image": np.zeros((16, 4, 4, 3), np.float32), "label": np.arange(16)}
  out = sharding.to_global(batch, sharding.data_sharding(mesh))
  assert out["image"].shape == (16, 4, 4, 3)
  assert len(out["label"].addressable_shards) == jax.device_count() == 8
  assert out["label"].addressable_shards[1].data.tolist() == [2, 3]


def test_unprepared_dataset_with_prepare_off_names_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match="vision_jax.data.prepare"):
    datasets.get_builder("synthetic_shapes/size32", data_dir=str(tmp_path), prepare=False)


def test_stock_tfds_names_go_through_the_same_path():
  with tfds.testing.mock_data(num_examples=10):
    builder = datasets.get_builder("cifar100")
    source = datasets.open_split(builder, "train")
    assert datasets.info(builder).num_classes == 100
    assert source[0]["image"].shape == (32, 32, 3)


def test_worker_processes_make_the_same_batches(tiny_shapes_dir):
  """Each worker builds whole batches, so the worker count changes speed, not data."""
  source = _shapes_train(tiny_shapes_dir)
  stream = pipeline.train_batches(source, _input_config(), seed=3, start_step=2)
  expected = [next(stream) for _ in range(3)]
  stream = pipeline.train_batches(source, _input_config(num_workers=2), seed=3, start_step=2)
  _assert_same_batches(expected, [next(stream) for _ in range(3)])
