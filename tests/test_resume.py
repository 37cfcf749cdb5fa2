"""A run killed with SIGKILL, or stopped with SIGTERM, resumes to exactly the same parameters."""

import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 120


def _command(workdir, data_dir):
  return [sys.executable, "-m", "vision_jax.main", "--config=configs/shapes_cnn.py",
          f"--workdir={workdir}", "--config.dataset.name=synthetic_shapes/tiny32",
          f"--config.dataset.data_dir={data_dir}", "--config.dataset.prepare=False",
          "--config.input.batch_size=16", "--config.input.eval_batch_size=32",
          f"--config.train.num_steps={NUM_STEPS}", "--config.train.checkpoint_every=10",
          "--config.train.eval_every=60", "--config.train.log_every=10",
          "--config.train.ema_decay=0.9", "--config.model.kwargs.dropout_rate=0.2",
          "--config.train.progress_bar=False"]


def _saved_steps(workdir):
  """Complete checkpoints only: Orbax renames a step's temporary dir once it is fully written."""
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _run_until(workdir, data_dir, min_step, sig):
  """Starts training, waits for a checkpoint at `min_step` or later, then sends `sig`."""
  process = subprocess.Popen(_command(workdir, data_dir), cwd=REPO, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
  deadline = time.time() + 300
  while not any(s >= min_step for s in _saved_steps(workdir)):
    assert process.poll() is None, process.stdout.read()
    assert time.time() < deadline, "no checkpoint appeared"
    time.sleep(0.05)
  process.send_signal(sig)
  output, _ = process.communicate(timeout=300)
  return process.returncode, output


def _final_state(workdir):
  """The arrays that training changes, read back from the last checkpoint."""
  restored = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(NUM_STEPS), "state"))
  return [restored[k] for k in ("step", "params", "opt_state", "ema_params")]


def test_killed_and_preempted_runs_resume_to_identical_parameters(tmp_path, tiny_shapes_dir):
  reference = str(tmp_path / "reference")
  subprocess.run(_command(reference, tiny_shapes_dir), cwd=REPO, check=True, capture_output=True)

  interrupted = str(tmp_path / "interrupted")
  code, _ = _run_until(interrupted, tiny_shapes_dir, 20, signal.SIGKILL)
  assert code == -signal.SIGKILL
  killed_at = max(_saved_steps(interrupted))
  assert killed_at < NUM_STEPS

  code, output = _run_until(interrupted, tiny_shapes_dir, killed_at + 10, signal.SIGTERM)
  assert code == 0 and "SIGTERM: saved a checkpoint" in output, output
  stopped_at = max(_saved_steps(interrupted))
  assert killed_at < stopped_at < NUM_STEPS

  subprocess.run(_command(interrupted, tiny_shapes_dir), cwd=REPO, check=True,
                 capture_output=True)
  expected, actual = _final_state(reference), _final_state(interrupted)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(actual), strict=True):
    np.testing.assert_array_equal(a, b)
