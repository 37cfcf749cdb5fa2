"""Pictures of what the network sees: by-hand references, the CLI's PNGs, Grad-CAM's aim."""

import os

import flax.linen as nn
import jax
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest
from PIL import Image

from vision_jax import config as config_lib
from vision_jax import inference, sharding
from vision_jax.course import convolution, filters, max_pool, x_vs_o
from vision_jax.models import pooling
from vision_jax.train import loop, weights
from vision_jax.train.state import create_train_state
from vision_jax.viz import __main__ as cli
from vision_jax.viz import attribution


def _size(path) -> tuple[int, int]:
  with Image.open(path) as image:
    return image.size  # (width, height)


@pytest.mark.parametrize("stride, padding", [(1, 0), (2, 0), (1, 1), (2, 2)])
def test_convolution_by_hand_is_lax_conv(stride, padding):
  """CNN "convolution" is cross-correlation: the filter slides unflipped."""
  rng = np.random.default_rng(stride * 10 + padding)
  image = rng.normal(size=(7, 9)).astype(np.float32)
  kernel = rng.normal(size=(3, 3)).astype(np.float32)
  expected = jax.lax.conv_general_dilated(
      image[None, :, :, None], kernel[:, :, None, None], window_strides=(stride, stride),
      padding=[(padding, padding)] * 2, dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST)[0, :, :, 0]
  np.testing.assert_allclose(convolution.convolve_by_hand(image, kernel, stride, padding),
                             expected, rtol=1e-5, atol=1e-5)


def test_course_notes_examples():
  np.testing.assert_array_equal(
      convolution.convolve_by_hand(convolution.NOTES_IMAGE, convolution.NOTES_FILTER),
      [[4, 3, 4], [2, 4, 3], [2, 3, 4]])
  np.testing.assert_array_equal(max_pool.max_pool_by_hand(max_pool.NOTES_INPUT), [[6, 8], [3, 4]])
  x = np.random.default_rng(0).normal(size=(6, 8)).astype(np.float32)
  np.testing.assert_array_equal(max_pool.max_pool_by_hand(x),
                                pooling.max_pool(x[None, :, :, None], 2)[0, :, :, 0])
  kernel = filters.CLASSIC_FILTERS["sharpen"]
  np.testing.assert_allclose(filters.apply_filter(x, kernel, pad_mode="constant"),
                             convolution.convolve_by_hand(x, kernel, padding=1), atol=1e-5)


@pytest.mark.parametrize("argv, size", [
    (["pixels"], (1200, 650)),
    (["pixels", "--source", "fashion_mnist", "--size", "28"], (1200, 650)),
    (["convolution"], (1200, 855)),
    (["filters"], (1200, 400)),
    (["filters", "--source", "shapes", "--filters", "box blur"], (600, 400)),
    (["max_pool"], (800, 475)),
])
def test_course_pictures(tmp_path, argv, size):
  path = cli.main(argv + ["--out", str(tmp_path / "out.png")])
  assert _size(path) == size


def test_x_vs_o_learns_diagonal_filters(tmp_path):
  result = x_vs_o.train(seed=0)
  assert result.accuracy > 0.95
  diagonals = [list(x_vs_o.NOTES_FILTERS).index(d) for d in "\\/"]
  assert result.similarity[:, diagonals].max() > 0.6, result.similarity
  assert _size(x_vs_o.plot_x_vs_o(result, str(tmp_path / "x.png"))) == (1260, 580)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_shapes_dir):
  """A two-step simple_cnn run on tiny shapes, on the 8 fake devices, with EMA weights."""
  c = config_lib.base_config()
  c.dataset.name = "synthetic_shapes/tiny32"
  c.dataset.data_dir = tiny_shapes_dir
  c.dataset.prepare = False
  c.input.batch_size = c.input.eval_batch_size = 16
  c.model.kwargs.features = (4, 8)
  c.model.kwargs.hidden = 16
  c.train.num_steps = 2
  c.train.ema_decay = 0.5
  c.train.log_every, c.train.eval_every, c.train.checkpoint_every = 1, 1000, 1000
  c.train.progress_bar = False
  path = str(tmp_path_factory.mktemp("run"))
  loop.train_and_evaluate(c, path)
  return path


def test_load_for_inference_restores_ema_weights_on_eight_devices(workdir):
  assert jax.device_count() == 8
  loaded = inference.load_for_inference(workdir)
  assert loaded.step == 2 and loaded.image_shape == (32, 32, 3) and len(loaded.class_names) == 6
  saved = ocp.StandardCheckpointer().restore(os.path.join(workdir, "checkpoints", "2", "state"))
  jax.tree.map(np.testing.assert_array_equal, loaded.variables["params"], saved["ema_params"])
  images, _ = inference.eval_examples(loaded.config, [0, 1])
  logits, _ = loaded.model.apply(loaded.variables, inference.preprocess(images, loaded.config))
  assert logits.shape == (2, 6) and np.all(np.isfinite(logits))


class _TinyBN(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.BatchNorm(use_running_average=not train)(nn.Conv(4, (3, 3))(x))
    return nn.Dense(10)(x.mean((1, 2))), {}


def test_restore_variables_reads_batch_stats(tmp_path):
  """A BatchNorm model saved from 8 devices comes back as host arrays, optimiser state skipped."""
  state = create_train_state(_TinyBN(), optax.sgd(0.1, momentum=0.9), jax.random.key(0),
                             (8, 8, 3), sharding.make_mesh(), use_ema=False)
  state = state.replace(batch_stats=jax.tree.map(lambda x: x + 1.5, state.batch_stats))
  with ocp.CheckpointManager(str(tmp_path)) as manager:
    manager.save(7, args=ocp.args.Composite(state=ocp.args.StandardSave(state)))
  variables = weights.restore_variables(str(tmp_path), 7)
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(variables))
  jax.tree.map(np.testing.assert_array_equal, variables,
               jax.device_get({"params": state.params, "batch_stats": state.batch_stats}))


def test_load_for_inference_errors(workdir, tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    inference.load_for_inference(str(tmp_path))
  (tmp_path / "config.json").write_text(open(os.path.join(workdir, "config.json")).read())
  with pytest.raises(FileNotFoundError, match="No checkpoint"):
    inference.load_for_inference(str(tmp_path))
  with pytest.raises(ValueError, match=r"valid choices: \[2\]"):
    inference.load_for_inference(workdir, step=7)


@pytest.mark.parametrize("argv, size", [
    (["first_layer"], (400, 150)),  # 4 filters of 100 px.
    (["feature_maps"], (750, 200)),  # Input + 4 channels of stage conv1, 150 px each.
    (["feature_maps", "--layer", "conv2/__call__", "--indices", "3"], (1200, 350)),  # 1 + 8.
    (["saliency"], (800, 450)),  # 4 images, 2 rows of 200 px.
    (["gradcam", "--class", "circle"], (800, 450)),
    (["gradcam", "--layer", "conv1/__call__", "--indices", "5,6"], (400, 450)),
])
def test_checkpoint_pictures(workdir, tmp_path, argv, size):
  path = cli.main(argv + ["--workdir", workdir, "--out", str(tmp_path / "out.png")])
  assert _size(path) == size


def test_checkpoint_pictures_from_an_image_file(workdir, tmp_path):
  file = tmp_path / "in.png"
  Image.fromarray(np.full((40, 50, 3), 200, np.uint8)).save(file)
  path = cli.main(["gradcam", "--workdir", workdir, "--image", str(file),
                   "--out", str(tmp_path / "out.png")])
  assert _size(path) == (200, 450)


def test_bad_layer_names_the_valid_choices(workdir, tmp_path, capsys):
  cli.main(["layers", "--workdir", workdir])
  listed = capsys.readouterr().out
  assert "conv1/__call__" in listed and "conv2" in listed
  with pytest.raises(ValueError, match=r"'conv2'.*valid choices: \['conv1/__call__', "
                                       r"'conv2/__call__'\]"):
    cli.main(["gradcam", "--workdir", workdir, "--layer", "conv2"])  # A stage, not a module.
  with pytest.raises(ValueError, match="valid choices"):
    cli.main(["feature_maps", "--workdir", workdir, "--layer", "hidden"])  # Not spatial.


# Grad-CAM where the answer is known: one bright shape on noise; the class is the shape.
_SIZE, _OBJECT = 32, 10


def _shape_masks() -> list[np.ndarray]:
  """(OBJ, OBJ) masks of a square, a plus and a ring: classes 0, 1, 2."""
  square = np.zeros((_OBJECT, _OBJECT), bool)
  square[1:-1, 1:-1] = True
  plus = np.zeros_like(square)
  c = _OBJECT // 2
  plus[c - 2:c + 2, :] = plus[:, c - 2:c + 2] = True
  y, x = np.mgrid[:_OBJECT, :_OBJECT] - (_OBJECT - 1) / 2
  r = np.hypot(y, x)
  return [square, plus, (r > 0.22 * _OBJECT) & (r < 0.48 * _OBJECT)]


def _shapes_on_noise(rng, n):
  """(n, S, S, 1) images, (n,) labels, (n, 2) top-left corners of the objects."""
  masks = _shape_masks()
  images = rng.normal(0, 0.3, (n, _SIZE, _SIZE, 1)).astype(np.float32)
  labels = rng.integers(0, 3, n)
  corners = rng.integers(0, _SIZE - _OBJECT + 1, (n, 2))
  for image, label, (top, left) in zip(images, labels, corners):
    image[top:top + _OBJECT, left:left + _OBJECT, 0] += 1.5 * masks[label]
  return images, labels, corners


class _ConvReLU(nn.Module):
  width: int

  @nn.compact
  def __call__(self, x):
    return nn.relu(nn.Conv(self.width, (3, 3))(x))


class _TinyCAMNet(nn.Module):
  """Two conv-ReLU blocks and global average pooling, with the registry's call convention."""

  @nn.compact
  def __call__(self, x, train=False):
    a = _ConvReLU(8, name="block1")(x)  # (B, 32, 32, 8)
    b = _ConvReLU(16, name="block2")(nn.max_pool(a, (2, 2), (2, 2)))  # (B, 16, 16, 16)
    return nn.Dense(3, name="head")(b.mean((1, 2))), {"block1": a, "block2": b}


def test_grad_cam_and_saliency_point_at_the_object():
  rng = np.random.default_rng(0)
  train_x, train_y, _ = _shapes_on_noise(rng, 2048)
  test_x, test_y, corners = _shapes_on_noise(rng, 64)
  model = _TinyCAMNet()
  params = model.init(jax.random.key(0), train_x[:1])["params"]
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, x, y):
    def loss_fn(p):
      logits = model.apply({"params": p}, x)[0]
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    updates, opt_state = tx.update(jax.grad(loss_fn)(params), opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  for _ in range(250):
    idx = rng.integers(0, len(train_x), 32)
    params, opt_state = step(params, opt_state, train_x[idx], train_y[idx])
  variables = {"params": params}
  # "block2" is a stage of the features dict that is also block2's output: both names work.
  cam, classes, _, layer = attribution.grad_cam(model, variables, test_x)
  assert layer == "block2/__call__"
  assert float((np.asarray(classes) == test_y).mean()) > 0.9
  inside = np.zeros(cam.shape, bool)
  for mask, (top, left) in zip(inside, corners):
    mask[top:top + _OBJECT, left:left + _OBJECT] = True
  cam = np.asarray(cam)
  ratio = cam[inside].mean() / cam[~inside].mean()
  print(f"Grad-CAM mean inside / outside the object's box: {ratio:.1f}")
  assert ratio > 2.0
  np.testing.assert_allclose(attribution.grad_cam(model, variables, test_x, "block2")[0], cam,
                             atol=1e-6)
  saliency = np.asarray(attribution.saliency(model, variables, test_x)[0])
  ratio = saliency[inside].mean() / saliency[~inside].mean()
  print(f"Saliency mean inside / outside: {ratio:.1f}")
  assert ratio > 2.0
