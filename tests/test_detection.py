"""Object detection: box ops, NMS, RoIAlign, mAP (by hand and against pycocotools), Faster
R-CNN shapes and static compilation, boxes through the data pipeline, end to end."""

import contextlib
import dataclasses
import io

import chex
import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from vision_jax import config as config_lib
from vision_jax.data import pipeline, transforms
from vision_jax.ops import anchors as anchor_ops
from vision_jax.ops import boxes as box_ops
from vision_jax.ops.roi_align import roi_align
from vision_jax.tasks.detection import faster_rcnn
from vision_jax.tasks.detection import metrics as det_metrics
from vision_jax.tasks.detection import targets as detection_targets
from vision_jax.tasks.detection import task as detection
from vision_jax.train import loop

import shipped
from user_backbone import UserBackbone



_load_config = shipped.load_config


# --- Box ops ------------------------------------------------------------------------------------


def test_area_and_iou_of_hand_worked_boxes():
  a = jnp.array([[0.0, 0.0, 2.0, 2.0], [0.0, 0.0, 1.0, 4.0]])
  b = jnp.array([[1.0, 1.0, 3.0, 3.0], [0.0, 0.0, 2.0, 2.0], [5.0, 5.0, 6.0, 6.0],
                 [2.0, 2.0, 1.0, 1.0]])  # The last one is inverted: area 0.
  np.testing.assert_allclose(box_ops.area(a), [4.0, 4.0])
  np.testing.assert_allclose(box_ops.area(b), [4.0, 4.0, 1.0, 0.0])
  # [0,0,2,2] vs [1,1,3,3]: intersection 1, union 7. [0,0,1,4] vs [0,0,2,2]: 2 / (4 + 4 - 2);
  # vs [1,1,3,3] they only touch (rows 0..1 and 1..3): 0.
  np.testing.assert_allclose(box_ops.pairwise_iou(a, b),
                             [[1 / 7, 1.0, 0.0, 0.0], [0.0, 2 / 6, 0.0, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(det_metrics.box_iou(np.asarray(a), np.asarray(b)),
                             box_ops.pairwise_iou(a, b), rtol=1e-6)
  empty = jnp.zeros((1, 4))
  assert float(box_ops.pairwise_iou(empty, empty)[0, 0]) == 0.0  # No 0 / 0.


def test_encode_hand_values_and_round_trip():
  anchor = jnp.array([0.0, 0.0, 10.0, 20.0])  # Centre (5, 10), size (10, 20).
  box = jnp.array([2.0, 4.0, 22.0, 14.0])  # Centre (12, 9), size (20, 10).
  expected = [10 * 7 / 10, 10 * -1 / 20, 5 * np.log(2.0), 5 * np.log(0.5)]
  np.testing.assert_allclose(box_ops.encode(box, anchor), expected, rtol=1e-6)
  np.testing.assert_allclose(box_ops.encode(box, anchor, (1, 1, 1, 1)),
                             [0.7, -0.05, np.log(2.0), np.log(0.5)], rtol=1e-6)
  rng = np.random.default_rng(0)
  corner = rng.uniform(0, 50, (100, 2))
  anchors = jnp.asarray(np.concatenate([corner, corner + rng.uniform(1, 30, (100, 2))], 1))
  corner = rng.uniform(0, 50, (100, 2))
  boxes = jnp.asarray(np.concatenate([corner, corner + rng.uniform(1, 30, (100, 2))], 1))
  np.testing.assert_allclose(box_ops.decode(box_ops.encode(boxes, anchors), anchors), boxes,
                             atol=1e-4)


def test_decode_clamps_large_scales_and_clip_limits_boxes():
  anchor = jnp.array([0.0, 0.0, 16.0, 16.0])
  huge = box_ops.decode(jnp.array([0.0, 0.0, 5 * 100.0, 5 * 100.0]), anchor)
  np.testing.assert_allclose(huge[2] - huge[0], 1000.0, rtol=1e-5)  # 16 * exp(log(1000 / 16)).
  assert np.isfinite(np.asarray(huge)).all()
  np.testing.assert_allclose(box_ops.clip(jnp.array([[-3.0, 5.0, 70.0, 40.0]]), 64, 32),
                             [[0.0, 5.0, 64.0, 32.0]])


def _numpy_nms(boxes, scores, threshold):
  """The textbook loop: take the best remaining box, drop everything overlapping it."""
  order = list(np.argsort(-scores, kind="stable"))
  kept = []
  while order:
    best = order.pop(0)
    kept.append(best)
    iou = det_metrics.box_iou(boxes[best][None], boxes[order])[0] if order else []
    order = [o for o, v in zip(order, iou) if v <= threshold]
  return kept


@pytest.mark.parametrize("seed", range(4))
def test_nms_matches_a_plain_numpy_loop(seed):
  rng = np.random.default_rng(seed)
  n = 60
  corner = rng.uniform(0, 40, (n, 2))
  boxes = np.concatenate([corner, corner + rng.uniform(4, 20, (n, 2))], 1).astype(np.float32)
  scores = rng.random(n).astype(np.float32)
  nms = jax.jit(box_ops.nms, static_argnums=(2, 3))
  indices, valid = nms(boxes, scores, 0.4, 80)  # More outputs than boxes: padded.
  expected = _numpy_nms(boxes, scores, 0.4)
  assert indices.shape == (80,) and valid.shape == (80,)
  assert int(valid.sum()) == len(expected) < n
  np.testing.assert_array_equal(np.asarray(indices)[np.asarray(valid)], expected)
  few, few_valid = nms(boxes, scores, 0.4, 5)  # Fewer: the best 5 kept.
  np.testing.assert_array_equal(np.asarray(few), expected[:5])
  assert bool(few_valid.all())


def test_nms_skips_padding_and_batched_nms_keeps_classes_apart():
  boxes = jnp.array([[0.0, 0, 10, 10], [1, 1, 11, 11], [0, 0, 10, 10], [30, 30, 40, 40]])
  scores = jnp.array([0.9, 0.8, -jnp.inf, 0.5])  # Box 2 is padding.
  indices, valid = box_ops.nms(boxes, scores, 0.5, 4)
  np.testing.assert_array_equal(indices, [0, 3, 0, 0])
  np.testing.assert_array_equal(valid, [True, True, False, False])
  indices, valid = box_ops.batched_nms(boxes, scores, jnp.array([0, 1, 0, 0]), 0.5, 4)
  np.testing.assert_array_equal(indices[:3], [0, 1, 3])  # Box 1 is another class: kept.
  assert int(valid.sum()) == 3


def test_grid_anchors_are_centred_on_cells():
  anchors = anchor_ops.grid_anchors(2, 3, 8, sizes=(8.0, 16.0), ratios=(0.5, 1.0, 2.0))
  assert anchors.shape == (2 * 3 * 6, 4)
  cell = anchors.reshape(2, 3, 6, 4)
  np.testing.assert_allclose((cell[1, 2, :, 0] + cell[1, 2, :, 2]) / 2, 12.0)  # Row 1 centre.
  np.testing.assert_allclose((cell[1, 2, :, 1] + cell[1, 2, :, 3]) / 2, 20.0)  # Column 2.
  h, w = cell[0, 0, :, 2] - cell[0, 0, :, 0], cell[0, 0, :, 3] - cell[0, 0, :, 1]
  np.testing.assert_allclose(h * w, [64] * 3 + [256] * 3, rtol=1e-5)  # Areas: size squared.
  np.testing.assert_allclose(h / w, [0.5, 1, 2] * 2, rtol=1e-5)


# --- RoIAlign -----------------------------------------------------------------------------------


def _numpy_roi_align(features, box, size, scale, ratio):
  """Detectron2's ROIAlign (aligned=True), one box, written as its CPU loop."""
  h, w, _ = features.shape
  y0, x0, y1, x1 = np.asarray(box, np.float64) * scale - 0.5
  bin_h, bin_w = (y1 - y0) / size, (x1 - x0) / size
  out = np.zeros((size, size, features.shape[2]))

  def bilinear(y, x):
    if y < -1 or y > h or x < -1 or x > w:
      return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    yl, xl = int(y), int(x)
    yh, xh = min(yl + 1, h - 1), min(xl + 1, w - 1)
    if yl >= h - 1:
      yl = yh = h - 1
      y = float(yl)
    if xl >= w - 1:
      xl = xh = w - 1
      x = float(xl)
    ly, lx = y - yl, x - xl
    return ((1 - ly) * (1 - lx) * features[yl, xl] + (1 - ly) * lx * features[yl, xh]
            + ly * (1 - lx) * features[yh, xl] + ly * lx * features[yh, xh])

  for p in range(size):
    for q in range(size):
      for iy in range(ratio):
        for ix in range(ratio):
          out[p, q] += bilinear(y0 + (p + (iy + 0.5) / ratio) * bin_h,
                                x0 + (q + (ix + 0.5) / ratio) * bin_w)
  return out / ratio ** 2


def test_roi_align_of_a_linear_map_is_the_value_at_bin_centres():
  """Bilinear sampling reproduces a linear function, so each bin is f at its centre."""
  ys, xs = np.mgrid[0:4, 0:4]
  features = (10.0 * ys + xs).astype(np.float32)[None, :, :, None]  # (1, 4, 4, 1)
  # Box (1, 1, 3, 3) in pixels at scale 1: bin centres at feature rows/columns 1.0 and 2.0.
  out = roi_align(jnp.asarray(features), jnp.array([[[1.0, 1.0, 3.0, 3.0]]]), 2, 1.0, 2)
  np.testing.assert_allclose(out[0, 0, :, :, 0], [[11.0, 12.0], [21.0, 22.0]], rtol=1e-6)
  # Stride 2 (scale 0.5): box (2, 2, 6, 6) covers the same feature cells.
  out = roi_align(jnp.asarray(features), jnp.array([[[2.0, 2.0, 6.0, 6.0]]]), 2, 0.5, 3)
  np.testing.assert_allclose(out[0, 0, :, :, 0], [[11.0, 12.0], [21.0, 22.0]], rtol=1e-6)


def test_roi_align_matches_detectron2_loop_inside_and_at_borders():
  rng = np.random.default_rng(0)
  features = rng.normal(size=(2, 6, 7, 3)).astype(np.float32)
  boxes = np.array([[[0.0, 0.0, 24.0, 28.0], [3.3, 5.1, 9.7, 17.2], [-6.0, 20.0, 8.0, 36.0]],
                    [[10.0, 2.0, 11.0, 3.0], [20.0, 0.0, 30.0, 10.0], [1.0, 1.0, 1.0, 1.0]]],
                   np.float32)  # Whole map, inside, off the edges, tiny, partly out, empty.
  out = np.asarray(jax.jit(roi_align, static_argnums=(2, 3, 4))(
      jnp.asarray(features), jnp.asarray(boxes), 3, 0.25, 2))
  assert out.shape == (2, 3, 3, 3, 3)
  for b in range(2):
    for r in range(3):
      np.testing.assert_allclose(out[b, r], _numpy_roi_align(features[b], boxes[b, r], 3, 0.25, 2),
                                 atol=1e-5, err_msg=f"image {b}, box {r}")


# --- Targets ------------------------------------------------------------------------------------


def test_rpn_targets_label_and_sample_anchors():
  anchors = jnp.array([[0.0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30], [50, 50, 60, 60],
                       [0, 0, 30, 30], [41, 41, 52, 52]])
  gt = jnp.array([[0.0, 0, 10, 10], [40, 40, 50, 50], [0, 0, 0, 0]])
  labels = jnp.array([2, 0, -1])  # One padding row.
  t = detection_targets.rpn_targets(jax.random.key(0), anchors, gt, labels, num=6,
                                    positive_fraction=0.5, positive_iou=0.7, negative_iou=0.3)
  # Anchor 0 = box 0, anchor 1 IoU 10/11; anchor 5 is box 1's best (IoU 81/140 < 0.7).
  np.testing.assert_array_equal(t["objectness"], [1, 1, 0, 0, 0, 1])
  # Anchor 4 holds box 0 with IoU 100/900 < 0.3: negative; anchors 2, 3 touch nothing.
  np.testing.assert_array_equal(t["weight"], [1, 1, 1, 1, 1, 1])
  np.testing.assert_allclose(t["deltas"][0], 0.0, atol=1e-6)
  t = detection_targets.rpn_targets(jax.random.key(1), anchors, gt, labels, num=4,
                                    positive_fraction=0.25, positive_iou=0.7, negative_iou=0.3)
  assert float(t["objectness"].sum()) == 1 and float(t["weight"].sum()) == 4


def test_roi_targets_sample_foreground_with_classes_and_keep_shapes():
  proposals = jnp.array([[0.0, 0, 10, 10], [0, 0, 9, 10], [30, 30, 40, 40], [0, 0, 0, 0]])
  valid = jnp.array([True, True, True, False])
  gt = jnp.array([[0.0, 0, 10, 10], [0, 0, 0, 0]])
  labels = jnp.array([4, -1])
  t = detection_targets.roi_targets(jax.random.key(0), proposals, valid, gt, labels, num=8,
                                    positive_fraction=0.5, foreground_iou=0.5,
                                    box_weights=box_ops.DEFAULT_WEIGHTS)
  assert t["rois"].shape == (8, 4) and t["labels"].shape == (8,)
  # Candidates: 3 valid proposals + 1 valid ground truth box; 3 of them foreground (class 4 + 1).
  assert float(t["weight"].sum()) == 4
  np.testing.assert_array_equal(np.sort(np.asarray(t["labels"])[np.asarray(t["weight"]) > 0]),
                                [0, 5, 5, 5])
  assert np.isfinite(np.asarray(t["deltas"])).all()  # Empty filler boxes: zero targets.
  taken, target = np.asarray(t["weight"]) > 0, np.asarray(t["deltas"])
  np.testing.assert_allclose(
      box_ops.decode(target[taken], np.asarray(t["rois"])[taken])[np.asarray(t["labels"])[taken]
                                                                    > 0], [[0, 0, 10, 10]] * 3,
      atol=1e-4)


# --- mAP ----------------------------------------------------------------------------------------


def test_map_of_a_hand_worked_ranking():
  """2 objects, 3 detections: hit (0.9), miss (0.8), hit (0.7).

  Recall 1/2, 1/2, 1; precision 1, 1/2, 2/3; its envelope 1, 2/3, 2/3. The 51 recall levels
  0..0.50 read precision 1, the 50 levels 0.51..1 read 2/3: AP = (51 + 50 * 2/3) / 101.
  """
  truth = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30]]), "labels": np.array([0, 0])}]
  det = [{"boxes": np.array([[0, 0, 10, 10], [50, 50, 60, 60], [20, 20, 30, 30]]),
          "labels": np.array([0, 0, 0]), "scores": np.array([0.9, 0.8, 0.7])}]
  result = det_metrics.average_precision(det, truth, num_classes=1)
  expected = (51 + 50 * 2 / 3) / 101
  assert result["map"] == pytest.approx(expected)
  assert result["map50"] == pytest.approx(expected) and result["map75"] == pytest.approx(expected)
  # Ranking the miss last makes the curve perfect.
  det[0]["scores"] = np.array([0.9, 0.1, 0.7])
  assert det_metrics.average_precision(det, truth, 1)["map"] == pytest.approx(1.0)


def test_map_over_iou_thresholds_classes_and_duplicates():
  # Class 0: a box with IoU 0.64 (8x8 inside 10x10): a hit at 0.5, 0.55, 0.6 only.
  # Class 1: ground truth, no detection: AP 0. Class 2: a detection, no ground truth: no AP.
  # Class 3: the same box detected twice: the second is a false positive (ranked last: AP 1).
  truth = [{"boxes": np.array([[0, 0, 10, 10], [20, 20, 30, 30], [40, 40, 50, 50]]),
            "labels": np.array([0, 1, 3])}]
  det = [{"boxes": np.array([[0, 0, 8, 8], [60, 60, 70, 70], [40, 40, 50, 50], [40, 40, 50, 50]]),
          "labels": np.array([0, 2, 3, 3]), "scores": np.array([0.9, 0.8, 0.7, 0.6])}]
  result = det_metrics.average_precision(det, truth, num_classes=4)
  np.testing.assert_allclose(result["ap"][0], [1, 1, 1] + [0] * 7)
  np.testing.assert_allclose(result["ap"][1], 0.0)
  assert np.isnan(result["ap"][2]).all()
  np.testing.assert_allclose(result["ap"][3], 1.0)
  assert result["map50"] == pytest.approx((1 + 0 + 1) / 3)
  assert result["map"] == pytest.approx((0.3 + 0 + 1) / 3)
  assert result["map75"] == pytest.approx((0 + 0 + 1) / 3)


def _random_scenes(rng, num_images, num_classes, noise):
  """Ground truth and detections near it (some mislabelled, some spurious), per image."""
  dets, truths = [], []
  for _ in range(num_images):
    m = int(rng.integers(0, 6))
    corner = rng.uniform(0, 80, (m, 2))
    gt = np.concatenate([corner, corner + rng.uniform(5, 40, (m, 2))], 1)
    gt_labels = rng.integers(0, num_classes, m)
    n = int(rng.integers(0, 10))
    source = rng.integers(0, max(m, 1), n)
    if m:
      boxes = gt[source] + rng.normal(0, noise, (n, 4))
      labels = np.where(rng.random(n) < 0.15, rng.integers(0, num_classes, n), gt_labels[source])
    else:
      corner = rng.uniform(0, 80, (n, 2))
      boxes = np.concatenate([corner, corner + rng.uniform(5, 40, (n, 2))], 1)
      labels = rng.integers(0, num_classes, n)
    boxes = np.concatenate([np.minimum(boxes[:, :2], boxes[:, 2:]),
                            np.maximum(boxes[:, :2], boxes[:, 2:])], 1)
    dets.append({"boxes": boxes, "labels": labels, "scores": rng.random(n)})
    truths.append({"boxes": gt, "labels": gt_labels})
  return dets, truths


def _pycocotools(dets, truths, num_classes):
  """COCOeval's bbox stats and (T, K) AP from its precision array, on the same boxes."""
  xywh = lambda b: [float(b[1]), float(b[0]), float(b[3] - b[1]), float(b[2] - b[0])]  # noqa
  annotations, results = [], []
  for i, (det, truth) in enumerate(zip(dets, truths)):
    for box, label in zip(truth["boxes"], truth["labels"]):
      annotations.append({"id": len(annotations) + 1, "image_id": i + 1, "iscrowd": 0,
                          "category_id": int(label) + 1, "bbox": xywh(box),
                          "area": float((box[2] - box[0]) * (box[3] - box[1]))})
    for box, label, score in zip(det["boxes"], det["labels"], det["scores"]):
      results.append({"image_id": i + 1, "category_id": int(label) + 1, "bbox": xywh(box),
                      "score": float(score)})
  coco = COCO()
  coco.dataset = {"images": [{"id": i + 1, "height": 128, "width": 128} for i in range(len(dets))],
                  "annotations": annotations,
                  "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)]}
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
    evaluator = COCOeval(coco, coco.loadRes(results), "bbox")
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  precision = evaluator.eval["precision"][:, :, :, 0, -1]  # (T, R, K), area "all", 100 dets.
  ap = np.where((precision > -1).all(1), precision.mean(1), np.nan)  # (T, K)
  return evaluator.stats, ap


@pytest.mark.parametrize("noise", [1.0, 4.0])
def test_map_matches_pycocotools(noise):
  rng = np.random.default_rng(int(noise))
  dets, truths = _random_scenes(rng, 40, 3, noise)
  ours = det_metrics.average_precision(dets, truths, num_classes=3)
  stats, ap = _pycocotools(dets, truths, 3)
  assert 0.05 < ours["map"] < 0.95  # Neither trivial case.
  assert ours["map"] == pytest.approx(stats[0], abs=1e-12)
  assert ours["map50"] == pytest.approx(stats[1], abs=1e-12)
  assert ours["map75"] == pytest.approx(stats[2], abs=1e-12)
  np.testing.assert_allclose(ours["ap"].T, ap, atol=1e-12)


def test_accumulating_batches_equals_one_pass():
  rng = np.random.default_rng(7)
  dets, truths = _random_scenes(rng, 30, 4, 2.0)
  acc = det_metrics.DetectionAccumulator(4)
  for start in range(0, 30, 7):
    acc.add(dets[start:start + 7], truths[start:start + 7])
  whole = det_metrics.average_precision(dets, truths, 4)
  assert acc.num_images == 30
  np.testing.assert_array_equal(acc.result()["ap"], whole["ap"])
  with pytest.raises(ValueError, match="same images"):
    acc.add(dets[:2], truths[:1])
  with pytest.raises(ValueError, match=r"\[0, 4\)"):
    acc.add([{"boxes": np.zeros((1, 4)), "labels": [4], "scores": [1.0]}],
            [{"boxes": np.zeros((0, 4)), "labels": []}])


# --- Model --------------------------------------------------------------------------------------

SMALL = dict(backbone="vgg11_bn", backbone_kwargs=flax.core.FrozenDict({"widths": (8, 8, 16, 16,
                                                                                   16)}),
             feature_strides=(4, 8), feature_width=16, rpn_width=16, anchor_sizes=(8.0, 16.0),
             rpn_pre_nms_train=64, rpn_post_nms_train=16, rpn_pre_nms_test=64,
             rpn_post_nms_test=12, roi_batch_size=8, head_width=16, max_detections=10)


def _gt(batch):
  boxes = jnp.tile(jnp.array([[[4.0, 4.0, 20.0, 20.0], [0.0, 16.0, 12.0, 30.0],
                               [0.0, 0.0, 0.0, 0.0]]]), (batch, 1, 1))
  return boxes, jnp.tile(jnp.array([[0, 2, -1]]), (batch, 1))


@pytest.mark.parametrize("backbone", [
    ("vgg11_bn", {"widths": (8, 8, 16, 16, 16)}, (4, 8)),
    ("resnet18", {"num_filters": 8}, (8, 16))], ids=lambda b: b[0])
def test_faster_rcnn_shapes_in_training_and_evaluation(backbone):
  name, kwargs, strides = backbone
  model = faster_rcnn.FasterRCNN(num_classes=3, **{
      **SMALL, "backbone": name, "backbone_kwargs": flax.core.FrozenDict(kwargs),
      "feature_strides": strides})
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  boxes, labels = _gt(2)
  (out, features), variables = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x), images)
  assert out["boxes"].shape == (2, 10, 4) and out["scores"].shape == (2, 10)
  assert out["labels"].dtype == jnp.int32 and out["valid"].dtype == jnp.bool_
  assert out["proposals"].shape == (2, 12, 4)
  assert features["feature_map"].shape == (2, 32 // min(strides), 32 // min(strides), 16)
  params = variables["params"]
  assert params["class_logits"]["kernel"].shape == (16, 4)  # 3 classes + background.
  assert params["box_deltas"]["kernel"].shape == (16, 12)  # Class-specific boxes.
  assert not {"head", "fc6", "fc7"} & set(params["backbone"])  # Built without a classifier.
  (losses, _), _ = jax.eval_shape(
      lambda v, x, b, l: model.apply(v, x, b, l, train=True, mutable=["batch_stats"],
                                     rngs={"dropout": jax.random.key(1)}),
      variables, images, boxes, labels)
  assert set(losses) >= set(detection.LOSSES)
  assert all(v.shape == () for v in losses.values())


@pytest.mark.parametrize("backbone", [UserBackbone, UserBackbone(num_classes=None)],
                         ids=["class", "module"])
def test_faster_rcnn_on_a_user_backbone(backbone):
  model = faster_rcnn.FasterRCNN(num_classes=3, **{**SMALL, "backbone": backbone,
                                                   "backbone_kwargs": flax.core.FrozenDict()})
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  boxes, labels = _gt(2)
  (out, features), variables = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x), images)
  assert set(variables["params"]["backbone"]) == {"conv1", "conv2", "conv3"}
  assert features["feature_map"].shape == (2, 8, 8, 16) and out["boxes"].shape == (2, 10, 4)
  (losses, _), _ = jax.eval_shape(
      lambda v, x, b, l: model.apply(v, x, b, l, train=True, mutable=["batch_stats"],
                                     rngs={"dropout": jax.random.key(1)}),
      variables, images, boxes, labels)
  assert set(losses) >= set(detection.LOSSES)


def _random_variables(model, images, rng):
  """Variables of `model` drawn in numpy (compiling `model.init` costs more than the test)."""
  shapes = jax.eval_shape(lambda x: model.init(jax.random.key(0), x), images)

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'scale'" in name or "'var'" in name:
      return jnp.ones(leaf.shape, leaf.dtype)
    if "'mean'" in name or "'bias'" in name:
      return jnp.zeros(leaf.shape, leaf.dtype)
    fan_in = np.prod(leaf.shape[:-1])
    return jnp.asarray(rng.normal(size=leaf.shape) / np.sqrt(fan_in), leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


def test_training_step_compiles_once_learns_and_every_parameter_gets_gradient():
  model = faster_rcnn.FasterRCNN(num_classes=3, **SMALL)
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(2, 32, 32, 3)), jnp.float32)
  boxes, labels = _gt(2)
  variables = _random_variables(model, images, rng)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def grads(params, batch_stats, boxes, key):
    def total(params):
      (losses, _), _ = model.apply({"params": params, "batch_stats": batch_stats}, images, boxes,
                                   labels, train=True, mutable=["batch_stats"],
                                   rngs={"dropout": key})
      return sum(losses[k] for k in detection.LOSSES), losses
    return jax.grad(total, has_aux=True)(params)

  g, losses = grads(variables["params"], variables["batch_stats"], boxes, jax.random.key(1))
  shifted = boxes.at[:, 0].add(1.0)  # Other boxes, same shapes: no retrace.
  g2, _ = grads(variables["params"], variables["batch_stats"], shifted, jax.random.key(2))
  assert all(np.isfinite(float(v)) for v in losses.values())
  assert float(losses["rpn_positives"]) >= 2  # Each valid box gets its best anchor at least.
  norms = {jax.tree_util.keystr(p): float(jnp.abs(x).sum())
           for p, x in jax.tree_util.tree_leaves_with_path(g)}
  assert all(np.isfinite(v) for v in norms.values())
  dead = [p for p, v in norms.items() if v == 0]
  # The neck reads strides 4 and 8 (VGG's stage2 and stage3): only deeper stages get none.
  assert dead and all("stage4" in p or "stage5" in p for p in dead), dead
  predict = jax.jit(lambda v, x: model.apply(v, x, train=False))
  out, _ = predict(variables, images)
  valid = np.asarray(out["valid"])
  assert (np.asarray(out["scores"])[valid] > 0.05).all()
  assert (np.asarray(out["scores"])[~valid] == 0).all()
  assert np.all(np.diff(np.asarray(out["scores"])[0][valid[0]]) <= 0)  # Best first.
  b = np.asarray(out["boxes"])
  assert (b >= 0).all() and (b[..., 2] <= 32).all() and (b[..., 3] <= 32).all()


# --- Data and task ------------------------------------------------------------------------------


def _objects_example(size=32):
  image = np.zeros((size, size, 3), np.uint8)
  image[4:12, 2:10] = 255  # Object 0: rows 4..12, columns 2..10.
  image[16:30, 20:28, 1] = 255  # Object 1.
  bbox = [np.array([4, 2, 12, 10], np.float32) / size,
          np.array([16, 20, 30, 28], np.float32) / size]
  return {"image": image, "objects": {"bbox": bbox, "label": [np.int64(1), np.int64(4)]}}


def test_example_transform_letterboxes_pads_and_drops_crowd_and_empty_boxes():
  task = detection.DetectionTask(image_size=16, max_boxes=3, class_names=tuple("abcde"))
  ex = _objects_example()
  ex["image"] = ex["image"][:, :24]  # 32 x 24: the longer side (rows) becomes 16.
  ex["objects"]["bbox"] = [b * [1, 32 / 24, 1, 32 / 24] for b in ex["objects"]["bbox"]]
  out = task.example_transform(ex)
  assert out["image"].shape == (16, 16, 3)
  assert (out["image"][:, 12:] == 0).all()  # Padding on the right (24 * 0.5 = 12 columns).
  np.testing.assert_allclose(out["boxes"][:2], [[2, 1, 6, 5], [8, 10, 15, 14]], atol=1e-5)
  np.testing.assert_array_equal(out["labels"], [1, 4, -1])
  np.testing.assert_array_equal(out["boxes"][2], 0)
  ex = _objects_example()
  ex["objects"]["is_crowd"] = [True, False]
  ex["objects"]["bbox"].append(np.array([0.5, 0.5, 0.5, 0.9], np.float32))  # Empty.
  ex["objects"]["label"].append(np.int64(0))
  ex["objects"]["is_crowd"].append(False)
  out = detection.DetectionTask(image_size=32, max_boxes=2).example_transform(ex)
  np.testing.assert_array_equal(out["labels"], [4, -1])


def test_flip_mirrors_real_boxes_and_leaves_padding_rows():
  batch = {"image": np.zeros((2, 8, 10, 1)),
           "boxes": np.float32([[[1, 2, 5, 4], [0, 0, 0, 0]], [[1, 2, 5, 4], [0, 0, 0, 0]]])}
  out = transforms.flip_where(batch, np.array([True, False]),
                             kinds={"image": "image", "boxes": "boxes"})
  np.testing.assert_array_equal(out["boxes"][0], [[1, 6, 5, 8], [0, 0, 0, 0]])  # 10 - 4, 10 - 2.
  np.testing.assert_array_equal(out["boxes"][1], batch["boxes"][1])


@pytest.mark.parametrize("padding", [0, 4, 12])
def test_pipeline_flips_and_crops_move_the_boxes_with_the_images(padding):
  """The boxes model_inputs hands the model still frame the bright objects after flips and
  pad-and-crop (12 px crops some objects away: their boxes are then no objects)."""
  task = detection.DetectionTask(image_size=32, max_boxes=3, class_names=tuple("abcde"))
  source = [_objects_example() for _ in range(16)]
  c = config_lib.base_config().input
  c.batch_size, c.crop_padding, c.random_flip, c.image_size = 16, padding, True, 32
  batch = next(pipeline.train_batches(source, pipeline.InputOptions.from_config(c), seed=3,
                                      keys=task.keys, kinds=task.feature_kinds,
                                      example_fn=task.example_transform))
  _, boxes, labels = task.model_inputs(jax.tree.map(jnp.asarray, batch))
  boxes = np.asarray(boxes)
  flipped = dropped = 0
  for image, box, label in zip(batch["image"], boxes, np.asarray(labels)):
    bright = image.max(-1) > 0  # Normalised: the objects are above the black ground.
    for (y0, x0, y1, x1), lab in zip(box.astype(int), label):
      if lab < 0:
        continue
      assert y1 > y0 and x1 > x0 and bright[y0:y1, x0:x1].all()
    dropped += int((label[:2] < 0).sum())  # Crops may leave an object no pixels.
    flipped += int(bright[4:12, 22:30].all())  # Object 0 mirrored: columns 32-10 .. 32-2.
  if not padding:
    assert 0 < flipped < 16  # Some, not all, flipped.
  assert (dropped > 0) == (padding == 12)


@pytest.mark.parametrize("field, value, expected", [
    ("input.image_size", None, "set it"),
    ("detection.feature_strides", (4, 6), "powers of two"),
    ("detection.rpn_post_nms_train", 5000, "rpn_pre_nms_train"),
    ("detection.loss_weights", (1.0, 1.0), "4 non-negative"),
    ("detection.box_weights", (10.0, 10.0, 0.0, 5.0), "4 positive"),
    ("train.best_metric", "accuracy", "map50"),
])
def test_bad_detection_config_names_the_fix(field, value, expected):
  c = _load_config("shapes_detection")
  section, key = field.split(".")
  c[section][key] = value
  with pytest.raises(ValueError) as error:
    config_lib.validate(c, num_devices=8)
  assert expected in str(error.value)


def test_every_detection_config_field_reaches_the_task_or_the_model():
  # `config.detection` is made from DetectionTask's and FasterRCNN's fields, so each one (set
  # here to a list, as a command line gives it) arrives in the task or the model.
  c = _load_config("shapes_detection")
  c.detection.anchor_sizes = [12.0, 24.0]
  task = detection.DetectionTask.from_config(c)
  model = task.build_model(c, None)
  task_fields = {f.name for f in dataclasses.fields(task)}
  model_fields = {f.name for f in dataclasses.fields(model)} - {"parent", "name"}
  assert set(c.detection) == (task_fields - {"image_size"}) | (
      model_fields - faster_rcnn.NOT_HYPERPARAMETERS)
  for name, value in c.detection.items():
    value = tuple(value) if isinstance(value, list) else value
    assert getattr(task if name in task_fields else model, name) == value, name


def test_missing_objects_feature_is_a_clear_error(tiny_shapes_dir):
  builder = tfds.builder("synthetic_shapes/tiny32", data_dir=tiny_shapes_dir)
  assert detection.dataset_class_names(builder, "objects")[:2] == ("circle", "square")
  with pytest.raises(ValueError, match="no 'boxes/label'"):
    detection.dataset_class_names(builder, "boxes")


# --- End to end ---------------------------------------------------------------------------------


def _tiny(c):
  """Shrinks a detection config to the test's budget (the model stays a Faster R-CNN)."""
  c.model.name, c.model.kwargs.widths = "vgg11_bn", (8, 8, 16, 16, 16)
  c.model.dtype = "float32"
  c.input.image_size = 32
  c.input.batch_size = c.input.eval_batch_size = 8
  c.input.num_workers = 0
  for field, value in SMALL.items():
    if field in c.detection:
      c.detection[field] = value
  c.detection.max_boxes = 6
  c.detection.num_pictures = 2
  c.train.progress_bar = False
  return c


def test_shapes_detection_trains_evaluates_and_draws(tiny_shapes_dir, tmp_path):
  c = _tiny(_load_config("shapes_detection"))
  c.dataset.name = "synthetic_shapes/tiny32"
  c.dataset.data_dir = tiny_shapes_dir
  c.train.num_steps = 2
  c.train.eval_every = 2
  result = loop.train_and_evaluate(c, str(tmp_path))
  assert result["step"] == 2 and result["num_examples"] == 64
  for key in ("map", "map50", "map75"):
    assert 0.0 <= result[key] <= 1.0
  assert result["map"] <= result["map50"]
  picture = tmp_path / "detection" / "step_0000002.png"
  from PIL import Image
  assert Image.open(picture).size == (500, 2 * 250 + 50)
  # Inference rebuilds the Faster R-CNN through the workdir's task.
  from vision_jax import inference
  loaded = inference.load_for_inference(str(tmp_path))
  images = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), np.uint8)
  detections = loaded.predict(images)["detections"]
  assert len(detections) == 3
  for found in detections:
    assert found["boxes"].shape == (len(found["labels"]), 4) == (len(found["scores"]), 4)
    assert ((0 <= found["labels"]) & (found["labels"] < loaded.task.num_classes)).all()


@pytest.mark.parametrize("name, classes", [("coco_detection", 80), ("voc_detection", 20)])
def test_tfds_detection_configs_read_mock_data(name, classes):
  """configs/coco_detection.py and voc_detection.py as shipped, on mock data: the task takes
  the dataset's classes, batches hold letterboxed images and padded pixel boxes, and the
  model builds for them (shapes only; the slow test below trains a step)."""
  from vision_jax.data import datasets
  c = _load_config(name)
  config_lib.validate(c, num_devices=8)
  task = detection.DetectionTask.from_config(c)
  with tfds.testing.mock_data(num_examples=6):
    builder = datasets.builder_from_config(c.dataset)
    source = datasets.open_split(builder, c.dataset.eval_split, keys=task.dataset_keys())
    task = task.prepare(builder, source, "")
    c.input.eval_batch_size, c.input.num_workers = 4, 0
    batch = next(pipeline.eval_batches(source, pipeline.InputOptions.from_config(c.input),
                                       keys=task.keys, kinds=task.feature_kinds,
                                       example_fn=task.example_transform))
  assert task.num_classes == classes
  size, m = c.input.image_size, c.detection.max_boxes
  assert batch["image"].shape == (4, size, size, 3) and batch["boxes"].shape == (4, m, 4)
  real = batch["labels"] >= 0
  assert real.any() and (batch["labels"][real] < classes).all()
  assert (batch["boxes"][real] >= 0).all() and (batch["boxes"][real] <= size + 1e-3).all()
  assert (batch["boxes"][~real] == 0).all()
  model = task.build_model(c, builder)
  (out, _), _ = jax.eval_shape(lambda x: model.init_with_output(jax.random.key(0), x),
                               jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  assert out["boxes"].shape == (1, c.detection.max_detections, 4)


@pytest.mark.slow
@pytest.mark.parametrize("name, classes", [("coco_detection", 80), ("voc_detection", 20)])
def test_tfds_detection_configs_train_on_mock_data(name, classes, tmp_path):
  """configs/coco_detection.py and voc_detection.py as shipped, only tiny, one step."""
  c = _tiny(_load_config(name))
  c.train.num_steps = 1
  with tfds.testing.mock_data(num_examples=8):
    result = loop.train_and_evaluate(c, str(tmp_path))
  assert result["num_examples"] == 8 and 0.0 <= result["map50"] <= 1.0
  assert len([k for k in result if k.startswith("ap50/")]) <= classes
