"""Renders one synthetic "shapes" scene with numpy: image, class, mask, boxes and caption.

A scene has one MAIN object (its shape is the classification label; it is always clearly the
largest) and 0–2 smaller distractors, drawn over a textured background. Everything is derived
from one `np.random.Generator`, so a seed fixes the scene on every machine. Coordinates are
normalised to [0, 1] (x right, y down) and only rasterised at the end, so the same generator
gives (almost) the same layout at any image size; small differences come from pixel-count checks.
"""

import functools
import math

import numpy as np

SHAPES = ("circle", "square", "triangle", "cross", "diamond", "ring")
# Saturated, well separated colours: each must stay nameable under shading and noise.
COLOURS = {
    "red": (220, 30, 30),
    "green": (30, 180, 50),
    "blue": (40, 70, 235),
    "yellow": (240, 220, 30),
    "magenta": (215, 40, 215),
    "cyan": (30, 215, 225),
    "white": (245, 245, 245),
    "orange": (250, 135, 0),
}
_PALETTE = np.array(list(COLOURS.values()), np.float32)  # (8, 3)
_COLOUR_NAMES = tuple(COLOURS)

_SPATIAL_WORDS = ("left", "right", "of", "above", "below", "and", "in", "on", "at", "the",
                  "top", "bottom", "centre")
CAPTION_WORDS = ("a", "an", "large", "small") + _COLOUR_NAMES + SHAPES + _SPATIAL_WORDS

# Where a lone main object is, by thirds of the image: _POSITIONS[row][column].
_POSITIONS = (
    ("in the top left", "at the top", "in the top right"),
    ("on the left", "in the centre", "on the right"),
    ("in the bottom left", "at the bottom", "in the bottom right"),
)

# Sizes are areas as a fraction of the image. The main object is >= 1.8x any distractor by
# construction, and >= MIN_MAIN_RATIO x by visible pixel count after rasterising (checked).
_MAIN_AREA = (0.05, 0.11)
_MIN_DISTRACTOR_AREA = 0.02  # ~20 px at 32x32: the smallest size at which shapes stay legible.
_AREA_MARGIN = 1.8
MIN_MAIN_RATIO = 1.6
MIN_VISIBLE_FRACTION = 0.75  # Objects may touch and overlap a little, never hide each other.
_MIN_CONTRAST = 100.0  # RGB distance between an object's colour and the background under it.

# Shape geometry at scale 1: every shape fits in the unit disc. Polygons are lists of convex
# parts (the cross is two bars), vertices (x, y) in order around the boundary.
_RING_HOLE = 0.5
_CROSS_LEN, _CROSS_HALF_WIDTH = 0.94, 0.32
_S = 0.5 ** 0.5
_PARTS = {
    "square": [np.array([[-_S, -_S], [_S, -_S], [_S, _S], [-_S, _S]])],
    "diamond": [np.array([[0.0, -1.0], [0.6, 0.0], [0.0, 1.0], [-0.6, 0.0]])],
    "triangle": [np.array([[np.cos(a), np.sin(a)] for a in np.radians([-90, 30, 150])])],
    "cross": [np.array([[-lx, -ly], [lx, -ly], [lx, ly], [-lx, ly]])
              for lx, ly in ((_CROSS_LEN, _CROSS_HALF_WIDTH), (_CROSS_HALF_WIDTH, _CROSS_LEN))],
}
_UNIT_AREA = {
    "circle": np.pi,
    "ring": np.pi * (1 - _RING_HOLE ** 2),
    "square": 2.0,
    "diamond": 1.2,
    "triangle": 3 * 3 ** 0.5 / 4,
    "cross": 8 * _CROSS_LEN * _CROSS_HALF_WIDTH - 4 * _CROSS_HALF_WIDTH ** 2,
}
# Rotation range in degrees. Squares and diamonds stay near upright so a square never turns
# into a diamond; circles and rings are rotation invariant.
_MAX_ROTATION = {"circle": 0, "ring": 0, "square": 15, "diamond": 15, "triangle": 120, "cross": 90}


def _half_planes(part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """A convex polygon as (K, 2) unit outward normals n and (K,) offsets h: inside iff n.p <= h."""
  x, y = part[:, 0], part[:, 1]
  if np.sum(x * np.roll(y, -1) - np.roll(x, -1) * y) < 0:  # Make the order counter-clockwise.
    part = part[::-1]
  edges = np.roll(part, -1, axis=0) - part  # (K, 2)
  normals = np.stack([edges[:, 1], -edges[:, 0]], axis=1)
  normals /= np.linalg.norm(normals, axis=1, keepdims=True)
  return normals, np.sum(normals * part, axis=1)


_HALF_PLANES = {k: [_half_planes(p) for p in parts] for k, parts in _PARTS.items()}
_VERTICES = {k: np.concatenate(parts) for k, parts in _PARTS.items()}  # (V, 2) for extents.


@functools.lru_cache(maxsize=8)
def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
  """Pixel-centre coordinates in [0, 1]: y (size, 1) and x (1, size), broadcastable."""
  c = (np.arange(size, dtype=np.float32) + 0.5) / size
  return c[:, None], c[None, :]


@functools.lru_cache(maxsize=32)
def _upsample_matrix(size: int, k: int) -> np.ndarray:
  """(size, k) bilinear interpolation weights that stretch k control points over the image."""
  t = (np.arange(size) + 0.5) / size * (k - 1)
  lo = np.minimum(np.floor(t).astype(int), k - 2)
  w = np.zeros((size, k), np.float32)
  w[np.arange(size), lo] = 1 - (t - lo)
  w[np.arange(size), lo + 1] = t - lo
  return w


def _smooth_field(values: np.ndarray, size: int) -> np.ndarray:
  """Bilinearly upsamples a (k, k, C) grid of control values to (size, size, C)."""
  w = _upsample_matrix(size, values.shape[0])  # (size, k)
  # Two small matmuls; a three-operand einsum is ~50x slower here.
  return (w @ values.transpose(2, 0, 1) @ w.T).transpose(1, 2, 0)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
  """A muted low-frequency colour field plus optional stripes and blotches; (H, W, 3) float."""
  k = int(rng.integers(2, 5))
  base = rng.uniform(20, 210, (k, k, 3)).astype(np.float32)
  grey = base.mean(-1, keepdims=True)
  # Desaturated so that the palette colours stand out, yet never one flat colour to subtract.
  base = grey + np.float32(rng.uniform(0.2, 0.7)) * (base - grey)
  img = _smooth_field(base, size)  # (H, W, 3)
  y, x = _pixel_grid(size)
  if rng.random() < 0.5:  # Stripes: straight edges that compete with the objects' edges.
    angle, freq, phase = rng.uniform(0, np.pi), rng.uniform(1.5, 5), rng.uniform(0, 2 * np.pi)
    fx, fy = 2 * np.pi * freq * np.cos(angle), 2 * np.pi * freq * np.sin(angle)
    wave = np.sin(x * np.float32(fx) + (y * np.float32(fy) + np.float32(phase)))  # (H, W)
    if rng.random() < 0.5:
      wave = np.sign(wave)
    tint = rng.uniform(10, 35) * rng.uniform(0.3, 1.0, 3).astype(np.float32)  # (3,)
    img += wave[..., None] * tint
  if rng.random() < 0.5:  # Mid-frequency colour blotches.
    k2 = int(rng.integers(5, 9))
    blotches = rng.uniform(-30, 30, (k2, k2, 3)).astype(np.float32)
    img += _smooth_field(blotches, size)
  return img


def _rotation(angle: float) -> np.ndarray:
  """(2, 2) matrix R such that row vectors p @ R are p rotated by `angle`."""
  c, s = math.cos(angle), math.sin(angle)
  return np.array([[c, s], [-s, c]])


def _extent(shape: str, scale: float, angle: float) -> tuple[float, float, float, float]:
  """(xmin, xmax, ymin, ymax) of the shape relative to its centre."""
  if shape not in _VERTICES:
    return -scale, scale, -scale, scale
  v = _VERTICES[shape] @ _rotation(angle)  # (V, 2)
  (x0, y0), (x1, y1) = v.min(0) * scale, v.max(0) * scale
  return x0, x1, y0, y1


def _rasterise(obj: dict, size: int) -> np.ndarray:
  """(H, W) bool mask of one object, unoccluded."""
  y, x = _pixel_grid(size)
  dx, dy = x - np.float32(obj["cx"]), y - np.float32(obj["cy"])  # (1, W), (H, 1)
  if obj["shape"] in ("circle", "ring"):
    r2 = dx * dx + dy * dy  # (H, W)
    inside = r2 <= obj["scale"] ** 2
    return inside & (r2 >= (_RING_HOLE * obj["scale"]) ** 2) if obj["shape"] == "ring" else inside
  rot = _rotation(obj["angle"])
  inside = np.zeros((size, size), bool)
  for normals, offsets in _HALF_PLANES[obj["shape"]]:
    n = (normals @ rot).astype(np.float32)[..., None, None]  # (K, 2, 1, 1)
    h = (offsets * obj["scale"]).astype(np.float32)[:, None, None]  # (K, 1, 1)
    inside |= (n[:, 0] * dx + (n[:, 1] * dy - h)).max(0) <= 0  # (K, H, W) -> (H, W)
  return inside


def _sample_objects(rng: np.random.Generator) -> list[dict]:
  """Shape, size and rotation of the main object and its 0–2 distractors (main first)."""
  u = rng.random()
  n = 1 if u < 0.3 else 2 if u < 0.65 else 3
  main_area = rng.uniform(*_MAIN_AREA)
  shapes = rng.integers(len(SHAPES), size=n)
  areas = rng.uniform(_MIN_DISTRACTOR_AREA, main_area / _AREA_MARGIN, size=n)
  areas[0] = main_area
  turns = rng.uniform(-1, 1, size=n)
  objects = []
  for shape_id, area, turn in zip(shapes, areas, turns):
    shape = SHAPES[shape_id]
    objects.append(dict(shape=shape, scale=float(area / _UNIT_AREA[shape]) ** 0.5,
                        angle=math.radians(turn * _MAX_ROTATION[shape])))
  return objects


def _third(t: float) -> int:
  return min(int(t * 3), 2)


def position(cx: float, cy: float) -> str:
  """Where a centre (cx, cy) in [0, 1] lies, by thirds of the image, e.g. "in the top left"."""
  return _POSITIONS[_third(cy)][_third(cx)]


def _place(rng: np.random.Generator, objects: list[dict]) -> list[dict]:
  """Gives objects centres inside the image; drops distractors that find no room.

  Rejection sampling keeps the scene easy to describe: centres are at least 0.9x the sum of
  the bounding-disc radii apart (touching, barely overlapping), each distractor is clearly more left/right than above/below of the main object (or vice
  versa), and the main object sits away from the thirds boundaries that name its position.
  """
  placed = []
  for obj in objects:
    x0, x1, y0, y1 = _extent(obj["shape"], obj["scale"], obj["angle"])
    for _ in range(30):
      cx, cy = rng.uniform(-x0, 1 - x1), rng.uniform(-y0, 1 - y1)
      if not placed:
        ok = all(min(abs(t - 1 / 3), abs(t - 2 / 3)) > 0.03 for t in (cx, cy))
      else:
        ok = all(math.hypot(cx - p["cx"], cy - p["cy"]) >= 0.9 * (obj["scale"] + p["scale"])
                 for p in placed)
        adx, ady = abs(cx - placed[0]["cx"]), abs(cy - placed[0]["cy"])
        ok = ok and max(adx, ady) >= 1.3 * min(adx, ady)
      if ok:
        placed.append(dict(obj, cx=cx, cy=cy))
        break
    else:
      if not placed:  # The main object always fits: its extent is < 1/2 of the image.
        placed.append(dict(obj, cx=0.5, cy=0.5))
  return placed


def relation(main: dict, other: dict) -> str:
  """Where `main` is relative to `other` ("left of", "right of", "above", "below"), by the
  dominant axis between their centres `cx`, `cy` in [0, 1] (y points down)."""
  dx, dy = main["cx"] - other["cx"], main["cy"] - other["cy"]
  if abs(dx) >= abs(dy):
    return "left of" if dx < 0 else "right of"
  return "above" if dy < 0 else "below"


def article(word: str) -> str:
  """The indefinite article before `word`: "a" or "an"."""
  return "an" if word[0] in "aeiou" else "a"


def caption(objects: list[dict]) -> str:
  """Describes the main object (first) and where it is, e.g. "a red circle on the left".

  Args:
    objects: dicts with keys `shape`, `colour` (names), `cx`, `cy` (centre in [0, 1]), the
      main object first.

  Returns:
    A lowercase caption from the words in `CAPTION_WORDS`. A lone object gets its position by
    thirds of the image; otherwise the main object ("large") is related to each distractor
    ("small"), distractors listed left to right.
  """
  main = objects[0]
  if len(objects) == 1:
    where = position(main["cx"], main["cy"])
    return f"{article(main['colour'])} {main['colour']} {main['shape']} {where}"
  others = [dict(o, name=f"a small {o['colour']} {o['shape']}") for o in objects[1:]]
  return relate(f"a large {main['colour']} {main['shape']}", main, others)


def relate(name: str, main: dict, others: list[dict]) -> str:
  """`name` followed by where `main` is relative to each of `others`, listed left to right.

  Args:
    name: the main object's words, e.g. "a large red circle".
    main: its centre `cx`, `cy` in [0, 1].
    others: dicts with `name` and centre `cx`, `cy`.

  Returns:
    E.g. "a large red circle left of a small blue square and below a small green ring"; one
    shared relation is said once: "... left of a small blue square and a small green ring".
  """
  others = sorted(others, key=lambda o: o["cx"])
  relations = [relation(main, o) for o in others]
  if len(set(relations)) == 1:
    tail = f"{relations[0]} " + " and ".join(o["name"] for o in others)
  else:
    tail = " and ".join(f"{r} {o['name']}" for r, o in zip(relations, others))
  return f"{name} {tail}"


def _choose_colours(rng: np.random.Generator, under: np.ndarray) -> np.ndarray:
  """(N,) palette indices, each far from `under[i]`, the mean background beneath object i."""
  distance = np.sqrt(((_PALETTE[None] - under[:, None]) ** 2).sum(-1))  # (N, 8)
  picks = []
  for d in distance:
    ok = np.flatnonzero(d >= _MIN_CONTRAST)
    picks.append(ok[rng.integers(ok.size)] if ok.size else d.argmax())
  return np.array(picks, np.int64)


def _instances(full: np.ndarray, rank: np.ndarray) -> np.ndarray:
  """(H, W) instance map, 0 = background, 1 + i = object i; higher `rank` draws on top."""
  inst = np.zeros(full.shape[1:], np.uint8)
  for i in np.argsort(rank):
    inst[full[i]] = i + 1
  return inst


def _drop_hidden(full: np.ndarray, rank: np.ndarray) -> tuple[list[int], np.ndarray]:
  """Objects to keep so that none is mostly hidden and the main stays the largest.

  Returns:
    The kept indices (the main object, 0, always stays) and their (H, W) instance map.
  """
  keep = list(range(len(full)))
  while True:
    inst = _instances(full[keep], rank[keep])
    vis = np.bincount(inst.ravel(), minlength=len(keep) + 1)[1:]  # (K,)
    frac = vis / np.maximum(full[keep].sum((1, 2)), 1)
    if frac[0] < MIN_VISIBLE_FRACTION:  # Drop the distractor covering the main object most.
      overlap = (full[keep[1:]] & full[0]).sum((1, 2))
      keep.pop(1 + int(overlap.argmax()))
      continue
    bad = [j for j in range(1, len(keep))
           if frac[j] < MIN_VISIBLE_FRACTION or vis[0] < MIN_MAIN_RATIO * vis[j]]
    if not bad:
      return keep, inst
    keep.pop(bad[0])


def _paint(rng: np.random.Generator, img: np.ndarray, objects: list[dict], colours: np.ndarray,
           pixels: list[tuple[np.ndarray, np.ndarray]]) -> None:
  """Fills each object's visible `pixels` (rows, cols) of `img` (H, W, 3) in place."""
  n = len(objects)
  size = img.shape[0]
  rgb = _PALETTE[colours] * rng.uniform(0.85, 1.1, (n, 1)) + rng.normal(0, 8, (n, 3))  # (N, 3)
  # A gentle light ramp across each object, so that no exact colour can be counted.
  theta, gain = rng.uniform(0, 2 * np.pi, n), rng.uniform(0, 0.25, n)
  for i, (obj, (ys, xs)) in enumerate(zip(objects, pixels)):
    along = (((xs + 0.5) / size - obj["cx"]) * np.cos(theta[i])
             + ((ys + 0.5) / size - obj["cy"]) * np.sin(theta[i]))  # (P,)
    img[ys, xs] = rgb[i] * (1 + gain[i] * along / obj["scale"])[:, None]


def render_scene(rng: np.random.Generator, size: int) -> dict:
  """Draws one scene.

  Args:
    rng: the only source of randomness; the same generator state gives the same scene.
    size: image height and width in pixels (32 and 64 are the dataset's sizes).

  Returns:
    A dict with
      image: (size, size, 3) uint8.
      label: int, index into SHAPES of the main object.
      mask: (size, size) uint8 semantic mask, 0 = background, 1 + shape index elsewhere.
      instances: (size, size) uint8, 0 = background, 1 + i for object i (same order as boxes).
      boxes: (N, 4) float32 [ymin, xmin, ymax, xmax] in [0, 1], tight around visible pixels;
        row 0 is the main object.
      box_labels: (N,) int64 shape indices.
      colours: (N,) int64 indices into COLOURS.
      caption: str, see `caption`.
  """
  objects = _place(rng, _sample_objects(rng))
  background = _background(rng, size)  # (H, W, 3) float32
  full = np.stack([_rasterise(o, size) for o in objects])  # (N, H, W) bool
  rank = rng.permutation(len(objects))  # Drawing order: the main object is not always on top.
  keep, inst = _drop_hidden(full, rank)  # inst: (H, W)
  objects, full = [objects[i] for i in keep], full[keep]
  n = len(objects)

  # Mean background under each object, as one matmul: (N, H*W) @ (H*W, 3).
  cover = full.reshape(n, -1).astype(np.float32)
  under = cover @ background.reshape(-1, 3) / cover.sum(1, keepdims=True)  # (N, 3)
  colours = _choose_colours(rng, under)
  pixels = [np.nonzero(inst == i + 1) for i in range(n)]  # Visible (rows, cols) per object.
  img = background
  _paint(rng, img, objects, colours, pixels)
  # Mild per-pixel noise, on objects too.
  img += rng.uniform(4, 16) * (rng.random((size, size, 3), dtype=np.float32) - 0.5)
  image = np.clip(img + 0.5, 0, 255).astype(np.uint8)  # +0.5 then truncate = round.

  shape_ids = np.array([SHAPES.index(o["shape"]) for o in objects], np.int64)
  mask = np.concatenate([[0], shape_ids + 1]).astype(np.uint8)[inst]  # (H, W)
  boxes = np.array([(r.min(), c.min(), r.max() + 1, c.max() + 1) for r, c in pixels], np.float32)
  described = [dict(o, colour=_COLOUR_NAMES[c]) for o, c in zip(objects, colours)]
  return dict(
      image=image,
      label=int(shape_ids[0]),
      mask=mask,
      instances=inst,
      boxes=boxes / size,
      box_labels=shape_ids,
      colours=colours,
      caption=caption(described),
  )
