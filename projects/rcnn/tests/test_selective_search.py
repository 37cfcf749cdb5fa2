"""Selective search: graph segmentation, hierarchical grouping, proposals on hand-made scenes."""

import time

import numpy as np
import pytest

from projects.rcnn import selective_search as ss
from vision_jax.tasks.detection.metrics import box_iou


def _scene(seed=0, size=64):
  """A noisy striped background with a red square, a blue disc and a yellow bar; their boxes."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:size, :size]
  image = np.stack([90 + 30 * ((xx // 4) % 2), 110 + 0 * xx, 80 + 20 * ((yy // 6) % 2)], -1)
  image = image + rng.normal(0, 6, (size, size, 3))
  image[8:24, 6:22] = (220, 30, 30)  # Red square: box (8, 6, 24, 22).
  disc = (yy - 42.5) ** 2 + (xx - 44.5) ** 2 <= 9 ** 2
  image[disc] = (40, 70, 235)  # Blue disc.
  image[48:58, 4:30] = (240, 220, 30)  # Yellow bar.
  rows, cols = np.nonzero(disc)
  boxes = np.array([[8, 6, 24, 22], [rows.min(), cols.min(), rows.max() + 1, cols.max() + 1],
                    [48, 4, 58, 30]], np.float32)
  return np.clip(image, 0, 255).astype(np.uint8), boxes


def test_felzenszwalb_splits_a_two_region_image_in_two():
  image = np.zeros((20, 30, 3), np.float32)
  image[:, :13] = (200, 20, 20)
  image[:, 13:] = (20, 20, 200)
  image += np.random.default_rng(0).normal(0, 3, image.shape)
  labels = ss.felzenszwalb(image, k=100, min_size=5, sigma=0.0)
  assert labels.shape == (20, 30) and labels.dtype == np.int32
  assert len(np.unique(labels)) == 2
  assert len(np.unique(labels[:, :13])) == 1 and len(np.unique(labels[:, 13:])) == 1
  assert labels[0, 0] != labels[0, -1]
  # Smoothing blurs the edge into 1-pixel-wide columns of in-between colours (20 px each);
  # a minimum segment size above that folds them into the two sides.
  smoothed = ss.felzenszwalb(image, k=100, min_size=25)
  assert len(np.unique(smoothed)) == 2
  assert (smoothed[:, :11] == smoothed[0, 0]).all() and (smoothed[:, 15:] == smoothed[0, -1]).all()


def test_felzenszwalb_k_and_min_size_control_segment_size():
  image = np.random.default_rng(0).uniform(0, 255, (24, 24, 3))
  fine = ss.felzenszwalb(image, k=1, min_size=1, sigma=0.0)
  coarse = ss.felzenszwalb(image, k=500, min_size=1, sigma=0.0)
  assert len(np.unique(fine)) > len(np.unique(coarse)) > 1
  big = ss.felzenszwalb(image, k=1, min_size=30, sigma=0.0)
  assert np.bincount(big.ravel()).min() >= 30
  assert set(np.unique(fine)) == set(range(fine.max() + 1))  # Labels are 0 .. n - 1.


def test_hierarchical_grouping_of_three_stripes():
  labels = np.repeat(np.array([[0] * 4 + [1] * 4 + [2] * 4]), 6, axis=0)  # (6, 12)
  colours = np.zeros((6, 12, 3), np.float32)
  colours[:, :4], colours[:, 4:8], colours[:, 8:] = 10, 20, 250
  features = ss.region_features(labels, colours)
  np.testing.assert_array_equal(features["size"], [24, 24, 24])
  np.testing.assert_array_equal(features["box"], [[0, 0, 6, 4], [0, 4, 6, 8], [0, 8, 6, 12]])
  for name, dim in (("colour", 75), ("texture", 240)):
    assert features[name].shape == (3, dim)
    np.testing.assert_allclose(features[name].sum(1), 1.0, rtol=1e-6)
  boxes = ss.hierarchical_grouping(labels, features, ("colour",))
  # 2n - 1 regions; the two similar dark stripes merge first, the whole image last (row 0).
  np.testing.assert_array_equal(boxes, [[0, 0, 6, 12], [0, 0, 6, 8], [0, 0, 6, 4],
                                        [0, 4, 6, 8], [0, 8, 6, 12]])


@pytest.mark.parametrize("mode", ["single", "fast"])
def test_proposals_cover_every_object(mode):
  image, objects = _scene()
  boxes = ss.selective_search(image, mode=mode)
  assert boxes.ndim == 2 and boxes.shape[1] == 4 and boxes.dtype == np.float32
  assert (boxes[:, :2] >= 0).all() and (boxes[:, 2:] <= 64).all()
  assert (boxes[:, 2:] - boxes[:, :2] >= 2).all()
  assert len(np.unique(boxes, axis=0)) == len(boxes)  # No duplicates.
  best = box_iou(objects, boxes).max(axis=1)
  assert (best >= 0.7).all(), best


def test_more_strategies_give_more_boxes_and_max_boxes_cuts():
  image, _ = _scene(seed=1)
  single = ss.selective_search(image, mode="single")
  fast = ss.selective_search(image, mode="fast")
  assert len(fast) > len(single)
  cut = ss.selective_search(image, mode="fast", max_boxes=10)
  np.testing.assert_array_equal(cut, fast[:10])  # The best ranked, in order.
  np.testing.assert_array_equal(ss.selective_search(image, seed=3),
                                ss.selective_search(image, seed=3))


def test_fast_mode_is_well_under_a_second_per_64px_image():
  image, _ = _scene(seed=2)
  ss.selective_search(image)
  start = time.perf_counter()
  ss.selective_search(image, mode="fast")
  assert time.perf_counter() - start < 1.0


def test_colour_spaces_of_known_colours():
  pixels = np.array([[[255, 0, 0], [255, 255, 255], [0, 0, 0]]], np.uint8)  # (1, 3, 3)
  hsv = ss.to_colour_space(pixels, "hsv")
  np.testing.assert_allclose(hsv[0, 0], [0, 255, 255], atol=1e-3)  # Red: hue 0, saturated.
  np.testing.assert_allclose(hsv[0, 1], [0, 0, 255], atol=1e-3)
  lab = ss.to_colour_space(pixels, "lab")
  np.testing.assert_allclose(lab[0, 1], [255, 128, 128], atol=1.5)  # White: L = 100, a = b = 0.
  np.testing.assert_allclose(lab[0, 2], [0, 128, 128], atol=1e-3)
  rgi = ss.to_colour_space(pixels, "rgi")
  np.testing.assert_allclose(rgi[0, 0], [255, 0, 85], atol=1e-3)
  for space in ss.COLOUR_SPACES:
    out = ss.to_colour_space(pixels, space)
    assert out.shape == pixels.shape and out.min() >= 0 and out.max() <= 255


def test_bad_arguments_name_the_valid_choices():
  image, _ = _scene()
  with pytest.raises(ValueError, match="valid choices.*fast"):
    ss.selective_search(image, mode="slow")
  with pytest.raises(ValueError, match="valid choices.*hsv"):
    ss.to_colour_space(image, "cmyk")
  labels = np.zeros((4, 4), np.int32)
  features = ss.region_features(labels, np.zeros((4, 4, 3), np.float32))
  with pytest.raises(ValueError, match="valid choices.*texture"):
    ss.hierarchical_grouping(labels, features, ("shape",))
  with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
    ss.selective_search(image[..., 0])
