"""RandAugment / TrivialAugment and random erasing: each op against torchvision on the same
image and magnitude, masks and points moved with the image, refusals for the features that
cannot follow, and augmentation tied to the record's position (resume, processes)."""

import importlib
import math

import numpy as np
from PIL import Image, ImageOps
import pytest

from vision_jax import config as config_lib
from vision_jax import errors
from vision_jax.data import auto_augment, pipeline, random_erasing, transforms

# torchvision's op names, in its order (the order our op index draws from).
TV_NAMES = dict(zip(auto_augment.OPS, (
    "Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color",
    "Contrast", "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")))


def _image(h=23, w=31, c=3, seed=0):
  return np.random.default_rng(seed).integers(0, 256, (h, w, c), dtype=np.uint8)


@pytest.fixture(name="tv")
def _torchvision():
  """torchvision's `transforms` (the test extra installs it; without it these tests skip)."""
  pytest.importorskip("torch")
  pytest.importorskip("torchvision.transforms.v2")
  return importlib.import_module("torchvision.transforms")


def _reference(tv, x: np.ndarray, op: str, m: float) -> np.ndarray:
  """`op` at signed magnitude `m` as torchvision's RandAugment applies it (`autoaugment.
  _apply_op`), through `torchvision.transforms.v2.functional` on a uint8 tensor."""
  import torch  # pylint: disable=g-import-not-at-top
  tvf, nearest = tv.v2.functional, tv.InterpolationMode.NEAREST
  t = torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))
  shear = math.degrees(math.atan(m))
  affine = dict(angle=0.0, translate=[0, 0], scale=1.0, shear=[0.0, 0.0], interpolation=nearest)
  out = {
      "identity": lambda: t,
      "shear_x": lambda: tvf.affine(t, **{**affine, "shear": [shear, 0.0]}, center=[0, 0]),
      "shear_y": lambda: tvf.affine(t, **{**affine, "shear": [0.0, shear]}, center=[0, 0]),
      "translate_x": lambda: tvf.affine(t, **{**affine, "translate": [int(m), 0]}),
      "translate_y": lambda: tvf.affine(t, **{**affine, "translate": [0, int(m)]}),
      "rotate": lambda: tvf.rotate(t, m, interpolation=nearest),
      "brightness": lambda: tvf.adjust_brightness(t, 1.0 + m),
      "color": lambda: tvf.adjust_saturation(t, 1.0 + m),
      "contrast": lambda: tvf.adjust_contrast(t, 1.0 + m),
      "sharpness": lambda: tvf.adjust_sharpness(t, 1.0 + m),
      "posterize": lambda: tvf.posterize(t, int(m)),
      "solarize": lambda: tvf.solarize(t, m),
      "autocontrast": lambda: tvf.autocontrast(t),
      "equalize": lambda: tvf.equalize(t),
  }[op]()
  return out.permute(1, 2, 0).numpy()


# --- Each op does what torchvision does ----------------------------------------------------------


def _on_pixel_edges(op: str, m: float, size: tuple[int, int]) -> np.ndarray:
  """(h, w) True where the output pixel's centre maps back onto a source pixel edge: a tie, that
  torch rounds half to even and we (as PIL) round up; float rounding may go either way."""
  forward = np.vstack([auto_augment.affine_matrix(op, m, size), [0.0, 0.0, 1.0]])
  inverse = np.linalg.inv(forward)[:2]
  y, x = np.mgrid[0:size[0], 0:size[1]] + 0.5
  source = inverse[:, :1, None] * y + inverse[:, 1:2, None] * x + inverse[:, 2:, None]
  return (np.abs(source - np.round(source)) < 1e-4).any(axis=0)


@pytest.mark.parametrize("channels", [3, 1])
@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_every_op_at_every_few_bins_equals_torchvision(tv, policy, channels):
  x = _image(23, 31, c=channels)
  size = x.shape[:2]
  for op in auto_augment.OPS:
    values = auto_augment.magnitudes(policy, op, size)
    for b in (0, 9, 17, 30) if values is not None else (0,):
      for sign in (1, -1) if op in auto_augment.GEOMETRIC + ("brightness", "contrast") else (1,):
        m = 0.0 if values is None else sign * float(values[b])
        got = auto_augment.apply_op({"image": x, "label": 0}, op, m)["image"]
        want = _reference(tv, x, op, m)
        assert got.shape == x.shape and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - want.astype(int)).max(axis=-1)
        if op in auto_augment.GEOMETRIC:  # The same pixels, except at ties.
          assert not (diff & ~_on_pixel_edges(op, m, size)).any(), (op, m)
        else:  # float32 in another order may truncate one level apart, rarely.
          assert diff.max() <= 1 and (diff > 0).mean() <= 0.01, (op, m)


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_op_list_and_magnitude_ranges_are_torchvisions(tv, policy):
  size = (40, 56)
  # pylint: disable=protected-access
  space = (tv.RandAugment()._augmentation_space(31, size) if policy == "randaugment" else
           tv.TrivialAugmentWide()._augmentation_space(31))
  assert list(space) == [TV_NAMES[op] for op in auto_augment.OPS]
  for op in auto_augment.OPS:
    values, signed = space[TV_NAMES[op]]
    ours = auto_augment.magnitudes(policy, op, size)
    assert (ours is None) == (values.ndim == 0), op
    if ours is not None:
      np.testing.assert_allclose(ours, values.numpy(), rtol=1e-6, atol=1e-4, err_msg=op)
    assert signed == (op in auto_augment._SIGNED), op  # pylint: disable=protected-access


def test_bin_zero_is_the_identity():
  x = _image() % 255  # No 255: solarize's bin 0 (threshold 255) inverts only those.
  for policy in ("randaugment", "trivialaugment"):
    for op in auto_augment.OPS:
      values = auto_augment.magnitudes(policy, op, x.shape[:2])
      if values is not None:
        out = auto_augment.apply_op({"image": x}, op, float(values[0]), {"image": "image"})
        np.testing.assert_array_equal(out["image"], x, err_msg=op)


def test_rotate_by_90_degrees_moves_a_marked_pixel_counter_clockwise():
  x = np.zeros((8, 10, 1), np.uint8)
  x[1, 6] = 200  # Centre (1.5, 6.5): 2.5 above and 1.5 right of the image centre (4, 5).
  out = auto_augment.apply_op({"image": x}, "rotate", 90.0, {"image": "image"})["image"]
  assert list(zip(*np.nonzero(out[..., 0]))) == [(2, 2)]  # 1.5 above, 2.5 left.
  out = auto_augment.apply_op({"image": x}, "translate_x", -3.7, {"image": "image"})["image"]
  assert list(zip(*np.nonzero(out[..., 0]))) == [(1, 3)]  # Whole pixels, truncated.
  out = auto_augment.apply_op({"image": x}, "shear_x", 0.5, {"image": "image"})["image"]
  assert list(zip(*np.nonzero(out[..., 0]))) == [(1, 5)]  # x' = x - 0.5 y = 5.75.


def test_photometric_ops_on_known_arrays_and_against_pil():
  ramp = np.arange(0, 256, 8, dtype=np.uint8).reshape(4, 8, 1)  # 0, 8, ..., 248
  np.testing.assert_array_equal(auto_augment.posterize(ramp, 2), ramp & 0b11000000)
  np.testing.assert_array_equal(auto_augment.solarize(ramp, 128.0),
                                np.where(ramp >= 128, 255 - ramp, ramp))
  low = ramp // 4 + 10  # 10..72 → stretched to 0..255 (254.99.. truncated, as torchvision).
  stretched = auto_augment.autocontrast(low)
  assert stretched.min() == 0 and stretched.max() >= 254
  flat = np.full((4, 4, 3), 77, np.uint8)
  np.testing.assert_array_equal(auto_augment.autocontrast(flat), flat)  # Constant: as is.
  np.testing.assert_array_equal(auto_augment.equalize(flat), flat)
  x = _image(seed=5) // 2 + 30
  pil = Image.fromarray(x)
  np.testing.assert_array_equal(auto_augment.equalize(x), np.asarray(ImageOps.equalize(pil)))
  np.testing.assert_array_equal(auto_augment.posterize(x, 3),
                                np.asarray(ImageOps.posterize(pil, 3)))
  np.testing.assert_array_equal(auto_augment.solarize(x, 100.0),
                                np.asarray(ImageOps.solarize(pil, 100)))
  # PIL rounds where torch truncates: one level apart at most.
  assert np.abs(auto_augment.autocontrast(x).astype(int) -
                np.asarray(ImageOps.autocontrast(pil), int)).max() <= 1
  # Grayscale: colour (saturation) is the identity; the others act on the one channel.
  gray = _image(c=1)
  np.testing.assert_array_equal(auto_augment.color(gray, 1.9), gray)
  assert not np.array_equal(auto_augment.contrast(gray, 1.9), gray)


@pytest.mark.parametrize("shape", [(28, 28, 1), (28, 28), (28, 28, 3)])
@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_policies_keep_shape_and_dtype_on_grayscale_and_rgb(policy, shape):
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, shape, dtype=np.uint8)
  changed = 0
  for _ in range(20):
    out = auto_augment.augment({"image": x, "label": np.int64(1)}, rng, policy, 2, 20)
    assert out["image"].shape == shape and out["image"].dtype == np.uint8
    assert out["label"] == 1
    changed += not np.array_equal(out["image"], x)
  assert changed >= 10


# --- Masks and points follow the geometric ops; boxes refuse -------------------------------------

H, W = 40, 48
# Five 5×5 squares, label k + 1 in the mask and 40 (k + 1) in the image; points at their centres.
CENTRES = [(6, 8), (6, 38), (20, 24), (33, 5), (33, 41)]


def _marked():
  image = np.zeros((H, W, 3), np.uint8)
  mask = np.zeros((H, W, 1), np.uint8)
  for k, (y, x) in enumerate(CENTRES):
    mask[y - 2:y + 3, x - 2:x + 3] = k + 1
    image[y - 2:y + 3, x - 2:x + 3] = 40 * (k + 1)
  points = np.float32([[y + 0.5, x + 0.5] for y, x in CENTRES] + [[np.nan, np.nan]])
  return {"image": image, "mask": mask, "points": points, "label": np.int64(2)}


KINDS = {"image": "image", "mask": "mask", "points": "points", "label": "other"}


def _assert_consistent(out):
  image, mask = out["image"], out["mask"][..., 0]
  outside = mask == transforms.MASK_FILL
  np.testing.assert_array_equal(image[..., 0], np.where(outside, 0, mask * 40))
  assert np.isnan(out["points"][-1]).all()
  for k, (y, x) in enumerate(out["points"][:-1]):
    if 0 <= y < H and 0 <= x < W:  # A point lands in its own square.
      assert mask[int(y), int(x)] == k + 1, (k, y, x)


@pytest.mark.parametrize("op, m", [("rotate", 30.0), ("rotate", -135.0), ("rotate", 90.0),
                                   ("shear_x", 0.99), ("shear_y", -0.3), ("translate_x", -21.7),
                                   ("translate_y", 12.0)])
def test_geometric_ops_move_masks_and_points_with_the_image(op, m):
  example = _marked()
  out = auto_augment.apply_op(example, op, m, KINDS)
  _assert_consistent(out)
  assert out["label"] == 2
  forward = auto_augment.affine_matrix(op, m, (H, W))
  np.testing.assert_allclose(out["points"][:-1],
                             example["points"][:-1] @ forward[:, :2].T + forward[:, 2],
                             rtol=1e-5, atol=1e-4)
  assert (out["mask"] == transforms.MASK_FILL).any()  # Uncovered pixels: "no class".


def test_photometric_ops_leave_masks_and_points_alone():
  example = _marked()
  for op in ("equalize", "solarize", "contrast", "posterize"):
    out = auto_augment.apply_op(example, op, 3.0, KINDS)
    np.testing.assert_array_equal(out["mask"], example["mask"])
    np.testing.assert_array_equal(out["points"], example["points"])


def test_a_mask_of_another_resolution_moves_by_the_same_map():
  example = _marked()
  example["mask"] = np.repeat(np.repeat(example["mask"], 2, 0), 2, 1)  # 80×96.
  out = auto_augment.apply_op(example, "rotate", 90.0, KINDS)
  small = out["mask"][::2, ::2, 0]
  np.testing.assert_array_equal(out["image"][..., 0],
                                np.where(small == transforms.MASK_FILL, 0, small * 40))


def test_the_pipeline_augments_masks_and_points_together():
  """TrivialAugment applies one op: where the points moved it was geometric, and the image
  (normalised back to its values) must show the marks where the mask and the points have them;
  elsewhere the mask and points are as they were."""
  options = pipeline.InputOptions(batch_size=8, auto_augment="trivialaugment", crop_padding=0,
                                  random_flip=False, mean=(0.0,), std=(1 / 255,))
  batches = pipeline.train_batches([_marked()] * 8, options, seed=0, keys=tuple(KINDS),
                                   kinds=KINDS)
  moved = 0
  for _ in range(3):
    batch = next(batches)
    for i in range(8):
      row = {k: v[i] for k, v in batch.items()}
      row["image"] = np.round(row["image"]).astype(np.uint8)
      if np.array_equal(row["points"], _marked()["points"], equal_nan=True):
        np.testing.assert_array_equal(row["mask"], _marked()["mask"])
      else:
        _assert_consistent(row)
        moved += 1
  assert moved >= 3


def _detection_like():
  return [{"image": _image(16, 16), "boxes": np.float32([[1, 1, 8, 8]]),
           "labels": np.int32([0])}] * 4


def test_boxes_refuse_auto_augment_naming_the_feature_the_kind_and_the_option():
  kinds = {"image": "image", "boxes": "boxes", "labels": "other"}
  options = pipeline.InputOptions(batch_size=4, auto_augment="randaugment")
  with pytest.raises(errors.UserError, match=r"config.input.auto_augment='randaugment' cannot "
                     r"move feature 'boxes' \(kind 'boxes'\).*rotations and shears"):
    pipeline.train_batches(_detection_like(), options, seed=0, keys=tuple(kinds), kinds=kinds)
  c = _config(**{"task": "detection", "input.image_size": 32, "train.best_metric": "map50",
                 "input.auto_augment": "trivialaugment"})
  with pytest.raises(errors.UserError, match=r"feature 'boxes' \(kind 'boxes'\)"):
    config_lib.validate(c, num_devices=8)
  # Segmentation (masks) takes it.
  config_lib.validate(_config(**{"task": "segmentation", "train.best_metric": "miou",
                                 "input.auto_augment": "randaugment"}), num_devices=8)


@pytest.mark.parametrize("task, metric, feature, kind", [
    ("segmentation", "miou", "mask", "mask"), ("detection", "map50", "boxes", "boxes")])
def test_random_erasing_refuses_pixel_targets(task, metric, feature, kind):
  c = _config(**{"task": task, "train.best_metric": metric, "input.image_size": 32,
                 "input.random_erasing": 0.25})
  with pytest.raises(errors.UserError, match=rf"random_erasing=0.25 would erase image pixels "
                     rf"that feature '{feature}' \(kind '{kind}'\)"):
    config_lib.validate(c, num_devices=8)
  options = pipeline.InputOptions(batch_size=8, random_erasing=0.5)
  kinds = {"image": "image", "points": "points", "label": "other"}
  with pytest.raises(errors.UserError, match=r"feature 'points' \(kind 'points'\)"):
    pipeline.train_batches([_marked()] * 8, options, seed=0, keys=tuple(kinds), kinds=kinds)


def test_non_uint8_images_are_refused_when_the_pipeline_is_built():
  source = [{"image": np.zeros((8, 8, 3), np.float32), "label": np.int64(0)}] * 4
  with pytest.raises(errors.UserError, match="uint8 images with 1 or 3 channels.*float32"):
    pipeline.train_batches(source, pipeline.InputOptions(batch_size=4,
                                                         auto_augment="randaugment"), seed=0)


# --- Random erasing ------------------------------------------------------------------------------


def test_random_erasing_draws_timm_rectangles_and_fills_them_with_noise():
  rng = np.random.default_rng(0)
  example = {"image": np.zeros((32, 40, 3), np.uint8), "label": np.int64(0)}
  draws = [random_erasing.sample(example, rng, probability=0.5) for _ in range(400)]
  boxes = np.stack([d["erase_box"] for d in draws])
  erased = boxes[:, 2] * boxes[:, 3] > 0
  assert 0.4 < erased.mean() < 0.6
  top, left, h, w = boxes[erased].T
  assert (top + h <= 32).all() and (left + w <= 40).all() and (h < 32).all() and (w < 40).all()
  area = h * w / (32 * 40)
  assert area.min() >= 0.01 and area.max() <= 0.36  # 2%-33%, to rounding of the sides.
  assert np.log(h / w).min() > np.log(0.25) and np.log(h / w).max() < np.log(4)
  batch = {"image": np.full((8, 32, 40, 3), 7.0, np.float32),
           "erase_box": np.stack([d["erase_box"] for d in draws[:8]]),
           "erase_seed": np.stack([d["erase_seed"] for d in draws[:8]])}
  out = random_erasing.apply(batch)
  assert set(out) == {"image"}
  for i, (t, l, eh, ew) in enumerate(batch["erase_box"]):
    inside = np.zeros((32, 40), bool)
    inside[t:t + eh, l:l + ew] = True
    np.testing.assert_array_equal(out["image"][i][~inside], 7.0)
    assert not (out["image"][i][inside] == 7.0).any()
  noise = np.concatenate([out["image"][i][out["image"][i] != 7.0] for i in range(8)])
  assert abs(noise.mean()) < 0.2 and 0.8 < noise.std() < 1.2  # Standard normal.
  np.testing.assert_array_equal(random_erasing.apply(batch)["image"], out["image"])


# --- Tied to the record's position ---------------------------------------------------------------


def _source(n=24):
  rng = np.random.default_rng(3)
  return [{"image": rng.integers(0, 256, (12, 12, 1), np.uint8), "label": np.int64(i % 4)}
          for i in range(n)]


ON = dict(auto_augment="randaugment", randaugment_num_ops=2, randaugment_magnitude=15,
          random_erasing=0.5)


def test_the_same_record_position_gives_the_same_augmented_example():
  options = pipeline.InputOptions(batch_size=8, **ON)
  stream = pipeline.train_stream(_source(), options, seed=4)
  again = pipeline.train_stream(_source(), options, seed=4)
  for i in (0, 5, 30, 77):
    a, b = stream[i], again[i]
    assert set(a) == {"image", "label", "erase_box", "erase_seed", "crop_offset", "flip"}
    for k in a:
      np.testing.assert_array_equal(a[k], b[k])
  # Off, the crop offsets and flips are the same draws: the new steps have their own seeds.
  off = pipeline.train_stream(_source(), pipeline.InputOptions(batch_size=8), seed=4)
  for i in range(48):
    np.testing.assert_array_equal(off[i]["crop_offset"], stream[i]["crop_offset"])
    assert off[i]["flip"] == stream[i]["flip"] and off[i]["label"] == stream[i]["label"]
  assert sum(not np.array_equal(off[i]["image"], stream[i]["image"]) for i in range(48)) > 30


@pytest.mark.parametrize("policy", ["randaugment", "trivialaugment"])
def test_resumed_and_per_process_streams_equal_the_uninterrupted_one(policy, monkeypatch):
  options = pipeline.InputOptions(batch_size=8, **{**ON, "auto_augment": policy})
  stream = pipeline.train_batches(_source(), options, seed=2)
  batches = [next(stream) for _ in range(6)]  # Crosses two epochs (24 / 8 = 3).
  resumed = pipeline.train_batches(_source(), options, seed=2, start_step=4)
  for want in batches[4:]:
    got = next(resumed)
    assert set(got) == {"image", "label"}
    for k in want:
      np.testing.assert_array_equal(want[k], got[k])
  monkeypatch.setattr(pipeline.jax, "process_count", lambda: 2)
  shares = []
  for p in range(2):
    monkeypatch.setattr(pipeline.jax, "process_index", lambda p=p: p)
    shares.append(next(pipeline.train_batches(_source(), options, seed=2, start_step=3)))
  np.testing.assert_array_equal(batches[3]["image"],
                                np.concatenate([s["image"] for s in shares]))


# --- Config --------------------------------------------------------------------------------------


def _config(**fields):
  c = config_lib.base_config()
  c.input.batch_size = c.input.eval_batch_size = 8
  for field, value in fields.items():
    section, name = field.split(".") if "." in field else (None, field)
    (c[section] if section else c)[name] = value
  return c


@pytest.mark.parametrize("field, value, expected", [
    ("input.auto_augment", "randaug", "valid choices: ['', 'randaugment', 'trivialaugment']"),
    ("input.randaugment_magnitude", 31, "in [0, 30]"),
    ("input.randaugment_magnitude", -1, "in [0, 30]"),
    ("input.randaugment_num_ops", -1, ">= 0"),
    ("input.random_erasing", 1.5, "in [0, 1]"),
    ("input.random_erasing", -0.1, "in [0, 1]"),
])
def test_bad_values_name_the_field_and_the_valid_range(field, value, expected):
  with pytest.raises(errors.UserError) as error:
    config_lib.validate(_config(**{field: value}), num_devices=8)
  message = str(error.value)
  assert f"config.{field}={value!r}" in message and expected in message


def test_the_config_schema_matches_the_module():
  assert config_lib.AUTO_AUGMENTS == auto_augment.POLICIES
  assert config_lib.MAX_MAGNITUDE == auto_augment.NUM_BINS - 1
  config_lib.validate(_config(**{f"input.{k}": v for k, v in ON.items()}), num_devices=8)
  with pytest.raises(errors.UserError, match="valid choices"):  # The standalone API checks too.
    pipeline.train_batches(_source(), pipeline.InputOptions(batch_size=8, auto_augment="ra"),
                           seed=0)
  assert math.isclose(random_erasing.AREA[1], 1 / 3) and random_erasing.ASPECT[0] == 0.3
