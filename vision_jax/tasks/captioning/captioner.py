"""Image captioning: a backbone encodes, an LSTM decodes word by word.

Two classic designs, chosen by `attention`:

- Show and Tell (Vinyals et al. 2015): the image as one pooled vector. Here it sets the LSTM's
  initial state (through a learned projection) rather than being fed as an extra first input:
  the same conditioning, and every time step stays the same computation.
- Show, Attend and Tell (Xu et al. 2015), soft attention: the encoder's (H, W, C) feature grid
  is kept as H*W annotation vectors; at every step an additive (Bahdanau) attention over them,
  driven by the previous hidden state, gives a context vector, optionally scaled by a gate
  beta = sigmoid(f(h)) (their Sec. 4.2.1), which is concatenated with the word embedding as the
  LSTM input. The initial state comes from the mean annotation, as in the paper.

`CaptionDecoder` is the decoder alone, on any image encoding: a (B, D) vector or a (B, H, W, C)
grid. `Captioner` is a headless backbone (`vision_jax.models.backbone`) plus a `CaptionDecoder`
on one of its features; the decoder shares the captioner's scope, so its parameters (`embed`,
`cell`, `head`, ...) sit next to `encoder`.

Training is teacher forced: `__call__(images, tokens)` predicts tokens[:, 1:] from
tokens[:, :-1]. Decoding (`vision_jax.tasks.captioning.decoding`) calls `encode` once, then
`decode_step` per token, through `model.apply(..., method=...)`; both modules have them.
"""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from vision_jax import models
from vision_jax.models import backbone as backbone_lib
from vision_jax.models import precision

# LSTM carry (c, h), each (B, hidden_dim).
Carry = tuple[jax.Array, jax.Array]


class CaptionDecoder(nn.Module):
  """(Attention) LSTM decoder of an image encoding.

  Attributes:
    vocab_size: Number of token ids (`len(vocabulary)`).
    embed_dim: Word embedding width.
    hidden_dim: LSTM state width.
    attention: Soft attention over a (B, H, W, C) grid at each step (Show, Attend and Tell)
      instead of one pooled vector (Show and Tell).
    attention_dim: Width of the additive attention's hidden layer.
    gate: Scale the attention context by a learned sigmoid gate of the hidden state.
    dropout_rate: Dropout on the decoder output before the vocabulary projection (training).
    coordinates: Append each grid cell's (row, column) in [-1, 1] to its annotation vector, so
      that the attended context says where it is ("left of", "above"); convolutional features
      alone barely encode absolute position.
    dtype: Computation dtype (e.g. jnp.bfloat16); logits and attention weights stay float32
      (float64 in float64 mode).
    param_dtype: Parameter dtype.
  """

  vocab_size: int
  embed_dim: int = 256
  hidden_dim: int = 512
  attention: bool = True
  attention_dim: int = 256
  gate: bool = True
  dropout_rate: float = 0.0
  coordinates: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    dense = lambda n, name: nn.Dense(  # noqa: E731
        n, dtype=self.dtype, param_dtype=self.param_dtype, name=name)
    self.init_h = dense(self.hidden_dim, "init_h")
    self.init_c = dense(self.hidden_dim, "init_c")
    self.embed = nn.Embed(
        self.vocab_size, self.embed_dim, dtype=self.dtype, param_dtype=self.param_dtype)
    self.cell = nn.OptimizedLSTMCell(
        self.hidden_dim, dtype=self.dtype, param_dtype=self.param_dtype)
    if self.attention:
      self.att_keys = dense(self.attention_dim, "att_keys")  # W_a f_i, once per image
      self.att_query = dense(self.attention_dim, "att_query")  # W_h h, once per step
      self.att_score = dense(1, "att_score")
      if self.gate:
        self.att_gate = dense(1, "att_gate")
    self.dropout = nn.Dropout(self.dropout_rate)
    self.head = dense(self.vocab_size, "head")

  def encode(self, x: jax.Array, train: bool = False) -> tuple[Carry, dict[str, jax.Array]]:
    """The initial carry and what every step reads, from an image encoding.

    Args:
      x: (B, H, W, C) feature grid (mean-pooled without attention) or (B, C) vector (only
        without attention).
      train: Unused (the decoder's dropout acts in the steps); kept so that decoding calls
        every encoder alike.

    Returns:
      `(carry, encoded)`: the initial LSTM carry and, with attention, `grid` (B, N, C')
      annotation vectors (N = H * W; C' = C + 2 with `coordinates`) and their projections
      `keys` (B, N, attention_dim); without, `pooled` (B, C). Decoding code treats `encoded`
      as an opaque pytree with the batch first (beam search tiles it).

    Raises:
      ValueError: for a vector with attention, or an input of another rank.
    """
    del train
    if x.ndim == 4:
      grid = x.reshape(x.shape[0], -1, x.shape[-1])  # (B, N, C)
      pooled = grid.mean(axis=1)  # (B, C)
      if self.coordinates:
        rows, cols = jnp.meshgrid(jnp.linspace(-1, 1, x.shape[1]), jnp.linspace(-1, 1, x.shape[2]),
                                  indexing="ij")
        where = jnp.stack([rows, cols], -1).reshape(1, -1, 2).astype(grid.dtype)  # (1, N, 2)
        grid = jnp.concatenate([grid, jnp.broadcast_to(where, (*grid.shape[:2], 2))], -1)
    elif x.ndim == 2 and not self.attention:
      grid, pooled = None, x  # (B, C)
    else:
      raise ValueError(f"The image encoding has shape {x.shape}; attention needs a (B, H, W, C) "
                       "grid, Show and Tell a grid or a (B, C) vector.")
    carry = (jnp.tanh(self.init_c(pooled)), jnp.tanh(self.init_h(pooled)))  # (B, D) each
    if self.attention:
      return carry, {"grid": grid, "keys": self.att_keys(grid)}
    return carry, {"pooled": pooled}

  def _step(self, carry: Carry, embedded: jax.Array, encoded: dict[str, jax.Array],
            train: bool) -> tuple[Carry, tuple[jax.Array, dict[str, jax.Array]]]:
    """One LSTM step from an embedded token (B, E): new carry, (logits (B, V), aux)."""
    aux = {}
    x = embedded
    if self.attention:
      _, h = carry
      query = self.att_query(h)[:, None]  # (B, 1, A)
      scores = self.att_score(jnp.tanh(encoded["keys"] + query))[..., 0]  # (B, N)
      alpha = jax.nn.softmax(scores.astype(precision.output_dtype(self.dtype)), axis=-1)  # (B, N)
      context = jnp.einsum("bn,bnc->bc", alpha.astype(self.dtype), encoded["grid"])  # (B, C)
      if self.gate:
        context = nn.sigmoid(self.att_gate(h)) * context
      x = jnp.concatenate([x, context.astype(x.dtype)], axis=-1)  # (B, E + C)
      aux["attention"] = alpha
    carry, h = self.cell(carry, x)  # h: (B, D)
    out = jnp.concatenate([h, context.astype(h.dtype)], axis=-1) if self.attention else h
    out = self.dropout(out, deterministic=not train)
    return carry, (self.head(out).astype(precision.output_dtype(self.dtype)), aux)

  def decode_step(self, carry: Carry, tokens: jax.Array, encoded: dict[str, jax.Array],
                  train: bool = False) -> tuple[Carry, jax.Array, dict[str, jax.Array]]:
    """Feeds one token per caption.

    Args:
      carry: LSTM carry from `encode` or the previous step.
      tokens: (B,) int ids of the previous tokens (<bos> first).
      encoded: From `encode`.
      train: Enables dropout, which then needs a `'dropout'` rng.

    Returns:
      `(carry, logits, aux)`: the next carry, float32 logits (B, V) of the next token, and
      `{"attention": (B, N)}` with attention, else `{}`.
    """
    carry, (logits, aux) = self._step(carry, self.embed(tokens), encoded, train)
    return carry, logits, aux

  def teacher_forced(self, carry: Carry, encoded: dict[str, jax.Array], tokens: jax.Array,
                     train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Next-token logits (B, T, V) of (B, T) input tokens from `encode`'s outputs."""
    embedded = self.embed(tokens)  # (B, T, E)

    def body(module, carry, x, encoded):
      return module._step(carry, x, encoded, train)

    scan = nn.scan(
        body, variable_broadcast="params", split_rngs={"params": False, "dropout": True},
        in_axes=(1, nn.broadcast), out_axes=1)
    _, (logits, aux) = scan(self, carry, embedded, encoded)  # (B, T, V), {(B, T, N)}
    return logits, aux

  def __call__(self, x: jax.Array, tokens: jax.Array,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Teacher-forced next-token logits of an image encoding.

    Args:
      x: (B, H, W, C) feature grid or (B, C) vector (see `encode`).
      tokens: (B, T) int input ids, <bos> first (a caption without its last token).
      train: Enables dropout.

    Returns:
      `(logits, aux)`: float32 logits (B, T, V), logits[:, t] predicting tokens[:, t + 1] of
      the full caption, and `{"attention": (B, T, N)}` with attention, else `{}`.
    """
    carry, encoded = self.encode(x)
    return self.teacher_forced(carry, encoded, tokens, train)


class Captioner(nn.Module):
  """Backbone encoder + `CaptionDecoder`.

  Attributes:
    backbone: A registry name, a Module or a constructor (`backbone.build`).
    feature: Which entry of the backbone's feature dict to describe: a (B, H, W, C) grid (e.g.
      ResNet `stage3`, SimpleCNN `conv2`) or a (B, D) vector (`pre_logits`, ResNet `pooled`,
      SimpleCNN `hidden`; only without attention). A grid is mean-pooled when `attention` is
      False.
    vocab_size: See `CaptionDecoder`.
    embed_dim: See `CaptionDecoder`.
    hidden_dim: See `CaptionDecoder`.
    attention: See `CaptionDecoder`.
    attention_dim: See `CaptionDecoder`.
    gate: See `CaptionDecoder`.
    dropout_rate: See `CaptionDecoder`.
    backbone_classes: None (the default): the backbone is built without its classifier. A
      number builds a registry backbone with a classifier of that many classes, which the
      captioner never uses, so that parameters saved with one load as they are: 1 for
      captioners trained before backbones could be headless (their unused `encoder/head`; for
      VGG/AlexNet also `encoder/fc6`, `encoder/fc7`; GoogLeNet's `encoder/aux1`, `aux2`), or a
      classification checkpoint's class count. The shipped captioning configs set 1, so that
      their checkpoints keep loading.
    backbone_kwargs: Other fields of the backbone (e.g. `features` of SimpleCNN, `widths` of a
      small VGG).
    coordinates: See `CaptionDecoder`.
    dtype: See `CaptionDecoder`.
    param_dtype: Parameter dtype.
  """

  backbone: backbone_lib.Backbone
  feature: str
  vocab_size: int
  embed_dim: int = 256
  hidden_dim: int = 512
  attention: bool = True
  attention_dim: int = 256
  gate: bool = True
  dropout_rate: float = 0.0
  backbone_classes: int | None = None
  backbone_kwargs: flax.core.FrozenDict = flax.core.FrozenDict()
  coordinates: bool = True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    if self.backbone_classes is None:
      self.encoder = backbone_lib.build(self.backbone, dtype=self.dtype,
                                        param_dtype=self.param_dtype, name=None,
                                        **self.backbone_kwargs)
    elif isinstance(self.backbone, str):
      self.encoder = models.get_model(
          self.backbone, num_classes=self.backbone_classes, dtype=self.dtype,
          param_dtype=self.param_dtype, **self.backbone_kwargs)
    else:
      raise ValueError(f"backbone_classes={self.backbone_classes} is for registry backbones "
                       f"(to load old parameters); {backbone_lib.describe(self.backbone)} is "
                       "not one: leave backbone_classes None.")
    self.decoder = CaptionDecoder(
        vocab_size=self.vocab_size, embed_dim=self.embed_dim, hidden_dim=self.hidden_dim,
        attention=self.attention, attention_dim=self.attention_dim, gate=self.gate,
        dropout_rate=self.dropout_rate, coordinates=self.coordinates, dtype=self.dtype,
        param_dtype=self.param_dtype)
    nn.share_scope(self, self.decoder)  # Its parameters sit next to `encoder`.

  def encode(self, images: jax.Array, train: bool = False) -> tuple[Carry, dict[str, jax.Array]]:
    """Runs the backbone once per image and starts the decoder on `feature`.

    Args:
      images: (B, H, W, C) images, preprocessed as for the backbone.
      train: Backbone in training mode (BatchNorm batch statistics, dropout).

    Returns:
      `(carry, encoded)`: see `CaptionDecoder.encode`.
    """
    _, features = self.encoder(images, train=train)
    if self.feature not in features:
      raise ValueError(f"{backbone_lib.describe(self.backbone)} has no feature "
                       f"{self.feature!r}; valid choices: {sorted(features)}")
    x = features[self.feature]
    if x.ndim not in (2, 4) or (x.ndim == 2 and self.attention):
      raise ValueError(
          f"Feature {self.feature!r} has shape {x.shape}; attention needs a (B, H, W, C) grid")
    return self.decoder.encode(x)

  def decode_step(self, carry: Carry, tokens: jax.Array, encoded: dict[str, jax.Array],
                  train: bool = False) -> tuple[Carry, jax.Array, dict[str, jax.Array]]:
    """One token per caption: see `CaptionDecoder.decode_step`."""
    return self.decoder.decode_step(carry, tokens, encoded, train)

  def __call__(self, images: jax.Array, tokens: jax.Array,
               train: bool = False) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Teacher-forced next-token logits.

    Args:
      images: (B, H, W, C) images.
      tokens: (B, T) int input ids, <bos> first (a caption without its last token).
      train: Training mode for the backbone and dropout.

    Returns:
      `(logits, aux)`: float32 logits (B, T, V), logits[:, t] predicting tokens[:, t + 1] of
      the full caption, and `{"attention": (B, T, N)}` with attention, else `{}`.
    """
    carry, encoded = self.encode(images, train)
    return self.decoder.teacher_forced(carry, encoded, tokens, train)


def caption_loss(logits: jax.Array, targets: jax.Array,
                 pad_id: int = 0) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """Cross-entropy over the non-pad target tokens.

  Args:
    logits: (B, T, V) next-token logits (float32).
    targets: (B, T) int ids; positions equal to `pad_id` count for nothing.
    pad_id: The padding id.

  Returns:
    `(loss, (nll_sum, count))`: the mean NLL per real token (the training loss; 0 when there
    are none) and its parts, the summed NLL and the number of real tokens, which eval adds up
    over batches for `vision_jax.tasks.captioning.metrics.perplexity`.
  """
  mask = (targets != pad_id).astype(jnp.float32)  # (B, T)
  logits = logits.astype(precision.output_dtype(logits.dtype))  # At least float32.
  nll = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  nll_sum = jnp.sum(nll * mask)
  count = jnp.sum(mask)
  return nll_sum / jnp.maximum(count, 1.0), (nll_sum, count)


def attention_penalty(attention: jax.Array, targets: jax.Array, pad_id: int = 0) -> jax.Array:
  """Show, Attend and Tell's "doubly stochastic" regulariser, mean over images.

  sum_i (1 - sum_t alpha_ti)^2 asks the decoder to look at every location about once over the
  caption; only steps that predict a real (non-pad) token count. Add `lambda * penalty` to the
  loss (the paper's lambda is 1).

  Args:
    attention: (B, T, N) weights from `Captioner.__call__`'s aux.
    targets: (B, T) target ids.
    pad_id: The padding id.

  Returns:
    A scalar.
  """
  mask = (targets != pad_id).astype(attention.dtype)[..., None]  # (B, T, 1)
  coverage = jnp.sum(attention * mask, axis=1)  # (B, N)
  return jnp.mean(jnp.sum((1.0 - coverage) ** 2, axis=-1))
