"""Multi-process start-up decisions (vision_jax.distributed) under faked SLURM variables.

Nothing is initialised: these check what would be passed to `jax.distributed.initialize`, and
how JAX itself turns SLURM's variables into a process's GPUs (the rule `--local_device_ids`
exists for).
"""

import pytest

from vision_jax import distributed, errors

# What srun sets for task 9 of 16 (2 nodes × 8 tasks): the second task on the second node.
SRUN_TASK = {"SLURM_JOB_ID": "4242", "SLURM_STEP_NODELIST": "gpu-node-[01-02]",
             "SLURM_NTASKS": "16", "SLURM_PROCID": "9", "SLURM_LOCALID": "1",
             "SLURM_NODEID": "1", "SLURM_STEP_TASKS_PER_NODE": "8(x2)",
             "SLURM_GPUS_ON_NODE": "8"}
# One task per host on the same 2 nodes: task 1 of 2.
SRUN_HOST = {**SRUN_TASK, "SLURM_NTASKS": "2", "SLURM_PROCID": "1", "SLURM_LOCALID": "0",
             "SLURM_STEP_TASKS_PER_NODE": "1(x2)"}


@pytest.mark.parametrize("value, expected", [
    (None, None), ("all", []), ("ALL", []), ("3", [3]), ("0,1, 2,3", [0, 1, 2, 3])])
def test_local_device_ids_flag(value, expected):
  assert distributed.parse_local_device_ids(value) == expected


@pytest.mark.parametrize("value", ["", "-1", "gpu0", "0,0", "0;1", "1.5"])
def test_bad_local_device_ids_name_the_accepted_forms(value):
  with pytest.raises(errors.UserError, match="'all' or distinct non-negative GPU indices"):
    distributed.parse_local_device_ids(value)


def test_one_process_needs_no_initialisation():
  assert distributed.initialize_kwargs(environ={}) is None
  assert distributed.initialize_kwargs(environ={**SRUN_TASK, "SLURM_NTASKS": "1"}) is None


def test_srun_tasks_are_left_to_jax_unless_the_flag_says_otherwise():
  auto = {"coordinator_address": None, "num_processes": None, "process_id": None}
  assert distributed.initialize_kwargs(environ=SRUN_TASK) == {**auto, "local_device_ids": None}
  assert distributed.initialize_kwargs(local_device_ids="all", environ=SRUN_HOST) == {
      **auto, "local_device_ids": []}
  assert distributed.initialize_kwargs(local_device_ids="0,1", environ=SRUN_HOST) == {
      **auto, "local_device_ids": [0, 1]}


def test_tpu_pod_hosts_are_detected():
  assert distributed.initialize_kwargs(environ={"TPU_WORKER_HOSTNAMES": "a,b"}) is not None
  assert distributed.initialize_kwargs(environ={"TPU_WORKER_HOSTNAMES": "a"}) is None


def test_several_slurm_tasks_outside_srun_is_an_error():
  """An sbatch script of 16 tasks running python itself: JAX would wait for 15 others."""
  batch_script = {k: v for k, v in SRUN_TASK.items() if k != "SLURM_STEP_NODELIST"}
  with pytest.raises(errors.UserError, match="SLURM_STEP_NODELIST unset: start every task with"):
    distributed.initialize_kwargs(environ=batch_script)


def test_explicit_flags_are_all_or_nothing():
  assert distributed.initialize_kwargs("host0:1234", 2, 1, "all", environ={}) == {
      "coordinator_address": "host0:1234", "num_processes": 2, "process_id": 1,
      "local_device_ids": []}
  with pytest.raises(errors.UserError, match="Give all of"):
    distributed.initialize_kwargs("host0:1234", environ={})
  with pytest.raises(errors.UserError, match=r"must be in \[0, 2\)"):
    distributed.initialize_kwargs("host0:1234", 2, 2, environ={})


def test_one_task_per_host_without_the_flag_warns_of_idle_gpus():
  warning = distributed.slurm_gpu_warning(SRUN_HOST, None)
  assert "8 GPUs and 1 task(s)" in warning and "7 stay idle" in warning
  assert "--local_device_ids=all" in warning
  assert distributed.slurm_gpu_warning(SRUN_HOST, []) is None  # --local_device_ids=all
  assert distributed.slurm_gpu_warning(SRUN_TASK, None) is None  # One task per GPU.
  uneven = {**SRUN_HOST, "SLURM_STEP_TASKS_PER_NODE": "8,2(x2)", "SLURM_NODEID": "2"}
  assert "6 stay idle" in distributed.slurm_gpu_warning(uneven, None)
  assert distributed.slurm_gpu_warning({**SRUN_HOST, "SLURM_GPUS_ON_NODE": "1"}, None) is None
  assert distributed.slurm_gpu_warning({}, None) is None


def test_gpus_bound_to_tasks_without_the_flag_warn_of_the_missing_gpu():
  """srun --gpus-per-task=1: task 1 of a node sees its one GPU as number 0; JAX opens GPU 1."""
  bound = {**SRUN_TASK, "CUDA_VISIBLE_DEVICES": "1"}
  assert "SLURM_LOCALID=1 among them, which does not exist" in distributed.slurm_gpu_warning(
      bound, None)
  assert distributed.slurm_gpu_warning(bound, []) is None
  assert distributed.slurm_gpu_warning({**bound, "CUDA_VISIBLE_DEVICES": "0,1,2,3,4,5,6,7"},
                                       None) is None


def test_jax_gives_each_slurm_task_the_gpu_of_its_local_id(monkeypatch):
  """JAX's own SLURM detection (what `initialize` defers to): task i of a node gets GPU i,
  which leaves 7 of 8 GPUs idle with one task per host; an empty list ("all") or explicit ids
  are kept, so JAX restricts nothing or exactly those."""
  from jax._src import clusters
  for name, value in SRUN_HOST.items():
    monkeypatch.setenv(name, value)

  def detect(local_device_ids):
    return clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, local_device_ids, None, 300)

  address, num_processes, process_id, device_ids = detect(None)
  assert address.startswith("gpu-node-01:") and (num_processes, process_id) == (2, 1)
  assert device_ids == [0]  # SLURM_LOCALID: one GPU of the host's eight.
  assert detect([])[3] == []
  assert detect([0, 1, 2, 3])[3] == [0, 1, 2, 3]
  monkeypatch.setenv("SLURM_LOCALID", "5")
  assert detect(None)[3] == [5]
