"""COCO-style detection metrics in numpy: AP per class at IoU thresholds, mAP@[.5:.95], @.5, @.75.

The definitions are those of the COCO evaluation (`pycocotools.cocoeval.COCOeval`, bounding
boxes, area range "all", no crowd regions), which the tests check it against:

- Per image and class, detections are visited by decreasing score (at most `max_detections`
  of them); each is matched to the unmatched ground-truth box of the same class with the
  highest IoU, if that IoU is >= the threshold (a true positive); otherwise it is a false
  positive.
- Per class, the detections of all images are sorted by score; precision and recall follow
  from the cumulative true and false positives; precision is made non-increasing in recall
  (the "envelope"), and read at the 101 recall levels 0, 0.01, ..., 1 (0 beyond the highest
  recall reached). AP is their mean.
- mAP averages AP over the classes that have ground truth (others have no AP: COCO's -1) and,
  for `map`, over the IoU thresholds 0.5, 0.55, ..., 0.95.

Units: boxes are `(ymin, xmin, ymax, xmax)` in PIXELS of the evaluated image (what
`DetectionTask` passes). IoU does not depend on the unit, so boxes normalised to [0, 1] give
the same numbers (no COCO area ranges are computed, the one place where pixels would matter),
as long as detections and ground truth use the same unit.

Accumulating over batches and processes: `DetectionAccumulator.add` takes per-image lists,
batch after batch; `result()` computes the metrics once over everything added. Matching is
per image, so an accumulator holding every eval image is exact whatever the batching. In a
multi-process run, `DetectionTask.evaluate_extra` gives every process the whole eval split
(as captioning decodes every caption on every process), so each process's accumulator holds
all images and every process reports the same numbers; nothing needs gathering.
"""

from collections.abc import Sequence

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # COCO's 0.5:0.05:0.95.
RECALL_LEVELS = np.linspace(0.0, 1.0, 101)  # COCO's 101-point interpolation.


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """IoU of every pair: a (N, 4), b (M, 4) (ymin, xmin, ymax, xmax) → (N, M)."""
  a = np.asarray(a, np.float64).reshape(-1, 4)
  b = np.asarray(b, np.float64).reshape(-1, 4)
  top_left = np.maximum(a[:, None, :2], b[None, :, :2])
  bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
  inter = np.prod(np.clip(bottom_right - top_left, 0, None), axis=-1)  # (N, M)
  area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=-1)  # noqa: E731
  union = area(a)[:, None] + area(b)[None, :] - inter
  return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def match_image(det_boxes: np.ndarray, det_scores: np.ndarray, gt_boxes: np.ndarray,
                iou_thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Greedy matching of one image's detections of one class (COCO's `evaluateImg`).

  Args:
    det_boxes: (D, 4) detections.
    det_scores: (D,) their scores.
    gt_boxes: (G, 4) ground truth of the same class.
    iou_thresholds: (T,).

  Returns:
    `(scores, matched)`: the detections' scores sorted decreasingly (D,), and (T, D) bool,
    whether each (sorted) detection is a true positive at each threshold.
  """
  order = np.argsort(-np.asarray(det_scores), kind="mergesort")
  scores = np.asarray(det_scores, np.float64)[order]
  ious = box_iou(np.asarray(det_boxes)[order], gt_boxes)  # (D, G)
  matched = np.zeros((len(iou_thresholds), len(order)), bool)
  for t, threshold in enumerate(iou_thresholds):
    taken = np.zeros(ious.shape[1], bool)
    for d in range(len(order)):
      # The best free ground truth at IoU >= threshold (COCO breaks ties by the later one).
      best, best_iou = -1, min(threshold, 1 - 1e-10)
      for g in range(ious.shape[1]):
        if not taken[g] and ious[d, g] >= best_iou:
          best, best_iou = g, ious[d, g]
      if best >= 0:
        taken[best] = True
        matched[t, d] = True
  return scores, matched


def interpolated_ap(scores: np.ndarray, matched: np.ndarray, num_gt: int) -> np.ndarray:
  """AP at each threshold from all images' detections of one class (COCO's `accumulate`).

  Args:
    scores: (D,) scores of every detection of the class, over all images.
    matched: (T, D) true positive flags.
    num_gt: ground-truth boxes of the class over all images (> 0).

  Returns:
    (T,) 101-point interpolated AP.
  """
  order = np.argsort(-scores, kind="mergesort")
  tp = np.cumsum(matched[:, order], axis=1, dtype=np.float64)  # (T, D)
  fp = np.cumsum(~matched[:, order], axis=1, dtype=np.float64)
  ap = np.zeros(len(matched))
  for t in range(len(matched)):
    recall = tp[t] / num_gt
    precision = tp[t] / np.maximum(tp[t] + fp[t], np.spacing(1))
    envelope = np.maximum.accumulate(precision[::-1])[::-1]  # Non-increasing in recall.
    where = np.searchsorted(recall, RECALL_LEVELS, side="left")
    ap[t] = np.where(where < len(envelope), envelope[np.minimum(where, len(envelope) - 1)],
                     0.0).mean() if len(envelope) else 0.0
  return ap


class DetectionAccumulator:
  """Collects per-image detections and ground truth; computes COCO-style AP once at the end.

  Args:
    num_classes: classes are 0 .. num_classes - 1.
    iou_thresholds: (T,) IoU thresholds; `map` averages over all of them, `map50` and `map75`
      read 0.5 and 0.75 (NaN when they are not among them).
    max_detections: per image and class, only the best-scoring this many count (COCO: 100).
  """

  def __init__(self, num_classes: int, iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
               max_detections: int = 100):
    self.num_classes = num_classes
    self.iou_thresholds = np.asarray(iou_thresholds, np.float64)
    self.max_detections = max_detections
    self._scores = [[] for _ in range(num_classes)]  # Per class: arrays of (D,) scores.
    self._matched = [[] for _ in range(num_classes)]  # Per class: (T, D) flags.
    self._num_gt = np.zeros(num_classes, np.int64)
    self.num_images = 0

  def add(self, detections: Sequence[dict], ground_truths: Sequence[dict]) -> None:
    """Adds images: per-image dicts, detections {"boxes" (n, 4), "labels" (n,), "scores" (n,)},
    ground truths {"boxes" (m, 4), "labels" (m,)}.

    Raises:
      ValueError: when the lists differ in length or a label is outside [0, num_classes).
    """
    if len(detections) != len(ground_truths):
      raise ValueError(f"{len(detections)} images of detections but {len(ground_truths)} of "
                       "ground truth; they must be the same images in the same order.")
    for det, gt in zip(detections, ground_truths):
      det_labels = np.asarray(det["labels"], np.int64).reshape(-1)
      gt_labels = np.asarray(gt["labels"], np.int64).reshape(-1)
      for labels in (det_labels, gt_labels):
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
          raise ValueError(f"Labels {labels} must lie in [0, {self.num_classes}).")
      det_boxes = np.asarray(det["boxes"], np.float64).reshape(-1, 4)
      det_scores = np.asarray(det["scores"], np.float64).reshape(-1)
      gt_boxes = np.asarray(gt["boxes"], np.float64).reshape(-1, 4)
      for c in set(det_labels.tolist()) | set(gt_labels.tolist()):
        d, g = det_labels == c, gt_labels == c
        self._num_gt[c] += g.sum()
        order = np.argsort(-det_scores[d], kind="mergesort")[:self.max_detections]
        scores, matched = match_image(det_boxes[d][order], det_scores[d][order], gt_boxes[g],
                                      self.iou_thresholds)
        self._scores[c].append(scores)
        self._matched[c].append(matched)
      self.num_images += 1

  def per_class_ap(self) -> np.ndarray:
    """(K, T) AP of each class at each threshold; NaN for classes without ground truth."""
    ap = np.full((self.num_classes, len(self.iou_thresholds)), np.nan)
    for c in range(self.num_classes):
      if self._num_gt[c] == 0:
        continue
      if not self._scores[c]:
        ap[c] = 0.0
        continue
      ap[c] = interpolated_ap(np.concatenate(self._scores[c]),
                              np.concatenate(self._matched[c], axis=1), int(self._num_gt[c]))
    return ap

  def result(self) -> dict:
    """The metrics: `map` (mean over classes and thresholds), `map50`, `map75`, `ap` (K, T)
    and `ap_per_class` (K,) (mean over thresholds; NaN without ground truth). With no ground
    truth at all the means are NaN."""
    ap = self.per_class_ap()
    present = ~np.isnan(ap[:, 0])

    def at(threshold):
      hits = np.flatnonzero(np.isclose(self.iou_thresholds, threshold))
      return float(ap[present, hits[0]].mean()) if hits.size and present.any() else float("nan")

    return {"map": float(ap[present].mean()) if present.any() else float("nan"),
            "map50": at(0.5), "map75": at(0.75), "ap": ap,
            "ap_per_class": ap.mean(axis=1)}


def average_precision(detections: Sequence[dict], ground_truths: Sequence[dict],
                      num_classes: int, iou_thresholds: Sequence[float] = IOU_THRESHOLDS,
                      max_detections: int = 100) -> dict:
  """COCO-style AP of per-image detections against ground truth (see the module docstring).

  Args:
    detections: per image, {"boxes": (n, 4) pixels (ymin, xmin, ymax, xmax), "labels": (n,)
      int in [0, num_classes), "scores": (n,)}.
    ground_truths: per image (the same images, same order), {"boxes": (m, 4), "labels": (m,)}.
    num_classes: K.
    iou_thresholds: (T,) thresholds (default COCO's 0.5:0.05:0.95).
    max_detections: best-scoring detections counted per image and class.

  Returns:
    A dict: `map` (mAP@[.5:.95]), `map50`, `map75`, `ap` (K, T) and `ap_per_class` (K,), NaN
    for classes without ground truth.
  """
  acc = DetectionAccumulator(num_classes, iou_thresholds, max_detections)
  acc.add(detections, ground_truths)
  return acc.result()
