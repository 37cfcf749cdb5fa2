import os

# Eight fake CPU devices, so that multi-device code paths run in tests. XLA reads this flag once,
# when jax initialises its backend, hence it is set here before any test module imports jax.
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
# One XLA compilation cache for the whole run, shared with the subprocesses that tests start:
# many tests compile the same train steps, and on 2 CPU cores compiling is most of their time.
# Set through the environment so that `python -m vision_jax.main` children use it too.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(
    os.environ.get("TMPDIR", "/tmp"), f"vision_jax_test_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")


import pytest  # noqa: E402  (after XLA_FLAGS, on purpose)


@pytest.fixture
def float64():
  """JAX's 64-bit mode for one test (with `config.model.dtype="float64"` or float64 models).

  Equivalence checks (jit vs pmap, 1 vs 8 devices, accumulation vs one large batch) run in
  float64, so that their tight tolerance is decided by the maths, not by float32 rounding of
  sums taken in another order, which differs between CPUs.
  """
  import jax
  with jax.enable_x64(True):
    yield


@pytest.fixture(scope="session")
def tiny_shapes_dir(tmp_path_factory):
  """A TFDS data dir holding `synthetic_shapes/tiny32` (256 train, 64 test), prepared once."""
  from vision_jax.data.builders import synthetic_shapes
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  config = synthetic_shapes.SyntheticShapesConfig(
      name="tiny32", size=32, num_examples={"train": 256, "test": 64})
  synthetic_shapes.SyntheticShapes(config=config, data_dir=data_dir).download_and_prepare(
      file_format="array_record")
  return data_dir
