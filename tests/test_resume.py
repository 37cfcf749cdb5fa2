"""A run that is killed at random moments, preempted and has its newest checkpoint damaged
still ends with exactly the parameters, log and best checkpoint of an uninterrupted run."""

import json
import os
import random
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp

from vision_jax.train import metric_writer

from test_checkpoint import _flip_one_byte

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_STEPS = 300
LOG_EVERY = 5
EVAL_EVERY = 60


def _command(workdir, data_dir):
  return [sys.executable, "-m", "vision_jax.main", "--config=configs/shapes_cnn.py",
          f"--workdir={workdir}", "--config.dataset.name=synthetic_shapes/tiny32",
          f"--config.dataset.data_dir={data_dir}", "--config.dataset.prepare=False",
          "--config.input.batch_size=16", "--config.input.eval_batch_size=32",
          f"--config.train.num_steps={NUM_STEPS}", "--config.train.checkpoint_every=10",
          f"--config.train.eval_every={EVAL_EVERY}", f"--config.train.log_every={LOG_EVERY}",
          "--config.train.keep_checkpoints=2", "--config.train.best_metric=loss",
          "--config.train.ema_decay=0.9", "--config.model.kwargs.dropout_rate=0.2",
          "--config.train.progress_bar=False"]


def _saved_steps(workdir):
  """Complete checkpoints only: Orbax renames a step's temporary dir once it is fully written."""
  path = os.path.join(workdir, "checkpoints")
  return sorted(int(d) for d in os.listdir(path) if d.isdigit()) if os.path.isdir(path) else []


def _records(workdir):
  """Every line of metrics.jsonl, parsed strictly (a torn line fails the test)."""
  return [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]


def _start(workdir, data_dir):
  return subprocess.Popen(_command(workdir, data_dir), cwd=REPO, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)


def _run_until(workdir, data_dir, ready, sig):
  """Starts training, waits until `ready()` holds, then sends `sig`; returns (code, output)."""
  process = _start(workdir, data_dir)
  deadline = time.time() + 300
  while not ready():
    assert process.poll() is None, process.stdout.read()
    assert time.time() < deadline, "training did not get there"
    time.sleep(0.02)
  process.send_signal(sig)
  output, _ = process.communicate(timeout=300)
  return process.returncode, output


def _final_state(workdir):
  """The arrays that training changes, read back from the last checkpoint."""
  restored = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, "checkpoints", str(NUM_STEPS), "state"))
  return [restored[k] for k in ("step", "params", "opt_state", "ema_params")]


def test_kills_preemption_and_damage_resume_to_the_uninterrupted_run(tmp_path, tiny_shapes_dir):
  reference = str(tmp_path / "reference")
  subprocess.run(_command(reference, tiny_shapes_dir), cwd=REPO, check=True, capture_output=True)

  run = str(tmp_path / "interrupted")
  log = os.path.join(run, "metrics.jsonl")
  # 1. SIGKILL once training logs, before the first checkpoint can be complete.
  code, _ = _run_until(run, tiny_shapes_dir, lambda: metric_writer.read_jsonl(log),
                       signal.SIGKILL)
  assert code == -signal.SIGKILL
  # 2. SIGKILL at a random moment once two checkpoints are there (seeded: the same delay every
  # time), so that the damaged one below has an intact one to fall back to.
  delay = random.Random(0).uniform(0, 0.3)
  code, output = _run_until(
      run, tiny_shapes_dir, lambda: len(_saved_steps(run)) >= 2 and not time.sleep(delay),
      signal.SIGKILL)
  assert code == -signal.SIGKILL, output
  # 3. The newest checkpoint is silently damaged: the rerun falls back to an older one.
  newest = max(_saved_steps(run))
  _flip_one_byte(os.path.join(run, "checkpoints", str(newest)))
  code, output = _run_until(run, tiny_shapes_dir,
                            lambda: max(_saved_steps(run)) > newest + 10, signal.SIGTERM)
  assert code == 0 and "SIGTERM: saved a checkpoint" in output, output
  assert f"checkpoint {newest} is damaged" in output and f"Fell back from step {newest}" in output
  assert os.listdir(os.path.join(run, "checkpoints_set_aside"))
  preempted_at = int(output.split("SIGTERM: saved a checkpoint at step ")[1].split(";")[0])
  # 4. Resumed to the end.
  result = subprocess.run(_command(run, tiny_shapes_dir), cwd=REPO, check=True,
                          capture_output=True, text=True)
  assert f"Resumed from step {preempted_at}" in result.stdout

  expected, actual = _final_state(reference), _final_state(run)
  for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(actual), strict=True):
    np.testing.assert_array_equal(a, b)
  # One record per logged step (plus the preemption's own), in order; the evals as uninterrupted.
  records, want = _records(run), _records(reference)
  logged = list(range(LOG_EVERY, NUM_STEPS + 1, LOG_EVERY))
  assert [r["step"] for r in records if r["split"] == "train"] == sorted(
      set(logged) | {preempted_at})
  evals = [r for r in records if r["split"] == "eval"]
  assert evals == [r for r in want if r["split"] == "eval"]
  # keep_checkpoints=2: kept are the two newest confirmed ones, the newest (no later step has
  # confirmed it yet) and the best confirmed one by eval loss, which survived the restarts.
  losses = {r["step"]: r["loss"] for r in evals if r["step"] < NUM_STEPS}
  best = min(losses, key=losses.get)
  assert _saved_steps(run) == _saved_steps(reference) == sorted(
      {best, NUM_STEPS - 20, NUM_STEPS - 10, NUM_STEPS})
