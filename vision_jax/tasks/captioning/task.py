"""Image captioning: a CNN encoder and an LSTM decoder, trained by teacher forcing.

Training minimises the masked cross-entropy of the next word (plus Show-Attend-and-Tell's
attention penalty); evaluation sums the same NLL over the eval set (perplexity) and then
decodes every eval image, greedily and with beam search, for corpus BLEU-1..4 and CIDEr-D.
The vocabulary is built from the training captions when a run starts and saved as
`workdir/vocab.json`, which a resumed run (and inference) reads back.
"""

import dataclasses
import functools
import os
from typing import ClassVar

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tensorflow_datasets as tfds

from vision_jax import sharding
from vision_jax.data import datasets, transforms
from vision_jax.models import precision
from vision_jax.tasks import base
from vision_jax.tasks.captioning import captioner, decoding
from vision_jax.tasks.captioning import metrics as metrics_lib
from vision_jax.tasks.captioning import pictures as caption_pictures
from vision_jax.tasks.captioning.vocabulary import Vocabulary

VOCAB_FILE = "vocab.json"


def _text(value) -> str:
  """A caption from the data source (bytes or str), or the first of several."""
  if isinstance(value, (list, tuple, np.ndarray)) and not isinstance(value, (bytes, str)):
    if np.ndim(value) > 0:
      value = value[0]
  return value.decode() if isinstance(value, bytes) else str(value)


def _references(value) -> list[str]:
  """All reference captions of one example."""
  if isinstance(value, (bytes, str)) or np.ndim(value) == 0:
    return [_text(value)]
  return [_text(v) for v in value]


def _lookup(example: dict, key: str):
  """`example[key]`, where `key` may be a path into nested features ("captions/text")."""
  value = example
  for part in key.split("/"):
    value = value[part]
  return value


@dataclasses.dataclass(frozen=True)
class CaptioningTask(base.Task):
  """Captions from `config.captioning.caption_key`; see the module docstring.

  Attributes:
    caption_key: the dataset feature holding the caption (text, or several texts; a path like
      "captions/text" for COCO). With several, training uses the first, eval all of them.
    min_count: words seen fewer times in the training captions become <unk>.
    max_length: token sequence length, <bos> and <eos> included.
    attention_penalty: weight of the "doubly stochastic" attention regulariser.
    beam_size: beam width of the beam-search evaluation (1 skips it).
    length_penalty: GNMT length-normalisation exponent of beam search.
    eval_examples: decode only the first N eval images (None: all).
    num_pictures: eval images drawn with their captions (and attention) after each eval.
    vocab: set by `prepare`.
  """
  caption_key: str = "caption"
  min_count: int = 1
  max_length: int = 20
  attention_penalty: float = 1.0
  beam_size: int = 3
  length_penalty: float = 0.0
  eval_examples: int | None = None
  num_pictures: int = 6
  vocab: Vocabulary | None = dataclasses.field(default=None, compare=False, hash=False)

  metric_names: ClassVar[tuple[str, ...]] = (
      "bleu4", "cider", "beam_bleu4", "beam_cider", "token_accuracy", "loss")
  curve_metric: ClassVar[str] = "bleu4"
  picture_dir: ClassVar[str] = "captions"
  # After `example_transform`: the image and its caption's token ids.
  feature_kinds: ClassVar[transforms.FeatureKinds] = {"image": "image", "tokens": "other"}

  @property
  def keys(self) -> tuple[str, ...]:
    return ("image", self.caption_key.split("/")[0])

  @classmethod
  def from_config(cls, config: ml_collections.ConfigDict) -> "CaptioningTask":
    c = config.captioning
    return cls(caption_key=c.caption_key, min_count=c.min_count, max_length=c.max_length,
               attention_penalty=c.attention_penalty, beam_size=c.beam_size,
               length_penalty=c.length_penalty, eval_examples=c.eval_examples,
               num_pictures=c.num_pictures)

  def prepare(self, builder: tfds.core.DatasetBuilder, train_source,
              workdir: str) -> "CaptioningTask":
    """Loads `workdir/vocab.json`, or builds it from the training captions and saves it."""
    path = os.path.join(workdir, VOCAB_FILE)
    if os.path.exists(path):
      vocab = Vocabulary.load(path)
    else:
      texts = [_text(_lookup(train_source[i], self.caption_key)) for i in range(len(train_source))]
      vocab = Vocabulary.build(texts, min_count=self.min_count)
      if jax.process_index() == 0:
        vocab.save(path)
    return dataclasses.replace(self, vocab=vocab)

  @classmethod
  def head_fields(cls) -> frozenset[str]:
    set_here = {"parent", "name", "backbone", "backbone_kwargs", "vocab_size", "dtype"}
    return frozenset(f.name for f in dataclasses.fields(captioner.Captioner)) - set_here

  def check_dataset(self, builder: tfds.core.DatasetBuilder) -> None:
    datasets.check_features(builder, {"image": None, self.caption_key: "captioning.caption_key"})

  def example_transform(self, example: dict) -> dict:
    return {"image": example["image"],
            "tokens": self.vocab.encode(_text(_lookup(example, self.caption_key)),
                                        self.max_length)}

  def build_model(self, config: ml_collections.ConfigDict,
                  builder: tfds.core.DatasetBuilder) -> nn.Module:
    """A `Captioner` over the backbone `config.model.name`: `config.model.kwargs` that are no
    field of `Captioner` (e.g. `features` of SimpleCNN) go to the backbone."""
    fields = self.head_fields()
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in config.model.kwargs.items()}
    backbone_kwargs = {k: v for k, v in kwargs.items() if k not in fields}
    return captioner.Captioner(
        backbone=config.model.name, vocab_size=len(self.vocab),
        **precision.dtypes(config.model.dtype),
        backbone_kwargs=flax.core.FrozenDict(backbone_kwargs),
        **{k: v for k, v in kwargs.items() if k in fields})

  def init_inputs(self, image_shape: tuple[int, ...]) -> tuple:
    return (jnp.zeros((1, *image_shape), jnp.float32),
            jnp.zeros((1, self.max_length - 1), jnp.int32))

  def model_inputs(self, batch: dict) -> tuple:
    return batch["image"], batch["tokens"][:, :-1]  # Teacher forcing: the caption so far.

  def loss(self, outputs, batch: dict) -> tuple[jax.Array, dict]:
    logits, aux = outputs  # (B, T, V)
    targets = batch["tokens"][:, 1:]  # (B, T): the next word at every step.
    loss, _ = captioner.caption_loss(logits, targets, self.vocab.pad_id)
    total = loss
    if "attention" in aux and self.attention_penalty:
      total += self.attention_penalty * captioner.attention_penalty(
          aux["attention"], targets, self.vocab.pad_id)
    real = targets != self.vocab.pad_id
    accuracy = jnp.sum((jnp.argmax(logits, -1) == targets) & real) / jnp.maximum(real.sum(), 1)
    return total, {"loss": loss, "token_accuracy": accuracy, "weight": real.sum()}

  def eval_sums(self, outputs, batch: dict) -> dict:
    logits, _ = outputs
    pad = self.vocab.pad_id
    targets = jnp.where(batch["weight"][:, None] > 0, batch["tokens"][:, 1:], pad)
    _, (nll_sum, count) = captioner.caption_loss(logits, targets, pad)
    correct = jnp.sum((jnp.argmax(logits, -1) == targets) & (targets != pad))
    return {"nll": nll_sum, "tokens": count, "correct": correct,
            "examples": batch["weight"].sum()}

  def finalize(self, sums: dict) -> dict:
    sums = {k: float(np.asarray(v)) for k, v in sums.items()}
    tokens = max(sums["tokens"], 1.0)
    return {"loss": sums["nll"] / tokens,
            "perplexity": metrics_lib.perplexity(sums["nll"], sums["tokens"]),
            "token_accuracy": sums["correct"] / tokens, "num_examples": int(sums["examples"])}

  def summary(self, metrics: dict) -> str:
    line = (f"BLEU-4 {metrics['bleu4']:.4f}, CIDEr-D {metrics['cider']:.3f} (greedy)")
    if "beam_bleu4" in metrics:
      line += f"; beam {self.beam_size}: {metrics['beam_bleu4']:.4f}, {metrics['beam_cider']:.3f}"
    return line + f"; perplexity {metrics['perplexity']:.3f}"

  @functools.lru_cache(maxsize=4)
  def _decoders(self, model: nn.Module, mesh: jax.sharding.Mesh):
    """Jitted greedy and beam decoders of `model`, built once so later evals reuse them.

    Cached per (task settings, model, mesh); the vocabulary only enters through the special
    ids, which every vocabulary shares. Outputs are replicated on every device of `mesh`, so
    every process can read them.
    """
    replicated = sharding.replicated(mesh)
    ids = dict(bos_id=self.vocab.bos_id, eos_id=self.vocab.eos_id,
               max_length=self.max_length - 1, pad_id=self.vocab.pad_id)
    greedy_fn = jax.jit(functools.partial(decoding.greedy_decode, model=model, **ids),
                        out_shardings=replicated)
    beam_fn = jax.jit(functools.partial(decoding.beam_decode, model=model,
                                        beam_size=self.beam_size, alpha=self.length_penalty,
                                        **ids), out_shardings=replicated)
    return greedy_fn, beam_fn

  def decode(self, model: nn.Module, variables: dict, config: ml_collections.ConfigDict,
             source, mesh: jax.sharding.Mesh, limit: int | None = None,
             beam: bool = True) -> dict:
    """Greedy (and beam) captions of the first `eval_examples` (at most `limit`) images of
    `source`.

    Every process decodes the same images (replicated), so all of them get every caption.

    Args:
      beam: also decode with beam search (when `beam_size` > 1).

    Returns:
      `greedy` and `beam` (lists of strings; `beam` empty without beam search), `attention`
      ((N, L, cells) greedy attention or None) and `references`.
    """
    count = len(source) if self.eval_examples is None else min(self.eval_examples, len(source))
    count = count if limit is None else min(limit, count)
    greedy_fn, beam_fn = self._decoders(model, mesh)
    greedy, beamed, attention = [], [], []
    for _, images, real in base.replicated_eval_batches(self, source, config, mesh, count):
      tokens, _, att = greedy_fn(variables, images=images)
      greedy += [self.vocab.decode(t) for t in np.asarray(tokens)[:real]]
      if att is not None:
        attention.append(np.asarray(att)[:real])
      if beam and self.beam_size > 1:
        tokens, _ = beam_fn(variables, images=images)
        beamed += [self.vocab.decode(t) for t in np.asarray(tokens)[:real]]
    references = [_references(_lookup(source[i], self.caption_key)) for i in range(count)]
    return {"greedy": greedy[:count], "beam": beamed[:count], "references": references,
            "attention": np.concatenate(attention)[:count] if attention else None}

  def predictions(self, model: nn.Module, variables: dict, images: jax.Array) -> dict:
    """`caption` (greedy, one string per image) and `beam_caption` when `beam_size` > 1."""
    greedy_fn, beam_fn = self._decoders(model, sharding.make_mesh())
    tokens, _, _ = greedy_fn(variables, images=images)
    out = {"caption": [self.vocab.decode(t) for t in np.asarray(tokens)]}
    if self.beam_size > 1:
      tokens, _ = beam_fn(variables, images=images)
      out["beam_caption"] = [self.vocab.decode(t) for t in np.asarray(tokens)]
    return out

  def evaluate_extra(self, context: base.EvalContext) -> dict:
    """Corpus BLEU-1..4 and CIDEr-D of greedy and beam captions."""
    c = context
    out = self.decode(c.model, c.variables, c.config, c.eval_source, c.mesh)
    metrics = {**metrics_lib.bleu(out["greedy"], out["references"]),
               "cider": metrics_lib.cider_d(out["greedy"], out["references"])}
    if out["beam"]:
      beam_bleu = metrics_lib.bleu(out["beam"], out["references"])
      metrics.update({f"beam_{k}": v for k, v in beam_bleu.items()})
      metrics["beam_cider"] = metrics_lib.cider_d(out["beam"], out["references"])
    return metrics

  def draw_pictures(self, context: base.EvalContext) -> str | None:
    """The first `num_pictures` eval images with their greedy caption (and its attention) and
    first reference (every process decodes their batch; process 0 draws)."""
    if not self.num_pictures:
      return None
    c = context
    out = self.decode(c.model, c.variables, c.config, c.eval_source, c.mesh,
                      limit=self.num_pictures, beam=False)
    if jax.process_index() != 0:
      return None
    n = len(out["greedy"])
    path = self.picture_path(c.workdir, c.step)
    caption_pictures.plot_captions(
        [c.eval_source[i]["image"] for i in range(n)], out["greedy"],
        [r[0] for r in out["references"]], path, attention=out["attention"],
        words=[t.split() for t in out["greedy"]])
    return path
