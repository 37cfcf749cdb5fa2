"""Around the steps: the start-up report, profiling a few steps, the compilation cache."""

import glob
import os
import subprocess
import sys

from vision_jax.train import loop

from test_workdir import _config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_start_up_report_and_a_profile_of_the_chosen_steps(tmp_path, tiny_shapes_dir,
                                                                capsys):
  c = _config(tiny_shapes_dir, train__num_steps=4)
  c.train.profile_steps = (2, 3)
  loop.train_and_evaluate(c, str(tmp_path))
  out = capsys.readouterr().out
  assert "Model simple_cnn (classification): " in out and " parameters, " in out
  assert "GFLOPs per image at 32x32x3, float32" in out
  assert "Devices: 8 x cpu over 1 process(es); strategy jit" in out
  assert "Data: synthetic_shapes/tiny32: 256 train / 64 eval examples; batch 16, 4 steps" in out
  traces = glob.glob(str(tmp_path / "profile" / "plugins" / "profile" / "*" / "*.xplane.pb"))
  assert len(traces) == 1 and os.path.getsize(traces[0]) > 0
  assert os.path.exists(os.path.join(os.path.dirname(traces[0]), "perfetto_trace.json.gz"))


def test_user_runs_fill_a_persistent_compilation_cache(tmp_path, tiny_shapes_dir):
  cache = tmp_path / "xla_cache"
  env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
  result = subprocess.run(
      [sys.executable, "-m", "vision_jax.main", "--config=configs/shapes_cnn.py",
       f"--workdir={tmp_path / 'run'}", "--config.dataset.name=synthetic_shapes/tiny32",
       f"--config.dataset.data_dir={tiny_shapes_dir}", "--config.dataset.prepare=False",
       "--config.input.batch_size=16", "--config.train.num_steps=1",
       "--config.train.progress_bar=False", f"--config.train.compilation_cache={cache}"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Compilation cache: {cache}" in result.stdout
  assert os.listdir(cache)  # The train step (compiled in seconds) was stored.
