"""R-CNN: warped crops, proposal labels and sampling, model outputs, loss, detection, training."""

import functools
import json
import math

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projects.rcnn import model as rcnn
from projects.rcnn import train as rcnn_train
from tests.user_backbone import UserBackbone

TINY_CNN = flax.core.FrozenDict(features=(8, 16), hidden=32)


# --- Warping ------------------------------------------------------------------------------------


@pytest.fixture
def image():
  return jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 32, 2)), jnp.float32)


def _warp(image, box, crop_size, padding):
  return np.asarray(rcnn.warp_crops(image, jnp.asarray([[box]], jnp.float32), crop_size,
                                    padding)[0, 0])


def test_warp_at_the_box_size_is_the_box(image):
  np.testing.assert_allclose(_warp(image, [8, 4, 24, 20], 16, 0), image[0, 8:24, 4:20],
                             atol=1e-5)


def test_warp_to_half_size_averages_pixel_pairs(image):
  # Each output pixel's centre falls between two input pixels on each axis: a 2x2 mean.
  expected = image[0, 8:24, 4:20].reshape(8, 2, 8, 2, 2).mean(axis=(1, 3))
  np.testing.assert_allclose(_warp(image, [8, 4, 24, 20], 8, 0), expected, atol=1e-5)


def test_context_padding_adds_p_pixels_of_image_around_the_box(image):
  # 20 px crop, p = 2: the 16 px box fills the central 16 px, 2 px of image on each side.
  np.testing.assert_allclose(
      np.asarray(rcnn.context_boxes(jnp.asarray([8.0, 8, 24, 24]), 20, 2)), [6, 6, 26, 26])
  np.testing.assert_allclose(_warp(image, [8, 8, 24, 24], 20, 2), image[0, 6:26, 6:26],
                             atol=1e-5)


def test_warp_pads_outside_the_image_with_zero(image):
  crop = _warp(image, [-8, -8, 8, 8], 16, 0)
  np.testing.assert_allclose(crop[8:, 8:], image[0, :8, :8], atol=1e-5)
  assert np.all(crop[:7] == 0) and np.all(crop[:, :7] == 0)  # The normalised mean.


def test_bad_context_padding_fails_early():
  with pytest.raises(ValueError, match="padding"):
    rcnn.context_boxes(jnp.zeros((1, 4)), 32, 16)


# --- Labels and sampling ------------------------------------------------------------------------


def test_label_proposals_hand_worked():
  gt_boxes = jnp.asarray([[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 10, 14]], jnp.float32)
  gt_labels = jnp.asarray([2, 0, 5])
  gt_valid = jnp.asarray([True, True, False])  # The third would match proposal 1 exactly.
  proposals = jnp.asarray([
      [0, 0, 10, 10],  # IoU 1 with box 0.
      [0, 0, 10, 14],  # IoU 100 / 140 = 0.71 with box 0: foreground, regressed.
      [0, 0, 10, 20],  # IoU 0.5: foreground, not regressed (< 0.6).
      [0, 0, 10, 25],  # IoU 0.4: background.
      [22, 20, 40, 40],  # IoU 0.9 with box 1 (class 0).
      [0, 0, 10, 10],  # Padding.
  ], jnp.float32)
  valid = jnp.asarray([True] * 5 + [False])
  out = jax.jit(rcnn.label_proposals)(proposals, valid, gt_boxes, gt_labels, gt_valid)
  np.testing.assert_array_equal(out["labels"], [3, 3, 3, 0, 1, rcnn.IGNORE])
  np.testing.assert_array_equal(out["regress"], [True, True, False, False, True, False])
  np.testing.assert_allclose(out["iou"][:5], [1, 100 / 140, 0.5, 0.4, 0.9], rtol=1e-6)
  # Box 0 from proposal 1: centre x 5 vs 7, width 10 vs 14; weights (10, 10, 5, 5).
  np.testing.assert_allclose(out["targets"][1], [0, 10 * (5 - 7) / 14, 0, 5 * math.log(10 / 14)],
                             rtol=1e-5, atol=1e-6)
  # Box 1 from proposal 4: centre y 30 vs 31, height 20 vs 18.
  np.testing.assert_allclose(out["targets"][4], [10 * (30 - 31) / 18, 0, 5 * math.log(20 / 18), 0],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(np.asarray(out["targets"])[[0, 2, 3, 5]], 0)


def test_label_proposals_without_any_valid_ground_truth_is_all_background():
  out = rcnn.label_proposals(jnp.asarray([[0, 0, 5, 5.0]]), jnp.asarray([True]),
                             jnp.zeros((1, 4)), jnp.zeros((1,), jnp.int32), jnp.asarray([False]))
  assert int(out["labels"][0]) == rcnn.BACKGROUND and not bool(out["regress"][0])


def test_sample_rois_takes_a_quarter_foreground_and_never_padding():
  labels = jnp.asarray([-1, 1, 2, 0, 0, 0, 0, 0, 0, 3, 0, -1])  # 3 foreground, 7 background.
  sample = jax.jit(rcnn.sample_rois, static_argnums=(2,))
  picks = set()
  for seed in range(10):
    index, ok = sample(jax.random.key(seed), labels, 8)
    index, ok = np.asarray(index), np.asarray(ok)
    assert ok.all() and len(set(index.tolist())) == 8
    picked = np.asarray(labels)[index]
    assert (picked[:2] > 0).all() and (picked[2:] == 0).all()
    picks.add(tuple(sorted(index.tolist())))
  assert len(picks) > 1  # Random.
  index, ok = sample(jax.random.key(0), labels, 12)  # Asks for more than there are.
  index, ok = np.asarray(index), np.asarray(ok)
  assert ok.sum() == 10 and not ok[10:].any()
  assert sorted(index[ok].tolist()) == list(range(1, 11))


# --- Model, loss, detection ---------------------------------------------------------------------


def test_model_outputs_under_jit():
  model = rcnn.RCNN(num_classes=6, backbone="simple_cnn", backbone_kwargs=TINY_CNN)
  crops = jnp.ones((2, 5, 16, 16, 3))
  variables = model.init(jax.random.key(0), crops[0])
  assert set(variables["params"]) == {"backbone", "cls_score", "bbox_pred"}
  assert "head" not in variables["params"]["backbone"]  # The backbone's classifier is skipped.
  logits, deltas = jax.jit(model.apply)(variables, crops)
  assert logits.shape == (2, 5, 7) and deltas.shape == (2, 5, 6, 4)
  assert logits.dtype == deltas.dtype == jnp.float32
  assert np.isfinite(logits).all() and np.isfinite(deltas).all()


@pytest.mark.parametrize("backbone,kwargs,size", [
    ("resnet20", {}, 32), ("vgg11_bn", {"widths": (8, 8, 16, 16, 16)}, 32),
    ("resnet18", {"num_filters": 8}, 32), ("mlp", {}, 16)])
def test_any_registry_backbone(backbone, kwargs, size):
  model = rcnn.RCNN(num_classes=3, backbone=backbone, backbone_kwargs=flax.core.FrozenDict(kwargs))
  (logits, deltas), _ = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x), jnp.zeros((4, size, size, 3)))
  assert logits.shape == (4, 4) and deltas.shape == (4, 3, 4)


def test_region_features_are_the_backbones_pre_logits_fc7_for_vgg():
  """VGG keeps fc6/fc7 (`fc_in_trunk`): the region feature is fc7's, the paper's, and the
  parameters are those R-CNNs had when the classifier was intercepted."""
  model = rcnn.RCNN(num_classes=3, backbone="vgg11_bn",
                    backbone_kwargs=flax.core.FrozenDict(widths=(8, 8, 16, 16, 16), hidden=32))
  variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((4, 32, 32, 3)))
  params = variables["params"]
  assert {"fc6", "fc7"} <= set(params["backbone"]) and "head" not in params["backbone"]
  assert params["backbone"]["fc6"]["kernel"].shape == (7 * 7 * 16, 32)
  assert params["cls_score"]["kernel"].shape == (32, 4)
  # Asked for, torchvision's split: the region feature is the flattened pooled map.
  pooled = rcnn.RCNN(num_classes=3, backbone="vgg11_bn", backbone_kwargs=flax.core.FrozenDict(
      widths=(8, 8, 16, 16, 16), hidden=32, fc_in_trunk=False))
  params = jax.eval_shape(pooled.init, jax.random.key(0), jnp.zeros((4, 32, 32, 3)))["params"]
  assert not {"fc6", "fc7"} & set(params["backbone"])
  assert params["cls_score"]["kernel"].shape == (7 * 7 * 16, 4)


def test_rcnn_on_a_user_backbone():
  model = rcnn.RCNN(num_classes=2,
                    backbone=functools.partial(UserBackbone, num_stages=1, width=4))
  crops = jnp.ones((2, 3, 8, 8, 3))
  (logits, deltas), variables = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x), crops)
  assert set(variables["params"]["backbone"]) == {"conv1"}
  assert variables["params"]["cls_score"]["kernel"].shape == (4, 3)  # pre_logits: (B, 4).
  assert logits.shape == (2, 3, 3) and deltas.shape == (2, 3, 2, 4)


def test_unknown_backbone_names_the_choices():
  with pytest.raises(ValueError, match="valid choices.*resnet20"):
    rcnn.RCNN(num_classes=2, backbone="resnet7").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))


def test_loss_hand_worked():
  logits = jnp.zeros((4, 3))  # K = 2.
  deltas = jnp.zeros((4, 2, 4))
  labels = jnp.asarray([2, 0, 1, -1])
  targets = jnp.asarray([[0.5, 0, 0, 0], [9, 9, 9, 9], [2.0, 0, 0, 0], [9, 9, 9, 9]])
  regress = jnp.asarray([True, True, True, True])
  valid = jnp.asarray([True, True, True, True])  # The IGNORE row is dropped anyway.
  total, metrics = rcnn.loss(logits, deltas, labels, targets, regress, valid)
  assert float(metrics["cls_loss"]) == pytest.approx(math.log(3), rel=1e-6)
  # Smooth L1: 0.5 * 0.5^2 for row 0, 2 - 0.5 for row 2; background row 1 has no box loss.
  assert float(metrics["box_loss"]) == pytest.approx((0.125 + 1.5) / 3, rel=1e-6)
  assert float(total) == pytest.approx(math.log(3) + 1.625 / 3, rel=1e-6)
  assert float(metrics["foreground_fraction"]) == pytest.approx(2 / 3)


def test_detect_decodes_clips_and_suppresses_per_class():
  proposals = jnp.asarray([[10, 10, 40, 70], [11, 10, 40, 68], [10, 10, 40, 70],
                           [0, 0, 20, 20]], jnp.float32)
  valid = jnp.asarray([True, True, True, False])
  logits = jnp.asarray([[0, -10, 10], [0, -10, 5], [0, 8, -10], [0, 20, 20]], jnp.float32)
  deltas = jnp.zeros((4, 2, 4)).at[2, 0, 1].set(1.0)  # Moves region 2's class-0 box by 0.1 w.
  out = jax.jit(rcnn.detect, static_argnames=("height", "width", "max_detections"))(
      logits, deltas, proposals, valid, height=64, width=64, max_detections=5)
  assert out["boxes"].shape == (5, 4)
  np.testing.assert_array_equal(out["valid"], [True, True, False, False, False])
  np.testing.assert_array_equal(out["labels"][:2], [1, 0])  # Region 1 is suppressed by 0.
  np.testing.assert_allclose(out["boxes"][:2], [[10, 10, 40, 64], [10, 16, 40, 64]], atol=1e-4)
  np.testing.assert_allclose(out["scores"][:2], jax.nn.softmax(logits[jnp.asarray([0, 2])])[
      jnp.arange(2), jnp.asarray([2, 1])], rtol=1e-6)


# --- Training -----------------------------------------------------------------------------------


def test_a_tiny_training_run_lowers_the_loss_and_compiles_once():
  script = rcnn_train
  data = script.load_split("train", 4, 32)
  data.update(script.compute_proposals(data["images"], "single", 32, workers=1))
  model = rcnn.RCNN(num_classes=script.NUM_CLASSES, backbone="simple_cnn",
                    backbone_kwargs=TINY_CNN)
  state = script.create_state(model, 16, 40, 3e-3, seed=0)
  step = script.make_train_step(model, crop_size=16, padding=1, rois_per_image=16)
  batch = {"images": (data["images"] / 255.0 - 0.5).astype(np.float32),
           **{k: data[k] for k in ("proposals", "valid", "gt_boxes", "gt_labels", "gt_valid")}}
  losses = []
  for _ in range(40):
    state, metrics = step(state, batch)
    losses.append(float(metrics["loss"]))
  assert np.isfinite(losses).all()
  assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3]), losses
  assert step._cache_size() == 1  # One compilation for all 40 steps.


@pytest.mark.slow
def test_experiment_script_end_to_end(tmp_path):
  results = rcnn_train.main([
      f"--workdir={tmp_path}", "--train_images=8", "--test_images=4", "--image_size=32",
      "--steps=3", "--batch_images=2", "--rois_per_image=16", "--crop_size=16", "--padding=1",
      "--workers=1", "--max_proposals=64", "--eval_batch=2",
      f"--backbone_kwargs={json.dumps(dict(TINY_CNN))}"])
  stored = json.load(open(tmp_path / "results.json"))
  assert stored["test"]["map50"] == pytest.approx(results["test"]["map50"])
  assert 0 <= stored["test"]["map"] <= stored["test"]["map50"] <= 1
  assert 0 < stored["proposals_test"]["recall@0.5"] <= 1
  assert 0 < stored["proposals_test"]["proposals_kept"] <= 64
