"""Selective search region proposals (Uijlings et al. 2013), in numpy and scipy.

R-CNN's first step: boxes that may hold an object, found without knowing the classes.

1. Over-segment the image with the graph-based method of Felzenszwalb & Huttenlocher (2004):
   pixels are nodes, 8-connected neighbours are joined by edges weighted by their colour
   distance, and edges are visited by increasing weight, merging two components (union-find)
   when the edge is no heavier than either's internal difference plus `k / size`.
2. Group hierarchically: repeatedly merge the two most similar neighbouring regions until one
   is left. Similarity is a sum of colour (histogram intersection), texture (histograms of
   Gaussian derivatives in 8 orientations), size (merge small regions first) and fill (how well
   the two fill their joint box). Every region of the hierarchy, leaves included, gives a box.
3. Diversify: run several strategies (colour space x similarity measures x k) and pool the
   boxes; rank them as the paper does (position in its hierarchy, 1 = the top, times a random
   number in [0, 1], smaller first), then drop lower-ranked duplicates.

    boxes = selective_search(image, mode="fast")  # (N, 4) float32 pixels, best first

Deviations from the paper (and its Matlab code), for 64x64 scenes and for speed:
- The segmentation runs on one smoothed colour image with Euclidean colour distances (as
  scikit-image does), not once per channel with the intersection of the three segmentations.
- Colours are scaled to [0, 255] in every colour space; `k` is in those units. The "fast" k
  values (50, 100) are the paper's, but `min_size` (the smallest segment) is fixed at 10 px
  instead of following k, since the images are tiny.
- Colour spaces: RGB, HSV, Lab and rgI (no "H" alone, no "C"); the "quality" mode uses these 4
  with 4 similarity combinations and 3 k values (48 strategies instead of the paper's 80).
- Texture: per channel, the positive part of Gaussian derivatives (sigma 1) along 8 directions,
  each a 10-bin histogram (the paper's measure, but binned on [0, the image's largest response]).
- Duplicates are exact duplicates in whole pixels; boxes smaller than `min_box` pixels on a side
  are dropped (the paper keeps all).
"""

import numpy as np
from scipy import ndimage

COLOUR_SPACES = ("rgb", "hsv", "lab", "rgi")
SIMILARITIES = ("colour", "texture", "size", "fill")
# (colour spaces, similarity combinations, k values) of each mode. "fast" is the paper's
# "Selective Search Fast" (8 strategies); "single" is its single best strategy.
MODES = {
    "single": (("hsv",), (("colour", "texture", "size", "fill"),), (100,)),
    "fast": (("hsv", "lab"), (("colour", "texture", "size", "fill"),
                              ("texture", "size", "fill")), (50, 100)),
    "quality": (COLOUR_SPACES, (("colour", "texture", "size", "fill"),
                                ("texture", "size", "fill"), ("fill",), ("size",)),
                (50, 100, 150)),
}
_COLOUR_BINS, _TEXTURE_BINS = 25, 10


def to_colour_space(image: np.ndarray, space: str) -> np.ndarray:
  """(H, W, 3) RGB uint8 or float in [0, 255] → (H, W, 3) float32, each channel in [0, 255]."""
  rgb = np.asarray(image, np.float32) / 255.0
  if space == "rgb":
    out = rgb
  elif space == "hsv":
    v = rgb.max(-1)
    chroma = v - rgb.min(-1)
    s = np.where(v > 0, chroma / np.maximum(v, 1e-6), 0.0)
    r, g, b = np.moveaxis(rgb, -1, 0)
    c = np.maximum(chroma, 1e-6)
    h = np.where(v == r, (g - b) / c, np.where(v == g, 2.0 + (b - r) / c, 4.0 + (r - g) / c))
    h = np.where(chroma > 0, (h / 6.0) % 1.0, 0.0)
    out = np.stack([h, s, v], -1)
  elif space == "lab":
    linear = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = linear @ np.array([[0.4124, 0.2126, 0.0193], [0.3576, 0.7152, 0.1192],
                             [0.1805, 0.0722, 0.9505]], np.float32)
    xyz /= np.array([0.9505, 1.0, 1.089], np.float32)  # D65 white.
    f = np.where(xyz > 0.008856, np.cbrt(xyz), 7.787 * xyz + 16 / 116)
    lab = np.stack([116 * f[..., 1] - 16, 500 * (f[..., 0] - f[..., 1]),
                    200 * (f[..., 1] - f[..., 2])], -1)
    out = (lab + np.array([0, 128, 128], np.float32)) / np.array([100, 255, 255], np.float32)
  elif space == "rgi":
    total = rgb.sum(-1, keepdims=True)
    rg = np.where(total > 0, rgb[..., :2] / np.maximum(total, 1e-6), 1 / 3)
    out = np.concatenate([rg, total / 3], -1)
  else:
    raise ValueError(f"Unknown colour space {space!r}; valid choices: {list(COLOUR_SPACES)}")
  return (np.clip(out, 0.0, 1.0) * 255.0).astype(np.float32)


def _grid_edges(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
  """Flat pixel indices (a, b) of every 8-connected neighbour pair, each pair once."""
  index = np.arange(height * width).reshape(height, width)
  pairs = [(index[:, :-1], index[:, 1:]), (index[:-1, :], index[1:, :]),
           (index[:-1, :-1], index[1:, 1:]), (index[:-1, 1:], index[1:, :-1])]
  return (np.concatenate([a.ravel() for a, _ in pairs]),
          np.concatenate([b.ravel() for _, b in pairs]))


def _find(parent: list[int], x: int) -> int:
  """Root of x's component, halving the path on the way (union-find)."""
  while parent[x] != x:
    parent[x] = parent[parent[x]]
    x = parent[x]
  return x


def _roots(parent: list[int]) -> np.ndarray:
  """Every node's root, by pointer jumping on the whole array at once."""
  roots = np.array(parent)
  while True:
    up = roots[roots]
    if np.array_equal(up, roots):
      return roots
    roots = up


def felzenszwalb(image: np.ndarray, k: float, min_size: int = 10,
                 sigma: float = 0.8) -> np.ndarray:
  """Graph-based segmentation (Felzenszwalb & Huttenlocher 2004).

  Args:
    image: (H, W, C) float, any scale (k is in its units).
    k: larger k prefers larger segments (the threshold is internal difference + k / size).
    min_size: segments smaller than this many pixels are merged into a neighbour afterwards.
    sigma: Gaussian smoothing of each channel before the colour distances.

  Returns:
    (H, W) int32 labels 0 .. n - 1.
  """
  height, width = image.shape[:2]
  smooth = ndimage.gaussian_filter(np.asarray(image, np.float32), (sigma, sigma, 0))
  flat = smooth.reshape(height * width, -1)
  a, b = _grid_edges(height, width)
  weight = np.linalg.norm(flat[a] - flat[b], axis=-1)  # (E,)
  order = np.argsort(weight, kind="stable")
  a, b, weight = a[order], b[order], weight[order].tolist()

  n = height * width
  parent, size = list(range(n)), [1] * n
  threshold = [float(k)] * n  # Int(C) + k / |C|; Int of one pixel is 0.
  for u, v, w in zip(a.tolist(), b.tolist(), weight):
    while parent[u] != u:  # _find, inlined: this loop is most of selective search's time.
      parent[u] = u = parent[parent[u]]
    while parent[v] != v:
      parent[v] = v = parent[parent[v]]
    if u != v and w <= threshold[u] and w <= threshold[v]:
      if size[u] < size[v]:
        u, v = v, u
      parent[v] = u
      size[u] += size[v]
      # Edges come in increasing order, so w is the largest in the new component's MST.
      threshold[u] = w + k / size[u]
  roots = _roots(parent)
  between = np.flatnonzero(roots[a] != roots[b]).tolist()  # Edges still joining two segments.
  for e in between:  # Absorb small segments, cheapest edge first.
    u, v = _find(parent, int(a[e])), _find(parent, int(b[e]))
    if u != v and (size[u] < min_size or size[v] < min_size):
      if size[u] < size[v]:
        u, v = v, u
      parent[v] = u
      size[u] += size[v]
  roots = _roots(parent)
  return np.unique(roots, return_inverse=True)[1].reshape(height, width).astype(np.int32)


def region_features(labels: np.ndarray, colours: np.ndarray) -> dict:
  """Per-region size, box and L1-normalised colour and texture histograms.

  Args:
    labels: (H, W) int segmentation, labels 0 .. n - 1.
    colours: (H, W, 3) float image in [0, 255] (the strategy's colour space).

  Returns:
    {"size": (n,), "box": (n, 4) pixels, "colour": (n, 75), "texture": (n, 240)}, float32.
  """
  n = int(labels.max()) + 1
  height, width = labels.shape
  flat = labels.ravel()
  size = np.bincount(flat, minlength=n).astype(np.float32)  # (n,)
  rows, cols = np.divmod(np.arange(height * width), width)
  boxes = np.stack([ndimage.minimum(rows, flat, np.arange(n)),
                    ndimage.minimum(cols, flat, np.arange(n)),
                    ndimage.maximum(rows, flat, np.arange(n)) + 1,
                    ndimage.maximum(cols, flat, np.arange(n)) + 1], -1).astype(np.float32)

  def histogram(bins: np.ndarray, num_bins: int) -> np.ndarray:
    """(P, D) bin indices per pixel and descriptor → (n, D * num_bins), rows summing to 1."""
    d = bins.shape[1]
    index = (flat[:, None] * d + np.arange(d)) * num_bins + bins  # (P, D)
    h = np.bincount(index.ravel(), minlength=n * d * num_bins).reshape(n, d * num_bins)
    return (h / h.sum(1, keepdims=True)).astype(np.float32)

  colour_bins = np.minimum(colours.reshape(-1, 3) * (_COLOUR_BINS / 256.0),
                           _COLOUR_BINS - 1).astype(np.int64)  # (P, 3)
  gy = ndimage.gaussian_filter(colours, (1, 1, 0), order=(1, 0, 0))  # (H, W, 3)
  gx = ndimage.gaussian_filter(colours, (1, 1, 0), order=(0, 1, 0))
  angles = np.arange(8) * np.pi / 4
  response = np.maximum(np.cos(angles) * gx[..., None] + np.sin(angles) * gy[..., None], 0)
  response = response.reshape(height * width, 24)  # (P, 3 channels x 8 directions)
  scale = _TEXTURE_BINS / max(float(response.max()), 1e-6)
  texture_bins = np.minimum(response * scale, _TEXTURE_BINS - 1).astype(np.int64)
  return {"size": size, "box": boxes, "colour": histogram(colour_bins, _COLOUR_BINS),
          "texture": histogram(texture_bins, _TEXTURE_BINS)}


def _neighbour_pairs(labels: np.ndarray) -> set[tuple[int, int]]:
  """Pairs (i < j) of labels that touch (8-connectivity)."""
  pairs = set()
  for a, b in ((labels[:, :-1], labels[:, 1:]), (labels[:-1], labels[1:]),
               (labels[:-1, :-1], labels[1:, 1:]), (labels[:-1, 1:], labels[1:, :-1])):
    differ = a != b
    lo, hi = np.minimum(a[differ], b[differ]), np.maximum(a[differ], b[differ])
    pairs.update(zip(lo.tolist(), hi.tolist()))
  return pairs


def hierarchical_grouping(labels: np.ndarray, features: dict,
                          similarities=SIMILARITIES) -> np.ndarray:
  """Greedy grouping of a segmentation into a hierarchy (Uijlings et al., Algorithm 1).

  Args:
    labels: (H, W) int segmentation, labels 0 .. n - 1.
    features: `region_features(labels, colours)`; not modified.
    similarities: names from `SIMILARITIES` summed into the similarity of two regions.

  Returns:
    (2n - 1, 4) float32 boxes (ymin, xmin, ymax, xmax) in pixels of every region of the
    hierarchy, ordered by position: row 0 is the top (the last merge), then earlier merges,
    then the n initial regions.
  """
  unknown = set(similarities) - set(SIMILARITIES)
  if unknown or not similarities:
    raise ValueError(f"Unknown or no similarities {sorted(unknown)}; valid choices: "
                     f"{list(SIMILARITIES)}")
  n = int(labels.max()) + 1
  image_size = float(labels.size)
  # Room for every region the hierarchy can create: n leaves and at most n - 1 merges.
  grow = lambda x: np.concatenate([x, np.zeros((n - 1, *x.shape[1:]), x.dtype)])  # noqa: E731
  size, box = grow(features["size"]), grow(features["box"])
  colour, texture = grow(features["colour"]), grow(features["texture"])

  def similarity(i: int, others: np.ndarray) -> np.ndarray:
    """Similarity of region i to each of `others` (indices)."""
    s = np.zeros(len(others), np.float32)
    if "colour" in similarities:
      s += np.minimum(colour[i], colour[others]).sum(-1)
    if "texture" in similarities:
      s += np.minimum(texture[i], texture[others]).sum(-1)
    if "size" in similarities:
      s += 1.0 - (size[i] + size[others]) / image_size
    if "fill" in similarities:
      joint = np.concatenate([np.minimum(box[i, :2], box[others, :2]),
                              np.maximum(box[i, 2:], box[others, 2:])], -1)
      joint_area = (joint[:, 2] - joint[:, 0]) * (joint[:, 3] - joint[:, 1])
      s += 1.0 - (joint_area - size[i] - size[others]) / image_size
    return s

  neighbours = {i: set() for i in range(n)}
  for i, j in _neighbour_pairs(labels):
    neighbours[i].add(j)
    neighbours[j].add(i)
  pairs = {}
  for i in range(n):
    later = np.array(sorted(j for j in neighbours[i] if j > i), np.int64)
    pairs.update(zip(((i, int(j)) for j in later), similarity(i, later).tolist()))

  new = n
  while pairs:
    i, j = max(pairs, key=pairs.get)
    total = size[i] + size[j]
    colour[new] = (size[i] * colour[i] + size[j] * colour[j]) / total
    texture[new] = (size[i] * texture[i] + size[j] * texture[j]) / total
    size[new] = total
    box[new] = np.concatenate([np.minimum(box[i, :2], box[j, :2]),
                               np.maximum(box[i, 2:], box[j, 2:])])
    around = (neighbours.pop(i) | neighbours.pop(j)) - {i, j}
    for m in around:
      neighbours[m] -= {i, j}
      neighbours[m].add(new)
      pairs.pop((min(m, i), max(m, i)), None)
      pairs.pop((min(m, j), max(m, j)), None)
    pairs.pop((min(i, j), max(i, j)))
    neighbours[new] = around
    others = np.array(sorted(around), np.int64)
    pairs.update(zip(((int(m), new) for m in others), similarity(new, others).tolist()))
    new += 1
  # Merged regions newest first (the top is position 1), then the leaves.
  return np.concatenate([box[n:new][::-1], box[:n]])


def selective_search(image: np.ndarray, mode: str = "fast", max_boxes: int | None = None,
                     min_box: float = 2.0, min_size: int = 10, seed: int = 0) -> np.ndarray:
  """Class-agnostic object proposals for one image.

  Args:
    image: (H, W, 3) RGB, uint8 or float in [0, 255].
    mode: a key of `MODES`: "single" (1 strategy), "fast" (8) or "quality" (48).
    max_boxes: keep at most this many (the best ranked); None keeps all.
    min_box: drop boxes with a side shorter than this (pixels).
    min_size: smallest Felzenszwalb segment (pixels).
    seed: seeds the random factor of the ranking, so results are reproducible.

  Returns:
    (N, 4) float32 boxes (ymin, xmin, ymax, xmax) in pixels, best ranked first, no duplicates.
  """
  if mode not in MODES:
    raise ValueError(f"Unknown selective search mode {mode!r}; valid choices: {list(MODES)}")
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"Expected an (H, W, 3) RGB image, got shape {image.shape}")
  rng = np.random.default_rng(seed)
  spaces, combinations, ks = MODES[mode]
  all_boxes, values = [], []
  for space in spaces:
    colours = to_colour_space(image, space)
    for k in ks:
      labels = felzenszwalb(colours, k, min_size)
      features = region_features(labels, colours)
      for combination in combinations:
        boxes = hierarchical_grouping(labels, features, combination)
        all_boxes.append(boxes)
        # The paper's rank value: position in the hierarchy (1 = top) times RND in [0, 1].
        values.append(np.arange(1, len(boxes) + 1) * rng.random(len(boxes)))
  boxes, values = np.concatenate(all_boxes), np.concatenate(values)
  boxes = boxes[np.argsort(values, kind="stable")]
  keep = np.minimum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]) >= min_box
  boxes = boxes[keep]
  _, first = np.unique(boxes, axis=0, return_index=True)  # Lower-ranked duplicates go.
  boxes = boxes[np.sort(first)]
  return boxes[:max_boxes].astype(np.float32)
