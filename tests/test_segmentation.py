"""Semantic segmentation: FCN shapes and upsampling, loss, exact mIoU, data, end to end."""

import functools
import gzip
import os
import struct

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from vision_jax import config as config_lib
from vision_jax import figures, sharding
from vision_jax.data import pipeline, transforms
from vision_jax.data.builders import fashion_mnist_local, fashion_scenes
from vision_jax.models import backbone as backbone_lib
from vision_jax.tasks.segmentation import fcn
from vision_jax.tasks.segmentation import metrics as seg_metrics
from vision_jax.tasks.segmentation import task as segmentation
from vision_jax.train import loop

import shipped
from user_backbone import UserBackbone

SMALL_VGG = ("vgg11_bn", {"widths": (8, 8, 16, 16, 16)})
SMALL_RESNET = ("resnet18", {"num_filters": 8})


def _fcn(backbone, kwargs, variant, num_classes=5, **fields):
  return fcn.FCN(num_classes=num_classes, backbone=backbone, variant=variant,
                 backbone_kwargs=flax.core.FrozenDict(kwargs), **fields)


# --- Model --------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", fcn.VARIANTS)
@pytest.mark.parametrize("backbone", [SMALL_VGG, SMALL_RESNET, ("vgg16", {})],
                         ids=lambda b: b[0])
@pytest.mark.parametrize("size", [(64, 64), (70, 45)])  # Divisible by 32, and not.
def test_fcn_logits_are_at_input_resolution(backbone, variant, size):
  model = _fcn(*backbone, variant)
  images = jax.ShapeDtypeStruct((2, *size, 3), jnp.float32)
  (logits, features), variables = jax.eval_shape(
      lambda x: model.init_with_output(jax.random.key(0), x), images)
  assert logits.shape == (2, *size, 5) and logits.dtype == jnp.float32
  params = variables["params"]
  expected = {"32s": {"score32"}, "16s": {"score32", "score16", "up32"},
              "8s": {"score32", "score16", "score8", "up32", "up16"},
              "4s": {"score32", "score16", "score8", "score4", "up32", "up16", "up8"}}[variant]
  assert set(params) == {"backbone"} | expected
  # The backbone is built without its classifier (dense layers): no parameters for it.
  assert not {"head", "fc6", "fc7", "hidden"} & set(params["backbone"])


def test_fcn_picks_stages_by_stride_and_names_them_when_missing():
  vgg = {f"stage{i}": jnp.zeros((1, 224 // 2**i, 224 // 2**i, 1)) for i in range(1, 6)}
  vgg["pooled"] = jnp.zeros((1, 7, 7, 1))  # Same size as stage5 at 224: not a stage.
  assert backbone_lib.stages_by_stride(vgg, 224) == ("stage5", "stage4", "stage3")
  odd = {"stage3": jnp.zeros((1, 31, 31, 1)), "stage4": jnp.zeros((1, 15, 15, 1)),
         "stage5": jnp.zeros((1, 7, 7, 1))}  # VGG at 250 px (floor pooling).
  assert backbone_lib.stages_by_stride(odd, 250) == ("stage5", "stage4", "stage3")
  model = _fcn("resnet20", {}, "8s")  # CIFAR stem: stages at strides 1, 2, 4.
  with pytest.raises(ValueError, match="no stage at stride 32"):
    jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                   jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))


def _shapes(variables) -> dict[str, tuple[int, ...]]:
  return {"/".join(k.key for k in path): leaf.shape
          for path, leaf in jax.tree_util.tree_leaves_with_path(variables)}


def test_fcn_parameters_over_vgg_are_those_of_checkpoints_saved_before_headless_backbones():
  """The FCN once skipped VGG's classifier with an interceptor; the headless backbone gives the
  very same tree, so those checkpoints load: no fc6/fc7/head under backbone/, head layers on top."""
  model = _fcn(*SMALL_VGG, "8s", head_width=16)
  variables = jax.eval_shape(lambda x: model.init(jax.random.key(0), x),
                             jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32))
  convs = {"stage1_conv1": (3, 8), "stage2_conv1": (8, 8), "stage3_conv1": (8, 16),
           "stage3_conv2": (16, 16), "stage4_conv1": (16, 16), "stage4_conv2": (16, 16),
           "stage5_conv1": (16, 16), "stage5_conv2": (16, 16)}
  want = {}
  for name, (cin, cout) in convs.items():
    want |= {f"params/backbone/{name}/kernel": (3, 3, cin, cout),
             f"params/backbone/{name}/bias": (cout,),
             f"params/backbone/{name}_bn/scale": (cout,), f"params/backbone/{name}_bn/bias": (cout,),
             f"batch_stats/backbone/{name}_bn/mean": (cout,),
             f"batch_stats/backbone/{name}_bn/var": (cout,)}
  want |= {"params/fc6/kernel": (7, 7, 16, 16), "params/fc6/bias": (16,),
           "params/fc7/kernel": (1, 1, 16, 16), "params/fc7/bias": (16,),
           "params/up32/deconv/kernel": (4, 4, 5, 5), "params/up16/deconv/kernel": (4, 4, 5, 5)}
  for stride in (32, 16, 8):
    want |= {f"params/score{stride}/kernel": (1, 1, 16, 5), f"params/score{stride}/bias": (5,)}
  assert _shapes(variables) == want


def test_fcn_head_on_hand_made_maps():
  """FCNHead alone: maps by stride, as a sequence (coarsest first) or as a features dict."""
  rng = np.random.default_rng(0)
  maps = {32: rng.normal(size=(2, 2, 3, 6)), 16: rng.normal(size=(2, 4, 6, 5)),
          8: rng.normal(size=(2, 8, 12, 4))}
  maps = {s: jnp.asarray(x, jnp.float32) for s, x in maps.items()}
  head = fcn.FCNHead(num_classes=3, variant="8s")
  variables = head.init(jax.random.key(0), maps, (64, 96))
  assert set(variables["params"]) == {"score32", "score16", "score8", "up32", "up16"}
  variables = jax.tree.map(lambda x: x + 0.1, variables)  # Score layers start at zero.
  logits, score = head.apply(variables, maps, (64, 96))
  assert logits.shape == (2, 64, 96, 3) and score.shape == (2, 8, 12, 3)
  as_list, _ = head.apply(variables, [maps[32], maps[16], maps[8]], (64, 96))
  as_features, _ = head.apply(variables, {"stage3": maps[8], "stage4": maps[16],
                                          "stage5": maps[32], "pre_logits": maps[32][:, 0, 0]},
                              (64, 96))
  np.testing.assert_array_equal(as_list, logits)
  np.testing.assert_array_equal(as_features, logits)
  with pytest.raises(ValueError, match="strides"):
    head.apply(variables, {32: maps[32], 16: maps[16]}, (64, 96))


@pytest.mark.parametrize("backbone", [functools.partial(UserBackbone, num_stages=5),
                                      UserBackbone(num_classes=None, num_stages=5)],
                         ids=["class", "module"])
def test_fcn_on_a_user_backbone(backbone):
  model = fcn.FCN(num_classes=3, backbone=backbone, variant="8s")
  images = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 32, 3)), jnp.float32)
  variables = jax.jit(model.init)(jax.random.key(0, impl="rbg"), images)  # rbg: fast on CPU.
  assert set(variables["params"]) == {"backbone", "score32", "score16", "score8", "up32", "up16"}
  assert set(variables["params"]["backbone"]) == {f"conv{k}" for k in range(1, 6)}
  variables = jax.tree.map(lambda x: x + 0.01, variables)

  def loss(params):
    logits, _ = model.apply({"params": params}, images, train=True)
    return jnp.mean(logits ** 2)

  grads = jax.jit(jax.grad(loss))(variables["params"])
  assert all(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(grads))
  with pytest.raises(ValueError, match="num_classes=None"):
    fcn.FCN(num_classes=3, backbone=UserBackbone(num_classes=4, num_stages=5)).init(
        jax.random.key(0), images)


def test_bilinear_kernel_known_values():
  k2 = fcn.bilinear_kernel(2, 3)  # Size 4, centre 1.5: profile 1 - |i - 1.5| / 2.
  assert k2.shape == (4, 4, 3, 3)
  np.testing.assert_allclose(k2[:, :, 1, 1], np.outer([.25, .75, .75, .25], [.25, .75, .75, .25]))
  np.testing.assert_array_equal(k2[:, :, 0, 1], 0)  # Each channel maps only to itself.
  k3 = fcn.bilinear_kernel(3, 1)[:, :, 0, 0]  # Size 5, centre 2: profile 1 - |i - 2| / 3.
  np.testing.assert_allclose(k3[2], [1 / 3, 2 / 3, 1, 2 / 3, 1 / 3], rtol=1e-6)
  assert fcn.bilinear_kernel(32, 1).shape == (64, 64, 1, 1)


@pytest.mark.parametrize("factor", [2, 3, 8])
def test_bilinear_upsampling_of_constant_and_ramp(factor):
  """The initial transposed convolution interpolates: constants stay, ramps stay ramps."""
  h, w = 6, 5
  ramp = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w))  # value = row
  images = np.stack([np.full((h, w), 3.0, np.float32), ramp])[..., None]  # (2, H, W, 1)
  module = fcn.Upsample(1, factor)
  out = np.asarray(module.apply(module.init(jax.random.key(0), images), images))
  assert out.shape == (2, factor * h, factor * w, 1)
  inner = slice(factor, -factor)  # Away from the zero padding at the border.
  np.testing.assert_allclose(out[0, inner, inner, 0], 3.0, rtol=1e-6)
  # Output row o sits at input row (o + 0.5) / factor - 0.5 (pixel centres aligned).
  rows = (np.arange(factor * h) + 0.5) / factor - 0.5
  np.testing.assert_allclose(out[1, inner, inner, 0],
                             np.broadcast_to(rows[inner, None], out[1, inner, inner, 0].shape),
                             atol=1e-5)
  # The fixed final upsampling equals it inside and holds the edge value at the border.
  fixed = np.asarray(fcn.bilinear_upsample(jnp.asarray(images), factor))
  np.testing.assert_allclose(fixed[:, inner, inner], out[:, inner, inner], atol=1e-5)
  np.testing.assert_allclose(fixed[0], 3.0, rtol=1e-6)
  np.testing.assert_allclose(fixed[1, :, 0, 0], np.clip(rows, 0, h - 1), atol=1e-5)


# --- Loss and labels ----------------------------------------------------------------------------


def _task(**fields):
  fields.setdefault("class_names", ("background", "a", "b"))
  return segmentation.SegmentationTask(**fields)


def _mean_loss(task, logits, mask):
  loss, _ = task.loss((logits, {}), {"mask": mask})
  return float(loss)


def test_ignored_pixels_do_not_change_the_loss():
  rng = np.random.default_rng(0)
  task = _task()
  mask = rng.integers(0, 3, (2, 8, 8, 1)).astype(np.uint8)
  mask[0, :3] = 255  # The ignore label.
  mask[1, :, :2] = 7  # A value past the classes: ignored too (e.g. crop padding).
  logits = rng.normal(size=(2, 8, 8, 3)).astype(np.float32)
  changed = logits.copy()
  changed[0, :3] = rng.normal(size=changed[0, :3].shape) * 10
  changed[1, :, :2] = -changed[1, :, :2]
  assert _mean_loss(task, logits, mask) == pytest.approx(_mean_loss(task, changed, mask))
  changed[1, 5, 5, 0] += 3.0  # A counted pixel does change it.
  assert _mean_loss(task, logits, mask) != pytest.approx(_mean_loss(task, changed, mask))


def test_class_weights_weigh_each_pixel_by_its_true_class():
  rng = np.random.default_rng(1)
  logits = rng.normal(size=(1, 4, 4, 3)).astype(np.float32)
  mask = rng.integers(0, 3, (1, 4, 4, 1)).astype(np.uint8)
  labels = mask[..., 0]
  log_p = jax.nn.log_softmax(logits)
  per_pixel = -np.take_along_axis(np.asarray(log_p), labels[..., None], -1)[..., 0]  # (1, 4, 4)
  weights = np.array([0.5, 2.0, 1.0])
  expected = (per_pixel * weights[labels]).sum() / weights[labels].sum()
  assert _mean_loss(_task(class_weights=tuple(weights)), logits, mask) == pytest.approx(
      expected, rel=1e-5)
  # Weight 0 on a class is the same as ignoring its pixels.
  ignored = np.where(mask == 2, 255, mask).astype(np.uint8)
  assert _mean_loss(_task(class_weights=(1.0, 1.0, 0.0)), logits, mask) == pytest.approx(
      _mean_loss(_task(), logits, ignored), rel=1e-6)


def test_label_map_turns_raw_mask_values_into_classes():
  # Oxford-IIIT Pet trimaps: 1 pet, 2 background, 3 border; 0 (unused) ignored.
  task = _task(class_names=("background", "pet", "border"), label_map=(-1, 1, 0, 2))
  mask = np.array([0, 1, 2, 3, 4, 255], np.uint8).reshape(1, 1, 6, 1)
  np.testing.assert_array_equal(task.labels({"mask": mask})[0, 0], [-1, 1, 0, 2, -1, -1])
  np.testing.assert_array_equal(_task().labels({"mask": mask})[0, 0], [0, 1, 2, -1, -1, -1])


# --- Metrics ------------------------------------------------------------------------------------


def test_miou_of_a_hand_worked_confusion_matrix():
  # Nine pixels of 3 classes. Rows: true class; columns: predicted.
  labels = np.array([0, 0, 0, 0, 1, 1, 1, 2, 2])
  predictions = np.array([0, 0, 0, 1, 1, 1, 2, 2, 0])
  confusion = np.asarray(seg_metrics.confusion_matrix(labels, predictions, labels >= 0, 3))
  np.testing.assert_array_equal(confusion, [[3, 1, 0],
                                            [0, 2, 1],
                                            [1, 0, 1]])
  m = seg_metrics.metrics_from_confusion(confusion)
  # IoU_c = n_cc / (row_c + col_c - n_cc): 3 / (4 + 4 - 3), 2 / (3 + 3 - 2), 1 / (2 + 2 - 1).
  np.testing.assert_allclose(m["iou"], [3 / 5, 2 / 4, 1 / 3])
  assert m["miou"] == pytest.approx((3 / 5 + 2 / 4 + 1 / 3) / 3)
  assert m["pixel_accuracy"] == pytest.approx(6 / 9)
  assert m["mean_accuracy"] == pytest.approx((3 / 4 + 2 / 3 + 1 / 2) / 3)


def test_classes_absent_everywhere_are_left_out_of_the_mean():
  confusion = np.array([[5, 1, 0], [1, 3, 0], [0, 0, 0]])  # Class 2: never true, never predicted.
  m = seg_metrics.metrics_from_confusion(confusion)
  assert np.isnan(m["iou"][2])
  assert m["miou"] == pytest.approx((5 / 7 + 3 / 5) / 2)
  metrics = _task().finalize({"confusion": confusion, "loss": 2.0, "loss_weight": 10.0,
                              "count": 3.0})
  assert "iou/b" not in metrics and metrics["iou/a"] == pytest.approx(3 / 5)
  assert metrics["loss"] == pytest.approx(0.2) and metrics["num_pixels"] == 10


def test_confusion_matrix_over_padded_sharded_batches_is_exact():
  """Eval sums over 8 devices and a padded last batch equal one pass in numpy."""
  rng = np.random.default_rng(2)
  n, k = 21, 3  # 21 = 2 full batches of 8 and one padded with 3 empty rows.
  source = [{"image": rng.integers(0, 256, (8, 8, 3), np.uint8),
             "mask": rng.choice([0, 1, 2, 255], (8, 8, 1)).astype(np.uint8)} for _ in range(n)]
  config = config_lib.base_config().input
  config.eval_batch_size = 8
  task = _task()
  mesh = sharding.make_mesh()
  batch_sharding = sharding.data_sharding(mesh)

  def predict(image):  # Any deterministic "model": class from the red channel.
    return jax.nn.one_hot((image[..., 0] > 0).astype(jnp.int32) + (image[..., 1] > 0), k)

  eval_sums = jax.jit(lambda b: task.eval_sums((predict(b["image"]), {}), b),
                      in_shardings=(batch_sharding,), out_shardings=sharding.replicated(mesh))
  total = None
  for batch in pipeline.eval_batches(source, pipeline.InputOptions.from_config(config),
                                     keys=task.keys, kinds=task.feature_kinds):
    sums = eval_sums(sharding.to_global(batch, batch_sharding))
    total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  expected = np.zeros((k, k), np.int64)
  for ex in source:
    image = (ex["image"].astype(np.float32) / 255 - 0.5) / 0.25
    pred = (image[..., 0] > 0).astype(int) + (image[..., 1] > 0)
    label = ex["mask"][..., 0].astype(int)
    valid = label < k
    np.add.at(expected, (label[valid], pred[valid]), 1)
  np.testing.assert_array_equal(np.asarray(total["confusion"]), expected)
  assert float(total["count"]) == n


# --- Data ---------------------------------------------------------------------------------------


def test_random_scale_crop_moves_image_and_mask_together_and_pads_masks_with_fill():
  rows, cols = np.mgrid[0:24, 0:32]
  image = np.stack([rows * 10, cols * 7, np.full_like(rows, 200)], -1).astype(np.uint8)
  example = {"image": image, "mask": ((cols // 8) + 1).astype(np.uint8)[..., None]}
  scales = set()
  for seed in range(20):
    out = transforms.random_scale_crop(example, np.random.default_rng(seed), 20, (0.5, 2.0),
                                       kinds={"image": "image", "mask": "mask"})
    assert out["image"].shape == (20, 20, 3) and out["mask"].shape == (20, 20, 1)
    padded = out["mask"][..., 0] == transforms.MASK_FILL
    np.testing.assert_array_equal(out["image"][padded], 0)  # Padding in both, same place.
    assert np.all(out["image"][~padded][:, 2] > 0)
    assert set(np.unique(out["mask"][~padded])) <= {1, 2, 3, 4}  # Nearest: labels stay labels.
    # Masks follow the image: the mask column block matches the image's column ramp (x 7).
    real = ~padded
    block = np.floor(out["image"][..., 1][real] / 7 / 8) + 1
    assert np.mean(np.abs(block - out["mask"][..., 0][real]) <= 1) > 0.95
    scales.add(int(padded.sum()))
  assert len(scales) > 5  # Random scales and places.


def _write_idx(path, array):
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(
      f">{array.ndim}I", *array.shape)
  with open(path, "wb") as f:
    f.write(gzip.compress(header + array.astype(np.uint8).tobytes()))


def _fake_fashion_mnist(directory, rng):
  """Solid 28x28 'garments' of value 250 (rectangles of random size) on a 0 ground."""
  for split, n in (("train", 40), ("test", 20)):
    items = np.zeros((n, 28, 28), np.uint8)
    for item in items:
      top, left = rng.integers(2, 10, 2)
      item[top:top + rng.integers(10, 18), left:left + rng.integers(10, 18)] = 250
    images_name, labels_name = fashion_mnist_local.FILES[split]
    _write_idx(os.path.join(directory, images_name + ".gz"), items)
    _write_idx(os.path.join(directory, labels_name + ".gz"), np.arange(n) % 10)


def test_fashion_scene_masks_agree_with_where_the_items_are(tmp_path):
  rng = np.random.default_rng(3)
  _fake_fashion_mnist(tmp_path, rng)
  items = fashion_mnist_local.read_idx(tmp_path / "train-images-idx3-ubyte.gz")
  labels = fashion_mnist_local.read_idx(tmp_path / "train-labels-idx1-ubyte.gz")
  for seed in range(30):
    s = fashion_scenes.render_scene(np.random.default_rng(seed), items, labels, 48)
    n = len(s["items"])
    assert 1 <= n <= 3
    lut = np.concatenate([[0], labels[s["items"]] + 1])
    np.testing.assert_array_equal(s["mask"], lut[s["instances"]])
    # Garment pixels are the (resized) items' pixels above the threshold; the items' solid
    # insides (250) show nowhere else: the background stays far below.
    assert np.all(s["image"][s["instances"] > 0] > fashion_scenes.THRESHOLD)
    assert np.all(s["instances"][s["image"] == 250] > 0) and np.any(s["image"] == 250)
    for k in range(n):
      rows, cols = np.nonzero(s["instances"] == k + 1)
      box = np.array([rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]) / 48
      np.testing.assert_allclose(s["boxes"][k], box, atol=1e-6)


def test_fashion_scene_captions_name_the_main_garment_and_where_the_others_are():
  box = lambda cy, cx, h=0.2: [cy - h / 2, cx - h / 2, cy + h / 2, cx + h / 2]  # noqa: E731
  caption = fashion_scenes.caption
  assert caption(np.array([box(0.2, 0.2)]), np.array([4]), np.array([50])) == (
      "a coat in the top left")
  assert caption(np.array([box(0.5, 0.5)]), np.array([9]), np.array([50])) == (
      "an ankle boot in the centre")
  # The main garment (most visible pixels) comes first; the others left to right.
  boxes = np.array([box(0.5, 0.8), box(0.5, 0.2), box(0.6, 0.5)])
  assert caption(boxes, np.array([8, 1, 3]), np.array([10, 20, 90])) == (
      "a dress right of a trouser and left of a bag")
  assert caption(boxes[:2], np.array([8, 1]), np.array([10, 20])) == "a trouser left of a bag"
  # Dominant axis: far below, a little to the right → "below"; one shared relation said once.
  boxes = np.array([box(0.8, 0.45), box(0.2, 0.3), box(0.3, 0.6)])
  assert caption(boxes, np.array([0, 5, 7]), np.array([90, 20, 10])) == (
      "a top below a sandal and a sneaker")


def test_fashion_scenes_builder_stores_the_rendered_scenes(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  _fake_fashion_mnist(manual, np.random.default_rng(4))
  config = fashion_scenes.FashionScenesConfig(name="tiny32", size=32,
                                              num_examples={"train": 12, "test": 6})
  builder = fashion_scenes.FashionScenes(config=config, data_dir=tmp_path / "tfds")
  builder.download_and_prepare(
      file_format="array_record",
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual)))
  assert {k: v.num_examples for k, v in builder.info.splits.items()} == {"train": 12, "test": 6}
  items = fashion_mnist_local.read_idx(manual / "t10k-images-idx3-ubyte.gz")
  labels = fashion_mnist_local.read_idx(manual / "t10k-labels-idx1-ubyte.gz")
  stored = {}
  for ex in builder.as_data_source(split="test"):
    stored[ex["image"].tobytes()] = ex
  for i in range(6):  # TFDS shuffles the order; every rendered scene is stored, mask with it.
    ex = fashion_scenes.make_example("test", i, items, labels, config)
    np.testing.assert_array_equal(stored[ex["image"].tobytes()]["mask"], ex["mask"])
    assert stored[ex["image"].tobytes()]["caption"].decode() == ex["caption"]
    assert ex["caption"].split()[1] in " ".join(fashion_scenes.CAPTION_NAMES)


# --- End to end ---------------------------------------------------------------------------------


_load_config = shipped.load_config


def test_mock_oxford_pets_trains_one_step_and_draws_predictions(tmp_path):
  """configs/pets_fcn.py as shipped, only smaller: renamed mask key, label map, random scale."""
  c = _load_config("pets_fcn")
  c.model.name, c.model.kwargs.widths = SMALL_VGG[0], SMALL_VGG[1]["widths"]
  c.model.dtype = "float32"
  c.input.image_size = 64
  c.input.batch_size = c.input.eval_batch_size = 8
  c.input.num_workers = 0
  c.train.num_steps = 1
  c.train.progress_bar = False
  c.segmentation.num_pictures = 2
  with tfds.testing.mock_data(num_examples=10):
    result = loop.train_and_evaluate(c, str(tmp_path))
    # Inference rebuilds the FCN through the workdir's task: a class per pixel.
    from vision_jax import inference
    loaded = inference.load_for_inference(str(tmp_path))
    images = np.random.default_rng(0).integers(0, 256, (2, 80, 96, 3), np.uint8)
    mask = loaded.predict(images)["mask"]
  assert mask.shape == (2, 64, 64) and ((0 <= mask) & (mask < loaded.task.num_classes)).all()
  assert result["step"] == 1 and result["num_examples"] == 10  # One full, one padded batch.
  assert 0.0 <= result["miou"] <= 1.0 and 0.0 <= result["pixel_accuracy"] <= 1.0
  assert result["num_pixels"] <= 10 * 64 * 64  # Mock masks are random bytes: mostly ignored.
  picture = tmp_path / "segmentation" / "step_0000001.png"
  assert picture.stat().st_size > 0
  from PIL import Image
  assert Image.open(picture).size == (800, 2 * 200 + 50)  # 4 columns, 2 rows, title band.
  from tensorboard.backend.event_processing import event_accumulator
  events = event_accumulator.EventAccumulator(str(tmp_path / "tensorboard")).Reload()
  [image] = events.Images("eval/segmentation")  # The same picture, in TensorBoard too.
  assert image.step == 1 and image.encoded_image_string == picture.read_bytes()


def test_pmap_trains_the_fcn_like_jit(tmp_path, float64):
  """Under pmap the backbone's BatchNorm runs over the global batch and devices weigh by their
  counted pixels: the same numbers as jit (float64: equal to rounding, see test_parallel)."""
  results = {}
  for strategy in ("jit", "pmap"):
    c = _load_config("shapes_fcn")
    c.model.dtype = "float64"
    c.dataset.name = "oxford_iiit_pet"  # Mock data: same random images in both runs.
    c.dataset.in_memory = False
    c.segmentation.mask_key = "segmentation_mask"
    c.input.image_size = 32
    c.input.batch_size = c.input.eval_batch_size = 16
    c.input.num_workers = 0
    c.model.kwargs.widths = (4, 4, 8, 8, 8)
    c.parallel.strategy = strategy
    c.train.num_steps = 2
    c.train.progress_bar = False
    c.segmentation.num_pictures = 0
    with tfds.testing.mock_data(num_examples=16):
      results[strategy] = loop.train_and_evaluate(c, str(tmp_path / strategy))
  assert results["pmap"]["step"] == results["jit"]["step"] == 2
  for metric in ("loss", "miou", "pixel_accuracy"):
    np.testing.assert_allclose(results["pmap"][metric], results["jit"][metric], rtol=1e-9,
                               err_msg=metric)


def test_picture_shows_image_truth_and_prediction(tmp_path):
  from vision_jax.tasks.segmentation import pictures as seg_viz
  rng = np.random.default_rng(5)
  labels = rng.integers(-1, 3, (3, 16, 16))
  path = seg_viz.plot_predictions(rng.integers(0, 256, (3, 16, 16, 1), np.uint8), labels,
                                  np.clip(labels, 0, 2), ("background", "a", "b"),
                                  str(tmp_path / "p.png"), title="t")
  from PIL import Image
  assert Image.open(path).size == (800, 3 * 200 + 50)
  colours = figures.class_colours(3)
  np.testing.assert_array_equal(seg_viz.colourise(np.array([[-1, 2]]), colours)[0, 0],
                                [255, 255, 255])


@pytest.mark.parametrize("field, value, expected", [
    ("variant", "2s", "32s"),
    ("class_weights", (1.0, 2.0), "one non-negative weight per class"),
    ("label_map", (0, 9), "only 7 classes"),
])
def test_bad_segmentation_config_names_the_fix(field, value, expected):
  c = _load_config("shapes_fcn")
  c.input.crop_padding = 4
  *section, key = field.split(".")
  c[section[0] if section else "segmentation"][key] = value
  with pytest.raises(ValueError) as error:
    config_lib.validate(c, num_devices=8)
  assert expected in str(error.value)


def test_classifier_weights_start_the_fcn_backbone():
  import optax
  from vision_jax import models
  from vision_jax.train.state import create_train_state
  from vision_jax.train.weights import load_pretrained
  name, kwargs = SMALL_VGG
  classifier = models.get_model(name, num_classes=10, **kwargs)
  images = np.zeros((1, 32, 32, 3), np.float32)
  pretrained = jax.device_get(classifier.init(jax.random.key(1), images))
  mesh = sharding.make_mesh(jax.devices()[:1])
  state = create_train_state(_fcn(name, kwargs, "8s"), optax.sgd(0.1), jax.random.key(0),
                             (32, 32, 3), mesh, use_ema=False)
  state, kept = load_pretrained(state, pretrained)
  assert all(not path.startswith("params/backbone/") for path in kept)  # All loaded...
  assert "params/score8/kernel" in kept  # ...the FCN's own layers stay fresh.
  np.testing.assert_array_equal(state.params["backbone"]["stage1_conv1"]["kernel"],
                                pretrained["params"]["stage1_conv1"]["kernel"])
  np.testing.assert_array_equal(state.batch_stats["backbone"]["stage1_conv1_bn"]["mean"],
                                pretrained["batch_stats"]["stage1_conv1_bn"]["mean"])


@pytest.mark.parametrize("in_memory", [False, True])
def test_open_split_renames_features(tiny_shapes_dir, in_memory):
  from vision_jax.data import datasets
  builder = tfds.builder("synthetic_shapes/tiny32", data_dir=tiny_shapes_dir)
  plain = datasets.open_split(builder, "test", keys=("image", "mask"))
  renamed = datasets.open_split(builder, "test", keys={"image": "image", "seg": "mask"},
                                in_memory=in_memory)
  assert len(renamed) == len(plain) and set(renamed[3]) == {"image", "seg"}
  np.testing.assert_array_equal(renamed[3]["seg"], plain[3]["mask"])
