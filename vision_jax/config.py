"""The experiment schema: every config field, its default, and validation.

Experiment files in `configs/` start from `base_config()` and change what they need, so every
default has one place, and library code reads fields directly (never `config.get(key,
default)`): here, except the task sections `config.detection` and `config.segmentation`, which
`base_config()` builds from the fields of their task and head model (`default_config()` in
`vision_jax/tasks/<task>/task.py`), so that a task's hyperparameter is written once. Experiment files may add model-specific fields under `model.kwargs`;
the command line then locks the config, so a misspelt key there
(`--config.optim.learning_rat=0.1`) fails instead of being silently added.
"""

import importlib
import importlib.util
import math
import os

import ml_collections

from vision_jax.errors import UserError

STRATEGIES = ("jit", "pmap")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "constant")
DTYPES = ("float32", "bfloat16", "float64")  # See vision_jax/models/precision.py.
TRAIN_CROPS = ("pad", "random_resized", "random_scale")
# vision_jax.data.auto_augment.POLICIES and its NUM_BINS - 1 (not imported; a test keeps them).
AUTO_AUGMENTS = ("", "randaugment", "trivialaugment")
MAX_MAGNITUDE = 30
# Numeric fields: (field, test, the valid range). Unset optional fields (None) are not tested.
_RANGES = (
    ("optim.learning_rate", lambda v: 0 <= v < math.inf,
     "a finite number >= 0, e.g. 1e-3 (0 freezes the weights)"),
    ("optim.weight_decay", lambda v: 0 <= v < math.inf, "a finite number >= 0 (0: none)"),
    ("optim.momentum", lambda v: 0 <= v < 1, "in [0, 1), e.g. 0.9"),
    ("optim.warmup_steps", lambda v: v >= 0, ">= 0 steps (0: no warmup)"),
    ("optim.grad_clip_norm", lambda v: 0 <= v < math.inf, ">= 0 (0: no clipping)"),
    ("train.num_steps", lambda v: v >= 1, ">= 1, or None to train for train.num_epochs"),
    ("train.label_smoothing", lambda v: 0 <= v < 1, "in [0, 1), e.g. 0.1 (0: none)"),
    ("train.ema_decay", lambda v: 0 <= v < 1, "in [0, 1), e.g. 0.999 (0: no EMA)"),
    ("train.mixup_alpha", lambda v: 0 <= v < math.inf,
     "a finite number >= 0, e.g. 0.8 (0: off)"),
    ("train.cutmix_alpha", lambda v: 0 <= v < math.inf,
     "a finite number >= 0, e.g. 1.0 (0: off)"),
    ("train.mix_prob", lambda v: 0 <= v <= 1, "in [0, 1], e.g. 1.0"),
    ("train.mix_switch_prob", lambda v: 0 <= v <= 1, "in [0, 1], e.g. 0.5"),
    ("train.log_every", lambda v: v >= 1, ">= 1 steps"),
    ("train.eval_every", lambda v: v >= 1, ">= 1 steps"),
    ("train.checkpoint_every", lambda v: v >= 1, ">= 1 steps"),
    ("train.keep_checkpoints", lambda v: v >= 1, ">= 1"),
    ("input.image_size", lambda v: v >= 1, ">= 1 pixels, or None to keep the dataset's size"),
    ("input.crop_padding", lambda v: v >= 0, ">= 0 pixels (0: no padding)"),
    ("input.num_workers", lambda v: v >= 0, ">= 0 (0: read in the main process)"),
    ("input.prefetch", lambda v: v >= 0, ">= 0 batches"),
    ("input.randaugment_num_ops", lambda v: v >= 0, ">= 0 ops per image, e.g. 2"),
    ("input.randaugment_magnitude", lambda v: 0 <= v <= MAX_MAGNITUDE,
     f"a bin in [0, {MAX_MAGNITUDE}], e.g. 9 (torchvision's default; the paper's M=9 of 10 "
     "is 27)"),
    ("input.random_erasing", lambda v: 0 <= v <= 1, "a probability in [0, 1], e.g. 0.25 "
     "(0: off)"),
    ("parallel.cpu_devices", lambda v: v >= 0, ">= 0 (0: JAX's default, one CPU device)"),
)


def base_config() -> ml_collections.ConfigDict:
  """Returns the full schema with defaults (a small CNN on the embedded shapes dataset)."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  # Modules imported before any model or task name is looked up (training, resume, viz,
  # inference): a paper's own package that registers its models and tasks, e.g.
  # ("my_paper.models", "my_paper.tasks"). They must be importable (on sys.path).
  c.imports = ()
  c.task = "classification"  # What is learnt (see vision_jax.tasks.TASKS).

  c.dataset = ml_collections.ConfigDict()
  c.dataset.name = "synthetic_shapes/size32"  # Ours (see vision_jax.data.builders) or any TFDS name.
  c.dataset.data_dir = ml_collections.FieldReference(None, field_type=str)  # None: TFDS default.
  c.dataset.manual_dir = ml_collections.FieldReference(None, field_type=str)  # Local raw files.
  c.dataset.train_split = "train"
  c.dataset.eval_split = "test"
  c.dataset.prepare = True  # Build the array_record files if missing (ours need no TensorFlow;
  # some stock TFDS datasets need the `prepare` extra).
  c.dataset.in_memory = False  # Decode each split once into RAM (small datasets: much faster).

  c.input = ml_collections.ConfigDict()
  c.input.batch_size = 128  # Global: split over all devices of all processes.
  c.input.eval_batch_size = 256
  c.input.image_size = ml_collections.FieldReference(None, field_type=int)  # None: keep size.
  c.input.train_crop = "pad"  # "pad": pad + random crop (small images); "random_resized": the
  # Inception/ImageNet crop (random area and aspect ratio, resized to image_size);
  # "random_scale": random zoom in and out, then a random crop (segmentation).
  c.input.crop_padding = 4  # "pad" only: zero padding before the random crop; 0 disables.
  c.input.crop_scale = (0.08, 1.0)  # "random_resized" only: range of the crop's area fraction.
  c.input.crop_ratio = (3 / 4, 4 / 3)  # "random_resized" only: range of its aspect ratio.
  c.input.scale_range = (0.5, 2.0)  # "random_scale" only: the shorter side becomes image_size
  # times a factor log-uniform in this range, then a random image_size crop (padded if smaller).
  c.input.center_crop_fraction = 1.0  # Eval (and "pad" training) resize the shorter side to
  # image_size / fraction, then centre-crop image_size (0.875: ImageNet's 256 → 224).
  c.input.random_flip = True  # Horizontal flips in training.
  # Training only, per example, after the crop: "" (off), "randaugment" (randaugment_num_ops
  # ops drawn from 14, each at magnitude bin randaugment_magnitude of 0..30) or
  # "trivialaugment" (one op at a random bin); torchvision's ops and ranges, see
  # vision_jax/data/auto_augment.py. Masks and points move with the image; boxes refuse it.
  c.input.auto_augment = ""
  c.input.randaugment_num_ops = 2
  c.input.randaugment_magnitude = 9
  # Training only: probability of erasing a random rectangle (2-33% of the area, aspect
  # 0.3-3.3) with normal noise after normalisation (timm's 'pixel' mode); 0 is off. Image and
  # 'other' features only (a task with masks, boxes or points refuses it).
  c.input.random_erasing = 0.0
  c.input.mean = (0.5,)  # Per channel (or one value for all), on [0, 1] pixels.
  c.input.std = (0.25,)
  c.input.num_workers = 0  # grain worker processes; 0 reads in the main process.
  c.input.prefetch = 2  # Batches read ahead by grain's threads.

  c.model = ml_collections.ConfigDict()
  c.model.name = "simple_cnn"
  c.model.dtype = "float32"  # Compute dtype; parameters stay float32 (float64: both, x64 mode).
  c.model.kwargs = ml_collections.ConfigDict()  # Model-specific fields, e.g. dropout_rate.
  # Pretrained weights: a directory written by `python -m vision_jax.tools.torch_import`. Used
  # when training starts (not on resume); layers of another shape (the head) stay fresh.
  c.model.init_from = ml_collections.FieldReference(None, field_type=str)

  c.optim = ml_collections.ConfigDict()
  c.optim.name = "adamw"
  c.optim.learning_rate = 1e-3  # Peak, reached after warmup.
  c.optim.momentum = 0.9  # SGD only.
  c.optim.nesterov = True  # SGD only.
  c.optim.weight_decay = 1e-4  # Decoupled (AdamW) or added to the gradient (SGD).
  c.optim.schedule = "cosine"
  c.optim.warmup_steps = 100
  c.optim.grad_clip_norm = 0.0  # 0 disables global-norm clipping.

  c.train = ml_collections.ConfigDict()
  c.train.num_epochs = 10.0
  c.train.num_steps = ml_collections.FieldReference(None, field_type=int)  # Overrides epochs.
  c.train.grad_accum_steps = 1  # Micro-batches per step: same update, 1/k of the activations.
  c.train.label_smoothing = 0.0
  c.train.ema_decay = 0.0  # 0 disables the exponential moving average of weights.
  c.train.aux_loss_weight = 0.3  # Auxiliary classifiers (GoogLeNet), as in its paper.
  # Classification only: mixup / CutMix of each training batch with itself reversed, labels
  # mixed alike (timm's Mixup; DeiT: 0.8 and 1.0). Alpha of the Beta(alpha, alpha) that draws
  # the mixing weight; 0 turns a method off. A batch is mixed with probability mix_prob, by
  # CutMix rather than mixup (both on) with probability mix_switch_prob.
  c.train.mixup_alpha = 0.0
  c.train.cutmix_alpha = 0.0
  c.train.mix_prob = 1.0
  c.train.mix_switch_prob = 0.5
  # Eval averages the predictions (softmax) of each image and its horizontal mirror
  # (classification; segmentation maps the mirror's back first).
  c.train.eval_flip = False
  c.train.log_every = 50
  c.train.eval_every = 500  # Also evaluates at the end.
  c.train.checkpoint_every = 500  # Also saves at the end and on SIGTERM.
  c.train.keep_checkpoints = 2  # The last K, plus the best by best_metric.
  c.train.best_metric = "accuracy"  # An eval metric of the task (e.g. accuracy, miou, loss).
  c.train.progress_bar = True
  # Persistent XLA compilation cache: a rerun, a resume or another config with the same shapes
  # skips compiling (most of a short run's start-up on CPU). "" turns it off; the environment
  # variable JAX_COMPILATION_CACHE_DIR, when set, wins.
  c.train.compilation_cache = "~/.cache/vision_jax/xla"
  # (first, last): write a jax.profiler trace of these steps to workdir/profile, for TensorBoard's
  # profile tab or Perfetto. (): none.
  c.train.profile_steps = ()
  # A Weights & Biases project to log metrics and pictures to as well (needs `pip install
  # wandb`); "": metrics.jsonl and TensorBoard only.
  c.train.wandb_project = ""

  c.captioning = ml_collections.ConfigDict()  # task "captioning" only.
  c.captioning.caption_key = "caption"  # The dataset's caption feature.
  c.captioning.min_count = 1  # Rarer training words become <unk>.
  c.captioning.max_length = 20  # Tokens per caption, <bos> and <eos> included.
  c.captioning.attention_penalty = 1.0  # Show-Attend-and-Tell's regulariser weight.
  c.captioning.beam_size = 3  # Beam search in eval, beside greedy; 1 skips it.
  c.captioning.length_penalty = 0.0  # GNMT alpha of beam search.
  c.captioning.eval_examples = ml_collections.FieldReference(None, field_type=int)  # None: all.
  c.captioning.num_pictures = 6  # Eval images drawn with captions and attention.

  # task="segmentation" only: an FCN over the backbone model.name (its fields in model.kwargs).
  # Its fields and defaults are those of the model FCN and of SegmentationTask, documented there
  # (vision_jax.tasks.segmentation.task.default_config).
  from vision_jax.tasks.segmentation import task as seg  # pylint: disable=g-import-not-at-top
  c.segmentation = seg.default_config()

  # task="detection" only: Faster R-CNN over the backbone model.name (its fields in
  # model.kwargs). Its fields and defaults are those of DetectionTask and of the model
  # FasterRCNN, documented there (vision_jax.tasks.detection.task.default_config). Boxes and
  # sizes are in pixels of the letterboxed input.image_size images.
  from vision_jax.tasks.detection import task as detection  # pylint: disable=g-import-not-at-top
  c.detection = detection.default_config()

  c.parallel = ml_collections.ConfigDict()
  c.parallel.strategy = "jit"  # "jit": one Mesh, XLA partitions; "pmap": replicated + pmean.
  c.parallel.fsdp = 1  # jit only: devices per parameter-sharding group (FSDP); 1 = replicate.
  # CPU only: split the host's CPU into this many devices (data parallel over the cores; set
  # by `python -m vision_jax.main` before JAX starts); 0 = JAX's default, one.
  c.parallel.cpu_devices = 0
  return c


def import_modules(names, field: str = "config.imports") -> None:
  """Imports the modules `names` (`config.imports`: where a paper registers models and tasks).

  Every entry point calls it before it reads a registry.

  Args:
    names: module names, e.g. ("my_paper.models",); () imports nothing.
    field: where the names come from, for messages.

  Raises:
    UserError: for a module that cannot be imported, naming it and PYTHONPATH.
  """
  if isinstance(names, str):
    raise UserError(f"{field}={names!r} must be a tuple of module names, e.g. ({names!r},).")
  for name in names:
    try:
      importlib.import_module(name)
    except ModuleNotFoundError as e:
      if e.name is None or not name.startswith(e.name):
        raise  # A module that `name` itself imports is missing: its own traceback says which.
      raise UserError(
          f"{field} names {name!r}, which cannot be imported ({e}). Run from the "
          "directory that holds its package, or add that directory to PYTHONPATH (now "
          f"{os.environ.get('PYTHONPATH', 'unset')!r}).") from e


def _check_choice(field: str, value, choices) -> None:
  """Raises a UserError unless `value` (of `config.<field>`) is one of `choices`."""
  if value not in choices:
    raise UserError(f"config.{field}={value!r} is not valid; valid choices: {list(choices)}")


def validate(config: ml_collections.ConfigDict, num_devices: int,
             task_type: type | None = None) -> None:
  """Fails early, naming the bad value and the valid choices.

  Imports `config.imports` first, so a paper's own models and tasks are registered.

  Args:
    config: an experiment config built from `base_config()`.
    num_devices: the number of devices the global batch is split over.
    task_type: the `Task` class trained; None: the one registered as `config.task`.

  Raises:
    UserError: naming `config.<field>`, the value and the valid range or choices.
  """
  # Imported here: the schema itself must stay import-light.
  from vision_jax import models, tasks
  from vision_jax.data import pipeline
  from vision_jax.models import precision

  import_modules(config.imports)
  if task_type is None:
    task_type = tasks.TASKS.lookup(config.task, field="task")
  models.MODELS.lookup(config.model.name, field="model.name")
  _check_choice("model.dtype", config.model.dtype, DTYPES)
  precision.dtypes(config.model.dtype)  # float64 without JAX's 64-bit mode fails here.
  _check_choice("optim.name", config.optim.name, OPTIMIZERS)
  _check_choice("optim.schedule", config.optim.schedule, SCHEDULES)
  _check_choice("train.best_metric", config.train.best_metric,
                task_type.metric_names)
  _check_choice("parallel.strategy", config.parallel.strategy, STRATEGIES)
  _check_choice("input.train_crop", config.input.train_crop, TRAIN_CROPS)
  _check_choice("input.auto_augment", config.input.auto_augment, AUTO_AUGMENTS)
  for field, test, valid in _RANGES:
    section, name = field.split(".")
    value = config[section][name]
    if value is not None and not test(value):
      raise UserError(f"config.{field}={value!r} is out of range: it must be {valid}.")
  _check_model_kwargs(config, task_type.head_fields())
  _check_task_support(config, task_type)
  task_type.validate_config(config)  # The task's own settings (`Task.validate_config`).
  pipeline.check_augmentation(pipeline.InputOptions.from_config(config.input),
                              task_type.feature_kinds)
  if config.train.wandb_project and importlib.util.find_spec("wandb") is None:
    raise UserError(f"config.train.wandb_project={config.train.wandb_project!r} needs the wandb "
                    'package: pip install wandb (or set config.train.wandb_project="").')
  profile = tuple(config.train.profile_steps)
  if profile and (len(profile) != 2 or not 1 <= profile[0] <= profile[1]):
    raise UserError(f"config.train.profile_steps={profile} must be () or (first, last) with "
                    "1 <= first <= last, e.g. (10, 15).")
  if config.input.train_crop == "random_resized" and config.input.image_size is None:
    raise UserError('config.input.train_crop="random_resized" needs config.input.image_size '
                    "(the crop's output size, e.g. 224).")
  if config.input.train_crop == "random_scale" and config.input.image_size is None:
    raise UserError('config.input.train_crop="random_scale" needs config.input.image_size '
                    "(the crop's output size, e.g. 64).")
  low, high = config.input.scale_range
  if not 0 < low <= high:
    raise UserError(f"config.input.scale_range={config.input.scale_range} must be (low, high) "
                    "with 0 < low <= high.")
  if not 0 < config.input.center_crop_fraction <= 1:
    raise UserError(f"config.input.center_crop_fraction={config.input.center_crop_fraction} "
                    "must be in (0, 1].")
  if config.parallel.strategy == "pmap" and config.parallel.fsdp != 1:
    raise UserError(f"config.parallel.fsdp={config.parallel.fsdp} needs strategy 'jit' "
                    "(pmap replicates the state); set config.parallel.fsdp=1.")
  if config.parallel.fsdp < 1 or num_devices % config.parallel.fsdp:
    raise UserError(f"config.parallel.fsdp={config.parallel.fsdp} must be a positive divisor "
                    f"of the device count ({num_devices}).")
  accum = config.train.grad_accum_steps
  if accum < 1:
    raise UserError(f"config.train.grad_accum_steps={accum} must be >= 1.")
  for field in ("batch_size", "eval_batch_size"):
    size, multiple = config.input[field], num_devices
    divisor = f"the device count ({num_devices})"
    if field == "batch_size" and accum > 1:
      multiple *= accum
      divisor += f" × train.grad_accum_steps ({accum})"
    if size <= 0 or size % multiple:
      raise UserError(
          f"config.input.{field}={size} must be a positive multiple of {divisor} so that every "
          f"device gets the same share; try {max(multiple, size // multiple * multiple)}.")
  if config.train.num_steps is None and config.train.num_epochs <= 0:
    raise UserError(f"config.train.num_epochs={config.train.num_epochs} must be > 0.")
  if not config.input.mean or len(config.input.mean) != len(config.input.std):
    raise UserError(
        f"config.input.mean={tuple(config.input.mean)} and std={tuple(config.input.std)} must "
        "have the same length: one value per channel, or one for all channels.")
  if min(config.input.std) <= 0:
    raise UserError(f"config.input.std={tuple(config.input.std)} must be > 0 in every "
                    "channel (pixels are divided by it), e.g. 0.25.")
  if config.input.image_size is not None:
    validate_image_shape(config, (config.input.image_size, config.input.image_size, None),
                         task_type)


def validate_image_shape(config: ml_collections.ConfigDict,
                         image_shape: tuple[int, int, int | None],
                         task_type: type | None = None) -> None:
  """Checks the config against the images: mean/std per channel, and the model's smallest input.

  `validate` calls it when `input.image_size` fixes the size (channels unknown); the training
  loop calls it once the dataset says what its images are.

  Args:
    config: an experiment config that passed `validate`.
    image_shape: (H, W, C) of the model's input images; C None when not known yet.
    task_type: the `Task` class trained; None: the one registered as `config.task`.

  Raises:
    UserError: for mean/std of another channel count, or images too small for the model.
  """
  # Imported here: the schema itself must stay import-light.
  from vision_jax import tasks
  from vision_jax.models import input_size

  if task_type is None:
    task_type = tasks.TASKS.lookup(config.task, field="task")
  head = task_type.head_fields()
  height, width, channels = image_shape
  for field in ("mean", "std"):
    values = tuple(config.input[field])
    if channels is not None and len(values) not in (1, channels):
      raise UserError(
          f"config.input.{field}={values} has {len(values)} values, but the images of "
          f"{config.dataset.name!r} have {channels} channel(s); give one per channel"
          f"{' or one for all' if channels > 1 else ''}.")
  fix = ("Set config.input.image_size to at least that, or pick a model for smaller images."
         if config.input.image_size is not None else
         "Set config.input.image_size to at least that (images are resized to it).")
  input_size.check_input_size(config.model.name, (height, width, channels or 3), fix=fix,
                              field=f"config.input.image_size={config.input.image_size}",
                              **{k: v for k, v in config.model.kwargs.items()
                                 if k not in head})


def _check_task_support(config: ml_collections.ConfigDict, task_type: type) -> None:
  """mixup / CutMix and flip averaging only where the task implements them (`Task.
  supports_mixing`, `supports_eval_flip`): elsewhere they would mix or mirror the images
  but not the targets (masks, boxes, captions)."""
  t = config.train
  mixing = [f"config.train.{f}={t[f]}" for f in ("mixup_alpha", "cutmix_alpha") if t[f] > 0]
  if mixing and not task_type.supports_mixing:
    raise UserError(
        f"{' and '.join(mixing)} mixes images and their labels, but task {config.task!r} does "
        "not mix its targets (masks, boxes, captions; only classification does); set it to 0.")
  if t.eval_flip and not task_type.supports_eval_flip:
    raise UserError(
        f"config.train.eval_flip=True: task {config.task!r} cannot average the predictions of "
        "mirrored images (classification and segmentation can); set it to False.")


def _check_model_kwargs(config: ml_collections.ConfigDict, head: frozenset[str]) -> None:
  """Every `config.model.kwargs` entry is a field of the model or of the task's head (`head`)."""
  from vision_jax import models  # pylint: disable=g-import-not-at-top
  fields = models.model_fields(config.model.name)
  if fields is None:  # Not a dataclass: the model's own constructor checks.
    return
  unknown = sorted(set(config.model.kwargs) - set(fields) - head)
  if unknown:
    raise UserError(
        f"config.model.kwargs has {', '.join(unknown)}, which model "
        f"{config.model.name!r} does not have (kept from another config.model.name?); "
        f"its fields: {', '.join(sorted(set(fields) | head))}. Remove them from the config.")
