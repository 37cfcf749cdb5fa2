"""Checkpoints: verified restores, damage fallback, retention that keeps the last good and best."""

import glob
import os

import jax
import numpy as np
import optax
import pytest

from vision_jax import models, sharding
from vision_jax.train import checkpoint, weights
from vision_jax.train.state import train_state_initializer


@pytest.fixture(scope="module")
def state_and_abstract():
  mesh = sharding.make_mesh()
  model = models.get_model("simple_cnn", num_classes=10, features=(4, 8), hidden=16)
  init, abstract = train_state_initializer(model, optax.adamw(1e-3), (32, 32, 3), mesh,
                                           use_ema=True)
  return init(jax.random.key(0)), abstract


def _at(state, step):
  """A state whose step and parameters tell checkpoints apart."""
  return state.replace(step=state.step + step,
                       params=jax.tree.map(lambda x: x + step, state.params))


def _checkpointer(directory, keep=3, best_metric="accuracy"):
  return checkpoint.Checkpointer(str(directory), keep=keep, best_metric=best_metric)


def _largest_data_file(step_dir):
  files = glob.glob(os.path.join(step_dir, "state", "**", "d", "*"), recursive=True)
  return max(files, key=os.path.getsize)


def _truncate(step_dir):
  path = _largest_data_file(step_dir)
  with open(path, "r+b") as f:
    f.truncate(os.path.getsize(path) // 2)


def _zero(step_dir):
  path = _largest_data_file(step_dir)
  with open(path, "r+b") as f:
    f.write(b"\0" * os.path.getsize(path))


def _flip_one_byte(step_dir, where=0.5):
  """One byte of the largest data file inverted, at fraction `where` of it (inverting it again
  undoes it). Usually silent damage (the file still decodes, one value changes); a byte inside
  a compressed chunk makes a read error instead."""
  path = _largest_data_file(step_dir)
  with open(path, "r+b") as f:
    f.seek(int(os.path.getsize(path) * where))
    byte = f.read(1)[0]
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte ^ 0xFF]))


def _delete_metadata(step_dir):
  os.remove(os.path.join(step_dir, "state", "_METADATA"))


def _garbage_metadata(step_dir):
  with open(os.path.join(step_dir, "state", "_METADATA"), "w") as f:
    f.write("{garbage")


DAMAGE = {"truncated": _truncate, "zeroed": _zero, "one_byte_flipped": _flip_one_byte,
          "metadata_deleted": _delete_metadata, "metadata_garbage": _garbage_metadata}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_newest_intact_one(
    tmp_path, state_and_abstract, damage):
  state, abstract = state_and_abstract
  ckpt = _checkpointer(tmp_path / "checkpoints")
  for step in (1, 2, 3):
    ckpt.save(step, _at(state, step))
  ckpt.close()
  DAMAGE[damage](str(tmp_path / "checkpoints" / "3"))

  ckpt = _checkpointer(tmp_path / "checkpoints")
  restored = ckpt.restore_newest_intact(abstract)
  assert restored.step == 2 and int(restored.state.step) == 2
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored.state.params),
               jax.device_get(_at(state, 2).params))
  [(step, reason, path)] = restored.set_aside
  assert step == 3 and reason and len(reason) <= 200
  assert os.path.isdir(path) and "checkpoints_set_aside" in path  # Moved, never deleted.
  assert ckpt.all_steps() == [1, 2]
  ckpt.close()


def test_no_intact_checkpoint_is_one_clear_error_and_nothing_moves(tmp_path, state_and_abstract):
  state, abstract = state_and_abstract
  ckpt = _checkpointer(tmp_path / "checkpoints")
  ckpt.save(1, _at(state, 1))
  ckpt.save(2, _at(state, 2))
  ckpt.close()
  _zero(str(tmp_path / "checkpoints" / "1"))
  _delete_metadata(str(tmp_path / "checkpoints" / "2"))
  ckpt = _checkpointer(tmp_path / "checkpoints")
  with pytest.raises(checkpoint.DamagedCheckpointError, match=r"step 2: .*step 1: "):
    ckpt.restore_newest_intact(abstract)
  assert ckpt.all_steps() == [1, 2]
  assert not os.path.exists(tmp_path / "checkpoints_set_aside")
  ckpt.close()


def test_a_state_of_another_structure_is_no_damage(tmp_path, state_and_abstract):
  state, _ = state_and_abstract
  ckpt = _checkpointer(tmp_path / "checkpoints")
  ckpt.save(1, state)
  ckpt.wait()
  mesh = sharding.make_mesh()
  wider = models.get_model("simple_cnn", num_classes=10, features=(4, 8), hidden=32)
  _, abstract = train_state_initializer(wider, optax.adamw(1e-3), (32, 32, 3), mesh,
                                        use_ema=True)
  with pytest.raises(checkpoint.StructureMismatchError, match=r"params/hidden/kernel: saved "
                     r"\(512, 16\) float32, now \(512, 32\) float32"):
    ckpt.restore_newest_intact(abstract)
  assert ckpt.all_steps() == [1]
  ckpt.close()


def test_a_non_finite_state_or_metric_is_never_saved(tmp_path, state_and_abstract):
  state, _ = state_and_abstract
  ckpt = _checkpointer(tmp_path / "checkpoints")
  broken = state.replace(params=jax.tree.map(lambda x: x * np.nan, state.params))
  with pytest.raises(FloatingPointError, match="parameters"):
    ckpt.save(1, broken)
  with pytest.raises(FloatingPointError, match="eval metrics"):
    ckpt.save(1, state, metrics={"accuracy": 0.5, "loss": float("inf")})
  ckpt.wait()
  assert ckpt.all_steps() == []
  ckpt.close()


def test_retention_keeps_unconfirmed_newer_ones_and_the_best_across_restarts(
    tmp_path, state_and_abstract):
  state, _ = state_and_abstract
  directory = tmp_path / "checkpoints"
  ckpt = _checkpointer(directory, keep=1)
  ckpt.save(2, _at(state, 2), metrics={"accuracy": 0.9})  # The best.
  ckpt.confirm(2)
  ckpt.save(4, _at(state, 4), metrics={"accuracy": 0.5})
  assert ckpt.all_steps() == [2, 4]  # 4 is not confirmed yet: 2 stays whatever its rank.
  ckpt.confirm(4)
  ckpt.save(5, _at(state, 5))  # Preempted: saved without an eval.
  ckpt.close()

  ckpt = _checkpointer(directory, keep=1)  # A restart: the metrics come back from disk.
  assert checkpoint.read_meta(str(directory / "2"))["metrics"] == {"accuracy": 0.9}
  ckpt.confirm(5)
  ckpt.save(6, _at(state, 6))
  ckpt.confirm(6)
  ckpt.wait()
  assert ckpt.all_steps() == [2, 6]  # The best (2) and the newest confirmed one (6).
  ckpt.close()


def test_set_aside_moves_the_condemned_checkpoints_and_keeps_the_older_good_one(
    tmp_path, state_and_abstract):
  state, abstract = state_and_abstract
  ckpt = _checkpointer(tmp_path / "checkpoints", keep=1)
  ckpt.save(1, _at(state, 1))
  ckpt.confirm(1)
  ckpt.save(2, _at(state, 2))
  moved = ckpt.set_aside(2, "non_finite")  # Step 3's loss, from the state after 2, was NaN.
  assert len(moved) == 1 and os.path.isdir(moved[0]) and "2.non_finite" in moved[0]
  assert ckpt.all_steps() == [1]
  assert ckpt.restore_newest_intact(abstract).step == 1
  ckpt.close()


def test_fingerprints_do_not_depend_on_the_device_count(state_and_abstract):
  state, _ = state_and_abstract
  prints, finite = checkpoint.fingerprint(state)
  on_one = jax.device_put(state, jax.devices()[0])
  assert checkpoint.fingerprint(on_one) == (prints, finite) and finite
  moved = state.replace(params=jax.tree.map(lambda x: x[::-1], state.params))  # Same values.
  changed = checkpoint.fingerprint(moved)[0]
  assert changed["params/hidden/kernel"] != prints["params/hidden/kernel"]


def test_inference_verifies_and_skips_a_damaged_newest_checkpoint(tmp_path, state_and_abstract,
                                                                   capsys):
  state, _ = state_and_abstract
  ckpt = _checkpointer(tmp_path)
  ckpt.save(1, _at(state, 1))
  ckpt.save(2, _at(state, 2))
  ckpt.close()
  # Silent damage, which only the fingerprints can find: a byte whose change still decodes
  # (where the data file stores compressed chunks depends on the write order, so try a few).
  for where in (0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8):
    _flip_one_byte(str(tmp_path / "2"), where)
    with pytest.raises(checkpoint.DamagedCheckpointError, match="Checkpoint 2 .* damaged") as e:
      weights.restore_variables(str(tmp_path), 2)
    if "differ" in str(e.value):
      break
    _flip_one_byte(str(tmp_path / "2"), where)  # A read error: undo, try another byte.
  else:
    pytest.fail(f"no byte gave silent damage; last error: {e.value}")
  step, variables = weights.restore_newest_variables(str(tmp_path))
  assert step == 1 and "Checkpoint 2" in capsys.readouterr().err
  jax.tree.map(np.testing.assert_array_equal, variables["params"],
               jax.device_get(_at(state, 1).ema_params))


def test_host_fingerprints_equal_device_ones_for_every_dtype(float64):
  rng = np.random.default_rng(0)
  tree = {"f64": rng.normal(size=(3, 5)), "f32": rng.normal(size=(7,)).astype(np.float32),
          "bf16": np.asarray(jax.numpy.asarray(rng.normal(size=(4,)), jax.numpy.bfloat16)),
          "i32": rng.integers(-9, 9, size=(2, 3)).astype(np.int32),
          "u8": rng.integers(0, 255, size=(6,)).astype(np.uint8), "flag": np.array([True, False])}
  on_device = jax.tree.map(jax.numpy.asarray, tree)
  assert checkpoint.fingerprint(tree) == checkpoint.fingerprint(on_device)
