"""Several JAX processes on this machine (CPU, gloo collectives), as on several hosts.

Each process gets 4 fake CPU devices; `jax.distributed` connects them into one 8-device job.
Checked, in float64 so that "the same" means equal to rounding: 2 processes train exactly like
1 process with 8 devices (and 1 device), dropout included; a checkpoint written by one topology
resumes on another with the same numbers; every task (segmentation, captioning, detection)
trains and evaluates on 2 processes, pictures, decoding and mAP included, with the metrics of 1
process. Also: SIGTERM on one process makes all of them save at the same step and exit cleanly;
a process that dies stops the others with an error instead of a hang.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np

from vision_jax.train import weights

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(command, num_processes, devices_per_process, float64=False):
  """Starts `command` once per process, with the multi-process flags; returns the Popens."""
  port = _free_port()
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices_per_process}"}
  if float64:
    env["JAX_ENABLE_X64"] = "1"
  processes = []
  for i in range(num_processes):
    flags = ([f"--coordinator_address=localhost:{port}", f"--num_processes={num_processes}",
              f"--process_id={i}"] if num_processes > 1 else [])
    processes.append(subprocess.Popen(command + flags, cwd=REPO, env=env, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
  return processes


def _launch(workdir, data_dir, num_processes, devices_per_process, num_steps, *extra,
            float64=False):
  """Starts the same training command once per process; returns the Popen objects."""
  command = [sys.executable, "-m", "vision_jax.main", "--config=configs/shapes_cnn.py",
             f"--workdir={workdir}", "--config.dataset.name=synthetic_shapes/tiny32",
             f"--config.dataset.data_dir={data_dir}", "--config.dataset.prepare=False",
             "--config.input.batch_size=16", "--config.input.eval_batch_size=32",
             f"--config.train.num_steps={num_steps}", "--config.train.log_every=1",
             "--config.train.progress_bar=False", "--config.optim.schedule=constant",
             "--config.optim.warmup_steps=0", *extra]
  return _start(command, num_processes, devices_per_process, float64)


def _finish(processes, timeout=300):
  """Waits for every process; returns (exit codes, outputs)."""
  outputs = [p.communicate(timeout=timeout)[0] for p in processes]
  return [p.returncode for p in processes], outputs


def _check(processes, timeout=300):
  """Waits for every process, fails unless all exit with 0; returns the outputs."""
  codes, outputs = _finish(processes, timeout)
  assert codes == [0] * len(codes), "\n".join(o[-3000:] for o in outputs)
  return outputs


def _run(*args, **kwargs):
  return _check(_launch(*args, **kwargs))


def _train_losses(workdir):
  records = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  return {r["step"]: r["loss"] for r in records if r["split"] == "train"}


def _params(workdir, step):
  """Parameters of a checkpoint as numpy arrays, whatever topology wrote it."""
  return weights.restore_variables(os.path.join(workdir, "checkpoints"), step)["params"]


RTOL, ATOL = 1e-9, 1e-12  # float64: equal to rounding (see tests/test_parallel.py).


def _assert_same_training(workdir, reference, step):
  want, got = _train_losses(reference), _train_losses(workdir)
  assert sorted(got) == sorted(want)
  np.testing.assert_allclose([got[s] for s in sorted(got)], [want[s] for s in sorted(want)],
                             rtol=RTOL)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=RTOL, atol=ATOL),
               _params(reference, step), _params(workdir, step))


def _resume_copy(source, name, tmp_path, drop_steps):
  """A copy of the workdir `source` without the checkpoints of `drop_steps`."""
  workdir = str(tmp_path / name)
  shutil.copytree(source, workdir)
  for step in drop_steps:
    shutil.rmtree(os.path.join(workdir, "checkpoints", str(step)))
  return workdir


def test_two_processes_match_one_with_dropout_and_checkpoints_move_between_topologies(
    tmp_path, tiny_shapes_dir, float64):
  """1 × 8 devices for 8 steps; its step-4 checkpoint resumed on 2 processes × 4 devices;
  their (collectively written) step-6 checkpoint resumed on 1 device: the same numbers. Dropout
  masks are drawn per global row, and global batches are the same rows on any topology. (This
  process reads the float64 checkpoints in 64-bit mode too.)"""
  def run(*args):
    return _run(*args, "--config.model.dtype=float64", "--config.model.kwargs.dropout_rate=0.2",
                float64=True)

  reference = str(tmp_path / "one_process_8_devices")
  run(reference, tiny_shapes_dir, 1, 8, 8, "--config.train.checkpoint_every=4")
  assert sorted(os.listdir(os.path.join(reference, "checkpoints"))) == ["4", "8"]

  two = _resume_copy(reference, "resumed_on_2x4", tmp_path, drop_steps=[8])
  outputs = run(two, tiny_shapes_dir, 2, 4, 8, "--config.train.checkpoint_every=2")
  assert "Done. Workdir" in outputs[0] and "Done. Workdir" not in outputs[1]  # Only process 0.
  _assert_same_training(two, reference, 8)

  one = _resume_copy(two, "resumed_on_1", tmp_path, drop_steps=[8])
  run(one, tiny_shapes_dir, 1, 1, 8, "--config.train.checkpoint_every=2")
  _assert_same_training(one, reference, 8)


def test_every_task_evaluates_on_two_processes_like_on_one(tmp_path, tiny_shapes_dir):
  """Segmentation, captioning and detection (tests/multiprocess_tasks.py) on 2 processes × 4
  devices and on 1 × 8, side by side: the same eval metrics, pictures drawn, and no deadlock
  in what each task computes for its pictures, decoding and mAP."""
  def start(workdir, num_processes, devices_per_process):
    command = [sys.executable, "tests/multiprocess_tasks.py", f"--data_dir={tiny_shapes_dir}",
               f"--workdir={workdir}"]
    return _start(command, num_processes, devices_per_process, float64=True)

  one, two = str(tmp_path / "one"), str(tmp_path / "two")
  outputs = _check(start(one, 1, 8) + start(two, 2, 4), timeout=600)
  assert "Done. Workdir" not in outputs[2]  # Process 1 of 2 reports nothing.
  want = json.load(open(os.path.join(one, "results.json")))
  got = json.load(open(os.path.join(two, "results.json")))
  assert sorted(got) == sorted(want) == ["captioning", "detection", "segmentation"]
  for task, metrics in want.items():
    assert sorted(got[task]) == sorted(metrics), task
    for key, value in metrics.items():
      np.testing.assert_allclose(got[task][key], value, rtol=RTOL, err_msg=f"{task}: {key}")
    assert metrics["step"] == 2 and metrics["num_examples"] == 64
  for picture in ("segmentation/segmentation/step_0000002.png",
                  "captioning/captions/step_0000002.png", "detection/detection/step_0000002.png"):
    assert os.path.getsize(os.path.join(two, picture)) > 0, picture


def _wait_for_train_records(workdir, count, processes, timeout=240):
  path = os.path.join(workdir, "metrics.jsonl")
  deadline = time.time() + timeout
  while not (os.path.exists(path) and len(open(path).readlines()) >= count):
    if any(p.poll() is not None for p in processes):
      for p in processes:
        p.kill()
      codes, outputs = _finish(processes)
      raise AssertionError(f"a process exited early: {codes}\n" +
                           "\n".join(o[-3000:] for o in outputs))
    assert time.time() < deadline, "training did not start"
    time.sleep(0.2)


def test_sigterm_on_one_process_saves_every_process_at_the_same_step(tmp_path,
                                                                      tiny_shapes_dir):
  workdir = str(tmp_path / "preempted")
  long_run = ("--config.train.checkpoint_every=1000", "--config.train.eval_every=1000")
  processes = _launch(workdir, tiny_shapes_dir, 2, 4, 400, *long_run)
  _wait_for_train_records(workdir, 3, processes)
  processes[1].send_signal(signal.SIGTERM)  # Only one process is told.
  codes, outputs = _finish(processes, timeout=120)
  assert codes == [0, 0], "\n".join(o[-3000:] for o in outputs)
  saved = [int(o.split("SIGTERM: saved a checkpoint at step ")[1].split(";")[0])
           for o in outputs]
  assert saved[0] == saved[1] < 400
  assert sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))) == [saved[0]]

  # The same command resumes from there; the log has every step exactly once.
  _run(workdir, tiny_shapes_dir, 2, 4, saved[0] + 5, *long_run)
  assert sorted(_train_losses(workdir)) == list(range(1, saved[0] + 6))


def test_a_dead_process_stops_the_others_with_an_error(tmp_path, tiny_shapes_dir):
  workdir = str(tmp_path / "crashed")
  processes = _launch(workdir, tiny_shapes_dir, 2, 4, 100000,
                      "--config.train.checkpoint_every=100000", "--heartbeat_timeout_seconds=5")
  _wait_for_train_records(workdir, 3, processes)
  processes[1].kill()
  start = time.time()
  output = processes[0].communicate(timeout=120)[0]
  processes[1].wait()
  assert processes[0].returncode != 0
  assert time.time() - start < 60
  # JAX's coordination service ("another task died") or the collective that lost its peer
  # aborts the process; either way it stops with an error instead of hanging.
  assert any(m in output for m in ("another task died", "stopped sending heartbeats",
                                   "Fatal Python error", "Aborted")), output[-3000:]


def test_cpu_devices_split_one_process_and_train_as_one_device(tmp_path, tiny_shapes_dir,
                                                              float64):
  """`parallel.cpu_devices=4` makes one process use 4 CPU devices (over XLA_FLAGS' count of 1),
  data-parallel, with the same numbers as one device; the run then resumes on 1 device."""
  def run(workdir, num_steps, *extra):
    return _run(workdir, tiny_shapes_dir, 1, 1, num_steps, "--config.model.dtype=float64",
                "--config.model.kwargs.dropout_rate=0.2", "--config.train.checkpoint_every=2",
                *extra, float64=True)

  reference = str(tmp_path / "one_device")
  assert "Devices: 1 x cpu" in run(reference, 4)[0]
  split = str(tmp_path / "four_cpu_devices")
  assert "Devices: 4 x cpu" in run(split, 2, "--config.parallel.cpu_devices=4")[0]
  output = run(split, 4)[0]  # Resumed from step 2 with the default: one device.
  assert "Devices: 1 x cpu" in output and "Resumed" in output, output[-2000:]
  _assert_same_training(split, reference, 4)
