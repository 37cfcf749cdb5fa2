"""Tests for vision_jax.models: the API contract of every registered model, golden parameter
counts, and that a small model can fit one batch.

Checks that only need shapes and dtypes use `jax.eval_shape`, which traces without compiling or
allocating, so they cover every model cheaply, ResNet-152 included. Numeric checks compile the
network, and XLA's CPU compile time grows with depth (about two minutes for ResNet-152 on two
cores), so, as in timm, the fast tier runs them once per distinct piece of code (both stems, both
block types, projection shortcuts) and the deeper repeats run with `pytest -m slow`.
"""

import functools

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vision_jax import models
from vision_jax.models import precision, resnet
from vision_jax.tasks.captioning import captioner
from vision_jax.tasks.detection import faster_rcnn
from vision_jax.tasks.segmentation import fcn

BATCH = 4
NUM_CLASSES = 5
IMAGES = jax.ShapeDtypeStruct((BATCH, 32, 32, 3), jnp.float32)

# The fast tier: resnet20 and the tiny ResNet below cover both stems and both block types; the
# other ResNets repeat them, and tests/test_zoo.py checks the other families numerically on
# small members.
_FAST = ("mlp", "simple_cnn", "resnet20")
# Families that always have BatchNorm; VGG and SimpleCNN have it where their `batch_norm` says.
_NORM_FAMILIES = ("resnet", "wide_resnet", "googlenet")
# Not registered: covers the ImageNet stem and BottleneckBlock (stride on the 3x3, projections
# with stride 1 and 2) in seconds.
_TINY_BOTTLENECK = functools.partial(
    resnet.ResNet, stage_sizes=(1, 1), block_cls=resnet.BottleneckBlock, num_filters=8)
NUMERIC_CASES = [
    *(name if name in _FAST else pytest.param(name, marks=pytest.mark.slow)
      for name in models.MODELS),
    "tiny_bottleneck_resnet",
]


def _build(name: str):
  if name == "tiny_bottleneck_resnet":
    return _TINY_BOTTLENECK(num_classes=NUM_CLASSES)
  return models.get_model(name, num_classes=NUM_CLASSES)


def _has_norm(name: str, model) -> bool:
  if name == "tiny_bottleneck_resnet":
    return True
  return (models.model_info(name).family in _NORM_FAMILIES
          or getattr(model, "batch_norm", False))


def _key(seed: int) -> jax.Array:
  # XLA's CPU compiler spends seconds on each use of the default threefry generator; "rbg"
  # compiles fast, and which random values the weights or dropout masks get does not matter here.
  return jax.random.key(seed, impl="rbg")


def _batch(size: int, image_shape=IMAGES.shape[1:], num_classes=NUM_CLASSES, seed=0):
  # NumPy, not jax.random, so that making test data compiles nothing.
  rng = np.random.default_rng(seed)
  images = rng.normal(size=(size, *image_shape)).astype(np.float32)  # (B, H, W, C)
  return images, rng.integers(0, num_classes, size)  # (B,)


def _init(model, images):
  return jax.jit(functools.partial(model.init, train=False))(_key(0), images)


def _abstract_variables(model, images=IMAGES):
  return jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0), images)


@pytest.mark.parametrize("name", models.MODELS)
def test_output_contract_in_bfloat16(name):
  model = models.get_model(name, num_classes=NUM_CLASSES, dtype=jnp.bfloat16)
  variables = _abstract_variables(model)
  # Mixed precision computes in bfloat16 but keeps parameters and BatchNorm statistics in float32.
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}

  for train in (False, True):
    apply = functools.partial(
        model.apply, train=train, mutable=["batch_stats"], rngs={"dropout": jax.random.key(1)})
    (logits, features), _ = jax.eval_shape(apply, variables, IMAGES)
    assert logits.shape == (BATCH, NUM_CLASSES)
    assert logits.dtype == jnp.float32  # For a stable softmax.
    assert features
    for key, value in features.items():
      assert value.shape[0] == BATCH, key
      # Auxiliary classifier logits (GoogLeNet, training only) are float32 like the main logits.
      assert value.dtype == (jnp.float32 if key.startswith("aux") else jnp.bfloat16), key


# One model per file that casts its outputs.
@pytest.mark.parametrize("name", ["mlp", "simple_cnn", "resnet20", "wrn40_4", "alexnet",
                                  "vgg11_bn", "googlenet"])
def test_output_contract_in_float64(name, float64):
  """config.model.dtype="float64": parameters, statistics, logits and features in float64."""
  model = models.get_model(name, num_classes=NUM_CLASSES, **precision.dtypes("float64"))
  variables = _abstract_variables(model)
  assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float64)}
  apply = functools.partial(model.apply, train=True, mutable=["batch_stats"],
                            rngs={"dropout": jax.random.key(1)})
  (logits, features), _ = jax.eval_shape(apply, variables, IMAGES)  # float32 images in.
  assert {logits.dtype} | {v.dtype for v in features.values()} == {jnp.dtype(jnp.float64)}


def test_heads_keep_float64_through_their_losses(float64):
  """FCN, captioner and Faster R-CNN: outputs and losses stay float64 (no float32 cast)."""
  dtypes = precision.dtypes("float64")
  key, images = jax.random.key(0), jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  small = flax.core.FrozenDict({"widths": (4, 4, 8, 8, 8)})
  seg = fcn.FCN(num_classes=3, backbone="vgg11_bn", backbone_kwargs=small, **dtypes)
  (logits, _), _ = jax.eval_shape(lambda x: seg.init_with_output(key, x), images)
  assert logits.dtype == jnp.float64
  cap = captioner.Captioner(backbone="simple_cnn", feature="conv2", vocab_size=9, embed_dim=4,
                            hidden_dim=8, attention_dim=4, **dtypes)
  tokens = jnp.ones((2, 5), jnp.int32)
  loss = jax.eval_shape(lambda x: captioner.caption_loss(
      cap.init_with_output(key, x, tokens)[0][0], tokens)[0], images)
  assert loss.dtype == jnp.float64
  det = faster_rcnn.FasterRCNN(num_classes=3, backbone="vgg11_bn", backbone_kwargs=small,
                               feature_width=8, rpn_width=8, head_width=8, anchor_sizes=(8.0,),
                               rpn_pre_nms_train=16, rpn_post_nms_train=8, roi_batch_size=4,
                               **dtypes)
  boxes = jnp.tile(jnp.array([[[4.0, 4.0, 20.0, 20.0]]], jnp.float32), (2, 1, 1))
  (losses, _), _ = jax.eval_shape(lambda x: det.init_with_output(
      {"params": key, "dropout": key}, x, boxes, jnp.zeros((2, 1), jnp.int32), train=True),
      images)
  assert {losses[k].dtype for k in ("rpn_objectness", "rpn_box", "rcnn_class", "rcnn_box")} == {
      jnp.dtype(jnp.float64)}


@pytest.mark.parametrize("shape", [(2, 8, 8, 1), (2, 37, 45, 4)])
@pytest.mark.parametrize("name", models.MODELS)
def test_any_image_size_and_channels(name, shape):
  images = jax.ShapeDtypeStruct(shape, jnp.float32)
  model = models.get_model(name, num_classes=NUM_CLASSES)
  variables = _abstract_variables(model, images)
  logits, features = jax.eval_shape(
      functools.partial(model.apply, train=False), variables, images)
  assert logits.shape == (shape[0], NUM_CLASSES)
  assert logits.dtype == jnp.float32
  assert all(value.dtype == jnp.float32 for value in features.values())


def _set_norm_scales(params, value: float):
  """Sets every BatchNorm scale (the only parameters named "scale") to `value`."""
  return jax.tree_util.tree_map_with_path(
      lambda path, x: np.full_like(x, value) if path[-1].key == "scale" else x, params)


@pytest.mark.parametrize("name", NUMERIC_CASES)
def test_train_step_is_finite_and_reaches_every_parameter(name):
  model = _build(name)
  images, labels = _batch(BATCH)
  # On the host as NumPy, so that inspecting results below compiles nothing.
  variables = jax.device_get(_init(model, images))
  has_norm = "batch_stats" in variables
  assert has_norm == _has_norm(name, model)

  @jax.jit
  def loss_and_grads(params):
    def loss_fn(params):
      (logits, features), updates = model.apply(
          {**variables, "params": params}, images, train=True, mutable=["batch_stats"],
          rngs={"dropout": _key(1)})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      for aux in ("aux1", "aux2"):  # GoogLeNet's auxiliary classifiers, as in its paper.
        if aux in features:
          loss += 0.3 * optax.softmax_cross_entropy_with_integer_labels(
              features[aux], labels).mean()
      return loss, (logits, updates)
    eval_logits, _ = model.apply({**variables, "params": params}, images, train=False)
    return jax.value_and_grad(loss_fn, has_aux=True)(params), eval_logits

  ((loss, (logits, updates)), grads), eval_logits = jax.device_get(
      loss_and_grads(variables["params"]))
  assert np.isfinite(loss)
  assert np.all(np.isfinite(logits)) and np.all(np.isfinite(eval_logits))
  assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))

  if has_norm:
    # Training mode moves every running mean and variance towards the batch statistics.
    changed = jax.tree.map(lambda old, new: bool(np.any(old != new)),
                           variables["batch_stats"], updates["batch_stats"])
    assert all(jax.tree.leaves(changed))
  if "resnet" in name:
    # The last BatchNorm of each residual branch starts with scale 0, so that the block starts
    # as the identity; those scales must still get a gradient, or the branches would stay shut.
    zero_scale_grads = jax.tree.leaves(jax.tree_util.tree_map_with_path(
        lambda path, p, g: g if path[-1].key == "scale" and not p.any() else None,
        variables["params"], grads))
    assert zero_scale_grads and all(np.any(g != 0) for g in zero_scale_grads)
  if not has_norm:
    assert not updates

  # Behind a zero scale, the rest of the branch gets exactly zero gradient at step 0 (it starts
  # learning once the scale has moved). To check that every parameter is wired into the loss,
  # take gradients with all BatchNorm scales set to 1 instead; same shapes, so no recompile.
  (_, grads), _ = jax.device_get(loss_and_grads(_set_norm_scales(variables["params"], 1.0)))
  dead = [jax.tree_util.keystr(path)
          for path, g in jax.tree_util.tree_leaves_with_path(grads) if not np.any(g != 0)]
  assert not dead, f"parameters without gradient: {dead}"


@pytest.mark.parametrize("name, num_classes, image_size, expected", [
    # ImageNet ResNets match torchvision's counts exactly (same layers; BatchNorm statistics are
    # not parameters).
    ("resnet18", 1000, 224, 11_689_512),
    ("resnet34", 1000, 224, 21_797_672),
    ("resnet50", 1000, 224, 25_557_032),
    ("resnet101", 1000, 224, 44_549_160),
    ("resnet152", 1000, 224, 60_192_808),
    # The paper's 0.27M for ResNet-20 uses zero-padding shortcuts; our two projection shortcuts
    # (16->32 and 32->64 channels, 1x1 conv + BatchNorm) add 2,752 parameters.
    ("resnet20", 10, 32, 272_474),
])
def test_parameter_count(name, num_classes, image_size, expected):
  model = models.get_model(name, num_classes=num_classes)
  images = jax.ShapeDtypeStruct((1, image_size, image_size, 3), jnp.float32)
  params = _abstract_variables(model, images)["params"]
  num_params = sum(leaf.size for leaf in jax.tree.leaves(params))
  assert num_params == expected
  if name == "resnet20":
    assert 260_000 <= num_params <= 280_000


def test_get_model_passes_fields_and_rejects_unknown_names():
  model = models.get_model("simple_cnn", num_classes=3, dropout_rate=0.5, dtype=jnp.bfloat16)
  assert (model.num_classes, model.dropout_rate, model.dtype) == (3, 0.5, jnp.bfloat16)
  with pytest.raises(ValueError, match=r"'nope'.*'resnet50'"):
    models.get_model("nope", num_classes=10)


def test_dropout_is_random_only_in_training():
  model = models.get_model("simple_cnn", num_classes=NUM_CLASSES, dropout_rate=0.5)
  images, _ = _batch(2, image_shape=(16, 16, 3))
  variables = _init(model, images)
  apply = jax.jit(model.apply, static_argnames="train")
  # Evaluation needs no rng and is deterministic.
  np.testing.assert_array_equal(apply(variables, images)[0], apply(variables, images)[0])
  train_logits = [apply(variables, images, train=True, rngs={"dropout": _key(seed)})[0]
                  for seed in (0, 1)]
  assert not np.allclose(*train_logits)


def test_bn_axis_name_averages_statistics_over_the_axis():
  """Two shards normalised with `bn_axis_name` behave like one unsharded batch."""
  tiny = functools.partial(
      resnet.ResNet, num_classes=NUM_CLASSES, stage_sizes=(1, 1), block_cls=resnet.BasicBlock,
      num_filters=8, stem="cifar")
  local, synced = tiny(), tiny(bn_axis_name="shards")
  images, _ = _batch(2 * BATCH, image_shape=(8, 8, 3))
  variables = _init(local, images)

  def train_apply(model, x):
    (logits, _), updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    return logits, updates["batch_stats"]

  # vmap with an axis name resolves collectives (the pmean inside BatchNorm) the way pmap does
  # across devices, without needing several devices.
  shards = images.reshape(2, BATCH, *images.shape[1:])  # (shards, B, H, W, C)
  logits, stats = jax.jit(jax.vmap(functools.partial(train_apply, synced), axis_name="shards"))(
      shards)
  want_logits, want_stats = jax.jit(functools.partial(train_apply, local))(images)
  np.testing.assert_allclose(logits.reshape(want_logits.shape), want_logits, atol=1e-4)
  jax.tree.map(
      lambda s, w: np.testing.assert_allclose(s, np.broadcast_to(w, s.shape), atol=1e-5),
      stats, want_stats)


def test_simple_cnn_overfits_one_batch():
  model = models.get_model("simple_cnn", num_classes=10)
  images, labels = _batch(16, image_shape=(16, 16, 3), num_classes=10)
  params = _init(model, images)["params"]
  optimizer = optax.adam(1e-3)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(params):
      logits, _ = model.apply({"params": params}, images, train=True)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, jnp.mean(jnp.argmax(logits, -1) == labels)
    (_, accuracy), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = optimizer.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, accuracy

  for _ in range(300):
    params, opt_state, accuracy = step(params, opt_state)  # Accuracy before this update.
    if accuracy == 1.0:
      break
  assert accuracy == 1.0


@pytest.mark.parametrize("shape", [(2, 8, 8, 3), (1, 7, 9, 2)])
def test_reshape_max_pool_equals_flax_max_pool(shape):
  import flax.linen as nn
  from vision_jax.models import pooling
  x = np.random.default_rng(0).normal(size=shape).astype(np.float32)
  np.testing.assert_array_equal(pooling.max_pool(x, 2), nn.max_pool(x, (2, 2), strides=(2, 2)))


def test_summary_counts_parameters_and_flops():
  from vision_jax.tools import summary
  stats = summary.model_stats("simple_cnn", image_size=32, num_classes=10)
  assert stats.num_params == 545_098
  # By hand, 2 x multiply-adds: conv1 32*32*32*27, conv2 16*16*64*288, dense 4096*128 + 128*10.
  by_hand = 2 * (32 * 32 * 32 * 27 + 16 * 16 * 64 * 288 + 4096 * 128 + 128 * 10)
  assert 0.9 < stats.flops_per_image / by_hand < 1.1
  text = summary.summary("mlp", image_size=8, num_classes=10)
  assert "GFLOPs per image" in text and "Dense" in text


def test_simple_cnn_batch_norm_option_adds_statistics_and_drops_conv_biases():
  """`batch_norm=True`: conv biases go (the norm's offset replaces them), each conv gets a
  BatchNorm with running statistics; evaluation normalises an example the same whatever else
  is in its batch, training with the batch's statistics does not."""
  plain = models.get_model("simple_cnn", num_classes=3)
  normed = models.get_model("simple_cnn", num_classes=3, batch_norm=True)
  x = jax.random.normal(jax.random.key(0), (4, 16, 16, 3))
  assert "bias" in plain.init(jax.random.key(1), x)["params"]["conv1"]
  variables = normed.init(jax.random.key(1), x)
  assert "bias" not in variables["params"]["conv1"]
  assert set(variables["batch_stats"]) == {"norm1", "norm2"}
  alone = normed.apply(variables, x[:1], train=False)[0]
  np.testing.assert_allclose(normed.apply(variables, x, train=False)[0][:1], alone, rtol=1e-5,
                             atol=1e-6)
  (train_out, _), _ = normed.apply(variables, x, train=True, mutable=["batch_stats"])
  assert not np.allclose(train_out[:1], alone, atol=1e-3)
