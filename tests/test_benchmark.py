"""experiments/benchmark.py: its tiny mode's table and JSON, and the PyTorch twins' sizes."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from vision_jax import models

import shipped

COLUMNS = ["framework", "mode", "train img/s", "infer img/s", "step ms", "compile s", "peak MB",
           "MFU %"]
NUMBERS = {"train img/s": "train_images_per_sec", "infer img/s": "infer_images_per_sec",
           "step ms": "step_ms", "compile s": "compile_s", "peak MB": "peak_mb",
           "MFU %": "mfu_percent"}


def _markdown_rows(text: str) -> list[dict]:
  """The table's rows as {header: cell}."""
  lines = [line for line in text.splitlines() if line.startswith("|")]
  split = lambda line: [c.strip() for c in line.strip("|").split("|")]  # noqa: E731
  header = split(lines[0])
  assert header == COLUMNS
  return [dict(zip(header, split(line))) for line in lines[2:]]


def test_tiny_run_prints_every_column_and_writes_the_same_numbers(tmp_path):
  json_out = tmp_path / "bench.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}  # One CPU device, as users.
  command = [sys.executable, os.path.join(shipped.REPO, "experiments", "benchmark.py"), "--tiny",
             "--model=simple_cnn", "--batch_size=8", "--image_size=32", "--steps=2",
             "--skip_torch_compile", f"--json_out={json_out}"]
  out = subprocess.run(command, env=env, check=True, capture_output=True, text=True,
                       timeout=300).stdout
  rows = _markdown_rows(out)
  assert [(r["framework"], r["mode"]) for r in rows] == [("vision_jax", "jit"),
                                                         ("pytorch", "eager")]
  result = json.loads(json_out.read_text())
  assert result["config"]["batch_size"] == 8 and result["config"]["steps"] == 2
  assert result["train_flops_per_step"] > 0
  for row, saved in zip(rows, result["rows"], strict=True):
    assert (row["framework"], row["mode"]) == (saved["framework"], saved["mode"])
    for header, key in NUMBERS.items():
      if saved[key] is None:  # CPU: no peak memory; no --peak_tflops: no MFU.
        assert row[header] == ""
      else:
        assert saved[key] > 0
        decimals = len(row[header].partition(".")[2])
        assert float(row[header]) == pytest.approx(saved[key], abs=0.51 * 10**-decimals)
  notes = result["notes"]  # Say why the columns are empty.
  assert any(n.startswith("peak MB") for n in notes) and any(n.startswith("MFU") for n in notes)
  assert all(f"- {note}" in out for note in notes)


def test_cpu_devices_splits_the_cpu_for_the_jax_row(tmp_path):
  json_out = tmp_path / "bench.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  command = [sys.executable, os.path.join(shipped.REPO, "experiments", "benchmark.py"), "--tiny",
             "--model=simple_cnn", "--batch_size=8", "--image_size=16", "--steps=2",
             "--skip_torch", "--cpu_devices=2", f"--json_out={json_out}"]
  out = subprocess.run(command, env=env, check=True, capture_output=True, text=True,
                       timeout=300).stdout
  assert "; 2 x cpu (cpu)" in out
  assert json.loads(json_out.read_text())["machine"]["devices"] == 2


def test_unknown_model_is_one_line_naming_the_valid_choices():
  command = [sys.executable, os.path.join(shipped.REPO, "experiments", "benchmark.py"),
             "--model=resnet21", "--tiny"]
  done = subprocess.run(command, capture_output=True, text=True, timeout=120)
  assert done.returncode == 2
  assert done.stderr.startswith("error: Unknown model 'resnet21'; valid choices:")
  assert "'resnet20'" in done.stderr and "Traceback" not in done.stderr


@pytest.mark.parametrize("name", ["simple_cnn", "resnet20", "resnet56"])
def test_pytorch_twin_has_our_parameter_count(name):
  # PyTorch in a process of its own: imported into one where TensorFlow already is (TensorBoard
  # imports it when installed, as in the test extras), it can crash.
  count = subprocess.run(
      [sys.executable, "-c", "import sys; sys.path.insert(0, 'experiments'); "
       "import benchmark_torch;"
       f" print(sum(p.numel() for p in benchmark_torch.network({name!r}, num_classes=10, "
       "image_size=32, channels=3).parameters()))"],
      cwd=shipped.REPO, check=True, capture_output=True, text=True, timeout=300).stdout
  ours = jax.eval_shape(
      lambda x: models.get_model(name, num_classes=10).init(jax.random.key(0), x, train=False),
      jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
  assert int(count.split()[-1]) == sum(x.size for x in jax.tree.leaves(ours["params"]))


def test_conv_breakdown_finds_every_convolution_and_times_each_pass(tmp_path):
  """experiments/conv_breakdown.py on a tiny batch: ResNet-20's convolutions, counted by shape
  (21 in all: the stem, 18 in the blocks, 2 projections), each pass timed for both frameworks,
  and the kernel-gradient variants computing the same gradient."""
  breakdown = shipped.load_module(os.path.join("experiments", "conv_breakdown.py"))
  shapes = breakdown.conv_shapes("resnet20", batch=2, size=32, channels=3)
  assert sum(s["count"] for s in shapes) == 21
  assert {s["kernel"] for s in shapes} >= {(3, 3, 3, 16), (3, 3, 64, 64), (1, 1, 32, 64)}
  json_out = tmp_path / "conv.json"
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  command = [sys.executable, os.path.join(shipped.REPO, "experiments", "conv_breakdown.py"),
             "--model=simple_cnn", "--batch_size=2", "--repeats=1", "--kernel_grad_variants",
             f"--json_out={json_out}"]
  out = subprocess.run(command, env=env, check=True, capture_output=True, text=True,
                       timeout=300).stdout
  result = json.loads(json_out.read_text())
  assert len(result["rows"]) == 2  # SimpleCNN: conv1 and conv2, "SAME" padded.
  for row in result["rows"]:
    assert all(row["jax"][p] > 0 for p in breakdown.PASSES)
    assert set(row["kernel_grad_variants"]) == {"xla", "shifted_matmuls", "patches_matmul"}
  assert "All convolution passes of one train step: JAX" in out
  assert "Kernel gradient of each stride-1 convolution" in out


def test_pipeline_benchmark_tiny_mode_prints_every_row():
  env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
  command = [sys.executable, os.path.join(shipped.REPO, "experiments", "pipeline_benchmark.py"),
             "--tiny", "--workers=1", "--jpeg_size=64,80"]
  out = subprocess.run(command, env=env, check=True, capture_output=True, text=True,
                       timeout=300).stdout
  rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
  assert len(rows) == 5  # The header, two small-image rows, JPEG in main and in a worker.
  assert "JPEG" in rows[3] and "1 workers" in rows[4]
  assert "waiting for input" in out


def test_accuracy_vs_time_reads_the_eval_scalars_of_a_workdir(tmp_path):
  from vision_jax.train import metric_writer
  writer = metric_writer.MetricWriter(str(tmp_path), start_step=0)
  for step, accuracy in ((10, 0.5), (20, 0.75)):
    writer.write(step, "eval", {"accuracy": accuracy})
  writer.close()
  plot = shipped.load_module(os.path.join("experiments", "accuracy_vs_time.py"))
  points = plot.eval_accuracy_over_time(str(tmp_path))
  assert [(step, value) for _, step, value in points] == [(10, 0.5), (20, 0.75)]
  assert all(seconds >= 0 for seconds, _, _ in points)
  out = plot.main([str(tmp_path), "--target=0.94", f"--out={tmp_path / 'a.png'}"])
  assert os.path.getsize(out) > 0
