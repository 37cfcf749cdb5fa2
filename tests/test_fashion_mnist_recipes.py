"""The Fashion-MNIST recipes: each trains a few steps here (on fake IDX files, the models
shrunk), and the CPU recipe reaches its accuracy on the real data (slow)."""

import json
import os
import subprocess
import sys

import pytest

from vision_jax.train import loop

import shipped
from test_builders import _fake_fashion_mnist


@pytest.mark.parametrize("name, shrink", [
    ("fashion_mnist_cpu", {"features": (4, 4, 4), "hidden": 8}),
    ("fashion_mnist_wrn", {"depth": 10, "widen_factor": 1}),
])
def test_recipe_trains_a_few_steps_with_all_its_techniques(name, shrink, tmp_path):
  """Everything the recipe switches on (crops, flips, random erasing, EMA and raw evals, flip
  averaging, bf16 where set) runs; only the network and batch are shrunk."""
  (tmp_path / "raw").mkdir()
  _fake_fashion_mnist(str(tmp_path / "raw"), n_train=32, n_test=12)
  c = shipped.load_config(name)
  c.dataset.manual_dir = str(tmp_path / "raw")
  c.dataset.data_dir = str(tmp_path / "tfds")
  c.dataset.in_memory = False
  c.model.kwargs.update(shrink)
  c.input.batch_size, c.input.eval_batch_size = 8, 8
  c.train.num_steps, c.train.eval_every, c.train.progress_bar = 2, 2, False
  result = loop.train_and_evaluate(c, str(tmp_path / "run"))
  assert result["step"] == 2 and result["num_examples"] == 12 and 0 <= result["accuracy"] <= 1
  if c.train.ema_decay:
    assert 0 <= result["raw/accuracy"] <= 1


@pytest.mark.slow
def test_cpu_recipe_reaches_94_percent_on_real_fashion_mnist(tmp_path):
  """configs/fashion_mnist_cpu.py as shipped, run as users run it (`python -m vision_jax.main`
  in a fresh process, so its 2 CPU devices apply), on Debian's dataset-fashion-mnist: about 14
  minutes on a 2-core CPU (the wall time is measured by experiments/fashion_mnist.sh, not here).
  Measured: see docs/classification.md; the issue's goal is 94%."""
  c = shipped.load_config("fashion_mnist_cpu")
  if not os.path.isdir(c.dataset.manual_dir):
    pytest.fail(f"{c.dataset.manual_dir} is missing: apt-get install dataset-fashion-mnist")
  workdir = tmp_path / "run"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # Not the tests' 8 devices.
  subprocess.run([sys.executable, "-m", "vision_jax.main", "--config=configs/fashion_mnist_cpu.py",
                  f"--workdir={workdir}", f"--config.dataset.data_dir={tmp_path / 'tfds'}",
                  "--config.train.progress_bar=False"],
                 cwd=shipped.REPO, env=env, check=True, timeout=3600)
  records = [json.loads(line) for line in open(workdir / "metrics.jsonl")]
  result = [r for r in records if r["split"] == "eval"][-1]
  assert result["num_examples"] == 10_000
  assert result["accuracy"] >= 0.94, json.dumps(result)
