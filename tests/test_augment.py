"""Key-aware augmentation: every geometric op moves images, masks, boxes and points together;
features the pipeline cannot move or batch are early errors naming them; the batches of the
shipped input settings are those of the code before feature kinds (golden checksums)."""

import hashlib

import numpy as np
import pytest

from vision_jax import config as config_lib
from vision_jax import errors
from vision_jax.data import pipeline, transforms
from vision_jax.models import info
from vision_jax.tasks.detection import task as detection

KINDS = {"image": "image", "mask": "mask", "boxes": "boxes", "points": "points",
         "label": "other"}
H, W = 40, 48
# Box k is painted into the mask as k + 1 and into the image's red channel. The third touches
# the bottom-left corner, so crops cut it or remove it; the fourth row is padding.
BOXES = np.float32([[4, 6, 14, 20], [20, 28, 34, 46], [37, 0, 40, 3], [0, 0, 0, 0]])
# Point k (at a pixel centre) is the centre of a 3×3 square painted into the mask as 10 + k and
# into the green channel. The third row is padding (NaN): it must stay NaN.
POINTS = np.float32([[9.5, 30.5], [28.5, 10.5], [np.nan, np.nan]])


def _marked_example() -> dict:
  image = np.zeros((H, W, 3), np.uint8)
  mask = np.zeros((H, W, 1), np.uint8)
  for k, (y0, x0, y1, x1) in enumerate(BOXES[:3].astype(int)):
    mask[y0:y1, x0:x1] = k + 1
    image[y0:y1, x0:x1, 0] = 200
  for k, (y, x) in enumerate(POINTS[:2].astype(int)):
    mask[y - 1:y + 2, x - 1:x + 2] = 10 + k
    image[y - 1:y + 2, x - 1:x + 2, 1] = 200
  return {"image": image, "mask": mask, "boxes": BOXES.copy(), "points": POINTS.copy(),
          "label": np.int64(3)}


def _within(shape, box, margin):
  """(h, w) True where a pixel's centre lies inside `box` grown by `margin` (shrunk if < 0)."""
  cy, cx = np.mgrid[0:shape[0], 0:shape[1]] + 0.5
  y0, x0, y1, x1 = box
  return (cy > y0 - margin) & (cy < y1 + margin) & (cx > x0 - margin) & (cx < x1 + margin)


def _assert_region(marked, boxes, margin):
  """Pixels deeper than `margin` inside `boxes` are marked, none beyond `margin` outside."""
  surely = np.any([_within(marked.shape, b, -margin) for b in boxes], axis=0)
  maybe = np.any([_within(marked.shape, b, margin) for b in boxes], axis=0)
  assert not (surely & ~marked).any(), "unmarked pixels inside the moved box"
  assert not (marked & ~maybe).any(), "marked pixels outside the moved box"


def _moved(box, scale, shift):
  """`box` (ymin, xmin, ymax, xmax) through y·sy + ty, x·sx + tx (sorted: flips swap ends)."""
  ys = sorted(np.float64([box[0], box[2]]) * scale[0] + shift[0])
  xs = sorted(np.float64([box[1], box[3]]) * scale[1] + shift[1])
  return np.array([ys[0], xs[0], ys[1], xs[1]])


def _assert_marks_follow(out: dict, exact: bool, image: bool = True) -> None:
  """The transformed marks sit where the transformed boxes and points say.

  The op's map is read from the two points (never clipped, so they carry it exactly); the marks
  check the points, and the boxes must be that map of the input boxes, clipped.

  Tolerances: flips and integer crops copy pixels, so marks match exactly. Nearest resampling
  of the mask marks an output pixel exactly when its centre maps into the source box (to float
  rounding: 1e-3 px). The image's bilinear filter spreads a source pixel over max(1, scale)
  output pixels (its support is one source pixel when enlarging, one output pixel when
  shrinking with antialiasing): its marks may reach that far past the edges, and are full that
  far inside.
  """
  mask = out["mask"][..., 0]
  h, w = mask.shape
  points = np.float64(out["points"])
  scale = (points[1] - points[0]) / (np.float64(POINTS[1]) - POINTS[0])  # (y, x)
  shift = points[0] - scale * POINTS[0]
  assert np.isnan(out["points"][2]).all()  # Padding points stay NaN.
  np.testing.assert_array_equal(out["boxes"][3], 0)  # Padding boxes stay.
  tol = 0.0 if exact else 1e-3
  footprint = 0.0 if exact else max(1.0, *np.abs(scale))
  boxes = [_moved(b, scale, shift) for b in BOXES[:3]]
  for k, box in enumerate(boxes):
    clipped = np.clip(box, 0, [h, w, h, w])
    side = min(clipped[2] - clipped[0], clipped[3] - clipped[1])
    if side > 1e-3 or not out["boxes"][k].any():  # (Slivers: the map is read to ~1e-6.)
      np.testing.assert_allclose(out["boxes"][k], clipped if side > 1e-3 else 0, atol=1e-3)
    _assert_region(mask == k + 1, [box], tol)
  squares = [_moved([y - 1.5, x - 1.5, y + 1.5, x + 1.5], scale, shift) for y, x in POINTS[:2]]
  for k, square in enumerate(squares):
    _assert_region(mask == 10 + k, [square], tol)
  if image:
    _assert_region(out["image"][..., 0] > 0, boxes, footprint)
    _assert_region(out["image"][..., 1] > 0, squares, footprint)


def _batch_of(examples):
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def _row(batch, i):
  return {k: v[i] for k, v in batch.items()}


# --- Every geometric op moves every kind ---------------------------------------------------------


def test_flip_moves_masks_boxes_and_points_exactly():
  batch = _batch_of([_marked_example()] * 2)
  out = transforms.flip_where(batch, np.array([True, False]), kinds=KINDS)
  _assert_marks_follow(_row(out, 0), exact=True)
  _assert_marks_follow(_row(out, 1), exact=True)
  np.testing.assert_array_equal(out["boxes"][0, 0], [4, 48 - 20, 14, 48 - 6])  # x → W - x.
  np.testing.assert_array_equal(out["points"][0, 0], [9.5, 48 - 30.5])


def test_pad_and_crop_moves_clips_and_drops_boxes_exactly():
  offsets = np.array([[0, 0], [8, 8], [0, 8], [8, 0], [4, 4], [1, 7], [2, 3]])
  batch = _batch_of([_marked_example()] * len(offsets))
  flips = np.arange(len(offsets)) % 2 == 0
  out = transforms.apply_crop_and_flip({**batch, "crop_offset": offsets, "flip": flips},
                                       padding=4, kinds=KINDS)
  for i in range(len(offsets)):
    _assert_marks_follow(_row(out, i), exact=True)
  # Offset (0, 0) shifts down by 4: the corner box (rows 37-40) moves below row 40, and
  # (8, 8) shifts it left of column 0: gone, i.e. padding. (8, 0): up 4, right 4.
  np.testing.assert_array_equal(out["boxes"][0, 2], 0)
  np.testing.assert_array_equal(out["boxes"][1, 2], 0)
  np.testing.assert_array_equal(out["boxes"][3, 2], [33, 4, 36, 7])
  np.testing.assert_array_equal(out["mask"][0, :4, :, 0], transforms.MASK_FILL)  # Padded rows.
  assert len({tuple(b) for b in out["boxes"][:, 1]}) > 3


@pytest.mark.parametrize("size, fraction", [(24, 1.0), (32, 0.5), (40, 1.0), (36, 0.9)])
def test_resize_and_center_crop_moves_marks_within_the_resampling_footprint(size, fraction):
  out = transforms.resize_and_center_crop(_marked_example(), size, fraction, kinds=KINDS)
  assert out["image"].shape == (size, size, 3) and out["mask"].shape == (size, size, 1)
  _assert_marks_follow(out, exact=False)


def test_random_resized_crop_moves_marks_within_the_resampling_footprint():
  rng = np.random.default_rng(0)
  for _ in range(12):
    out = transforms.random_resized_crop(_marked_example(), rng, size=32, scale=(0.2, 1.0),
                                         kinds=KINDS)
    _assert_marks_follow(out, exact=False)


def test_random_scale_crop_moves_marks_within_the_resampling_footprint():
  rng = np.random.default_rng(1)
  for _ in range(12):
    out = transforms.random_scale_crop(_marked_example(), rng, size=32, kinds=KINDS)
    _assert_marks_follow(out, exact=False)


def test_points_outside_the_window_keep_their_coordinates():
  example = _marked_example()
  example["points"] = np.float32([[9.5, 2.0], [28.5, 10.5], [np.nan, np.nan]])
  out = transforms.resize_and_center_crop(example, 40, kinds=KINDS)  # Columns 4..44, no zoom.
  np.testing.assert_array_equal(out["points"][:2], [[9.5, -2.0], [28.5, 6.5]])


@pytest.mark.parametrize("crop", ["pad", "random_scale", "random_resized"])
def test_the_pipeline_moves_every_kind_together(crop):
  options = pipeline.InputOptions(batch_size=8, train_crop=crop, crop_padding=4,
                                  image_size=None if crop == "pad" else 32)
  batch = next(pipeline.train_batches([_marked_example()] * 8, options, seed=0,
                                      keys=tuple(KINDS), kinds=KINDS))
  for i in range(8):  # The image is normalised: its marks are checked above, op by op.
    _assert_marks_follow(_row(batch, i), exact=crop == "pad", image=False)
  assert len({tuple(b) for b in batch["points"][:, 0]}) > 2  # Different draws.


# --- Features the pipeline cannot move or batch --------------------------------------------------


def _source(n=16, lengths=None):
  rng = np.random.default_rng(0)
  lengths = lengths or [5] * n
  return [{"image": rng.integers(0, 256, (8, 8, 3), np.uint8), "label": np.int64(i % 3),
           "mask": np.zeros((8, 8, 1), np.uint8), "tokens": np.arange(lengths[i])}
          for i in range(n)]


@pytest.mark.parametrize("crop", ["pad", "random_scale"])
def test_a_feature_without_a_kind_is_an_error_naming_it(crop):
  options = pipeline.InputOptions(batch_size=4, train_crop=crop, image_size=8, crop_padding=0)
  with pytest.raises(errors.UserError, match=r"'mask' has no declared kind.*feature_kinds.*"
                     r"'image', 'mask', 'boxes', 'points', 'other'"):
    pipeline.train_batches(_source(), options, seed=0, keys=("image", "label", "mask"))
  with pytest.raises(errors.UserError, match="'mask' has no declared kind"):
    pipeline.eval_batches(_source(), options, keys=("image", "mask"))  # At the call.
  with pytest.raises(errors.UserError, match="'mask' has no declared kind"):
    pipeline.eval_examples(_source(), options, 2, keys=("image", "mask"))
  # What `example_fn` adds is checked too.
  add = lambda e: {**e, "ids": np.int64(0)}  # noqa: E731
  with pytest.raises(errors.UserError, match="'ids' has no declared kind"):
    pipeline.train_batches(_source(), options, seed=0, example_fn=add)


def test_an_unknown_kind_is_an_error_naming_the_feature():
  with pytest.raises(errors.UserError, match=r"'label' has kind 'class'; valid kinds: \['image'"):
    pipeline.train_batches(_source(), pipeline.InputOptions(batch_size=4), seed=0,
                           kinds={"image": "image", "label": "class"})


def test_a_ragged_feature_is_an_error_naming_it_and_the_fix():
  kinds = {"image": "image", "label": "other", "tokens": "other"}
  options = pipeline.InputOptions(batch_size=4, eval_batch_size=16)
  ragged = _source(lengths=[3 + i % 4 for i in range(16)])
  with pytest.raises(errors.UserError, match=r"'tokens' has different shapes across examples "
                     r".*pad it to one shape in the task's `example_transform`"):
    pipeline.train_batches(ragged, options, seed=0, keys=("image", "label", "tokens"),
                           kinds=kinds)
  # Ragged only after the examples checked up front: named when its batch is stacked.
  late = _source(lengths=[5] * 12 + [7] * 4)
  batches = pipeline.eval_batches(late, options, keys=("image", "tokens"), kinds=kinds)
  with pytest.raises(errors.UserError, match="'tokens' has different shapes"):
    next(batches)


def test_ragged_images_say_to_set_the_image_size():
  source = _source()
  for example in source[::2]:
    example["image"] = np.zeros((9, 8, 3), np.uint8)
  with pytest.raises(errors.UserError, match="'image' has different shapes.*image_size"):
    pipeline.train_batches(source, pipeline.InputOptions(batch_size=4), seed=0)


# --- A plain data API ----------------------------------------------------------------------------


def test_the_pipeline_takes_plain_values():
  options = pipeline.InputOptions(batch_size=4, eval_batch_size=4, crop_padding=2)
  batch = next(pipeline.train_batches(_source(), options, seed=0))
  assert batch["image"].shape == (4, 8, 8, 3) and batch["image"].dtype == np.float32
  evals = list(pipeline.eval_batches(_source(6), options))
  assert [b["weight"].sum() for b in evals] == [4, 2]


def test_input_options_have_the_config_defaults_and_read_the_config():
  section = config_lib.base_config().input
  assert pipeline.InputOptions.from_config(section) == pipeline.InputOptions()
  section.batch_size, section.mean = 8, [0.1, 0.2, 0.3]
  options = pipeline.InputOptions.from_config(section)
  assert options.batch_size == 8 and options.mean == (0.1, 0.2, 0.3)
  hash(options)  # Frozen, all fields hashable.


# --- Shipped settings give the batches they gave before feature kinds ---------------------------


def _golden_source(n=48, size=None, seed=0):
  """Blocky images (fixed or varying size), masks, labels and normalised objects."""
  rng = np.random.default_rng(seed)
  examples = []
  for i in range(n):
    h, w = (size, size) if size else tuple(rng.integers(24, 41, size=2))
    coarse = rng.integers(0, 256, size=(h // 4 + 1, w // 4 + 1, 3), dtype=np.uint8)
    image = np.repeat(np.repeat(coarse, 4, 0), 4, 1)[:h, :w]
    mask = (image[..., :1] // 64).astype(np.uint8)
    y0, x0 = rng.uniform(0, 0.6, size=2)
    bbox = np.float32([[y0, x0, y0 + 0.3, x0 + 0.35], [0.1, 0.5, 0.9, 0.7]])
    examples.append({"image": image, "mask": mask, "label": np.int64(i % 5),
                     "objects": {"bbox": bbox, "label": np.int64([i % 3, 1])}})
  return examples


def _digest(batch: dict, options: pipeline.InputOptions) -> str:
  """sha256 of a batch, its images back in uint8 (exact: float32 rounding is far below 1/2)."""
  h = hashlib.sha256()
  for k in sorted(batch):
    v = np.asarray(batch[k])
    if k == "image" and v.dtype == np.float32:  # Normalised (`raw` of eval_examples is not).
      v = np.round((v * np.float32(options.std) + np.float32(options.mean)) * 255).astype(np.uint8)
    h.update(f"{k}{v.dtype}{v.shape}".encode())
    h.update(np.ascontiguousarray(v).tobytes())
  return h.hexdigest()[:16]


# Computed with the code before feature kinds (commit 76edca0), same settings and sources.
GOLDEN = {
    "cls_pad": ["00347e811eccae46", "c3c7d275fa63523c", "c10e925798258a7c"],
    "cls_rrc": ["413daea0ae0056e2", "1a1df65f7b964730"],
    "cls_eval": ["6e9ca1f26eef87e4"],
    "seg_scale": ["c8b6e4be13f185f1", "ccca2c1f8691e758"],
    "seg_eval": ["65d1ec39cc4fcebb", "f0286c972a228347"],
    "seg_examples": ["346915c7857cbb9a", "346915c7857cbb9a"],
    "det_flip": ["79510592a8ee15d6", "45679086bb62e1fb"],
    "det_eval": ["9e9b4f6f003adf8d", "4e779005c6d33190"],
}


def test_shipped_augmentation_gives_the_same_batches_as_before():
  """Same random draws in the same order, same pixels: resumed and shipped runs unchanged."""
  got = {}
  fixed, varied = _golden_source(size=32), _golden_source(seed=1)
  seg = {"image": "image", "mask": "mask"}
  o = pipeline.InputOptions(batch_size=16)  # "pad" with padding 4 and flips.
  it = pipeline.train_batches(fixed, o, seed=7)
  resumed = next(pipeline.train_batches(fixed, o, seed=7, start_step=4))
  got["cls_pad"] = [_digest(next(it), o), _digest(next(it), o), _digest(resumed, o)]
  o = pipeline.InputOptions(batch_size=16, train_crop="random_resized", image_size=24,
                            center_crop_fraction=0.875, mean=info.IMAGENET_MEAN,
                            std=info.IMAGENET_STD)
  it = pipeline.train_batches(varied, o, seed=1)
  got["cls_rrc"] = [_digest(next(it), o) for _ in range(2)]
  got["cls_eval"] = [_digest(b, o) for b in pipeline.eval_batches(varied, o)]
  o = pipeline.InputOptions(batch_size=16, train_crop="random_scale", image_size=24,
                            scale_range=(0.5, 2.0), crop_padding=0)
  it = pipeline.train_batches(varied, o, seed=3, keys=("image", "mask"), kinds=seg)
  got["seg_scale"] = [_digest(next(it), o) for _ in range(2)]
  o = pipeline.InputOptions(eval_batch_size=32, image_size=24, center_crop_fraction=0.875)
  got["seg_eval"] = [_digest(b, o) for b in pipeline.eval_batches(varied, o, ("image", "mask"),
                                                                  seg)]
  raw, batch = pipeline.eval_examples(varied, o, 4, keys=("image", "mask"), kinds=seg)
  got["seg_examples"] = [_digest(raw, o), _digest(batch, o)]
  task = detection.DetectionTask(image_size=32, max_boxes=4)
  o = pipeline.InputOptions(batch_size=16, eval_batch_size=32, crop_padding=0, image_size=32)
  it = pipeline.train_batches(varied, o, seed=3, keys=task.keys, kinds=task.feature_kinds,
                              example_fn=task.example_transform)
  got["det_flip"] = [_digest(next(it), o) for _ in range(2)]
  got["det_eval"] = [_digest(b, o) for b in pipeline.eval_batches(
      varied, o, keys=task.keys, kinds=task.feature_kinds, example_fn=task.example_transform)]
  assert got == GOLDEN
