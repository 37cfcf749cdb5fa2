"""Tests for image captioning: vocabulary, BLEU / CIDEr-D by hand, the Captioner, its loss,
greedy and beam-search decoding, and that the attention captioner memorises a few scenes.

Metric expectations are worked out by hand in the comments. Shape checks use `jax.eval_shape`
(nothing compiles); decoding is checked on a toy step function whose probabilities are a table,
so the best sequence is known.
"""

import dataclasses
import functools
import math
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vision_jax import config as config_lib
from vision_jax import tasks
from vision_jax.data.builders import shapes_render
from vision_jax.tasks.captioning import metrics as captioning
from vision_jax.tasks.captioning import decoding
from vision_jax.tasks.captioning.captioner import CaptionDecoder, Captioner, attention_penalty, caption_loss
from vision_jax.tasks.captioning.vocabulary import Vocabulary, split_words

import shipped
from user_backbone import UserBackbone


def _key(seed: int) -> jax.Array:
  # "rbg" compiles much faster than threefry on CPU; which random values we get does not matter.
  return jax.random.key(seed, impl="rbg")


# ---------------------------------------------------------------------------------- tokenizer


def test_split_words_lowercases_and_strips_punctuation():
  assert split_words("A red, circle.  Left of it!") == ["a", "red", "circle", "left", "of", "it"]
  assert split_words("don't") == ["don't"]


def test_vocabulary_min_count_unk_and_round_trip(tmp_path):
  vocab = Vocabulary.build(["A red circle.", "a red square", "A blue circle!"], min_count=2)
  # Counts: a 3, red 2, circle 2, blue 1, square 1 -> keep a, circle, red (by count, then a-z).
  assert vocab.words == ["<pad>", "<bos>", "<eos>", "<unk>", "a", "circle", "red"]
  assert len(vocab) == 7
  assert (vocab.pad_id, vocab.bos_id, vocab.eos_id, vocab.unk_id) == (0, 1, 2, 3)

  ids = vocab.encode("A red square", max_length=7)
  assert ids.dtype == np.int32
  np.testing.assert_array_equal(ids, [1, 4, 6, 3, 2, 0, 0])  # bos a red unk eos pad pad
  assert vocab.decode(ids) == "a red"  # <unk> and the other specials are skipped.
  assert vocab.decode(vocab.encode("a red circle.", 6)) == "a red circle"
  # Too long: words are cut, <eos> stays.
  np.testing.assert_array_equal(vocab.encode("a red circle", 4), [1, 4, 6, 2])
  # Decoding stops at the first <eos>.
  assert vocab.decode([1, 4, 2, 6, 5]) == "a"
  assert vocab.encode_batch(["a", "red circle"], 5).shape == (2, 5)

  path = str(tmp_path / "vocab.json")
  vocab.save(path)
  loaded = Vocabulary.load(path)
  assert loaded == vocab and loaded.min_count == 2
  np.testing.assert_array_equal(loaded.encode("a blue circle", 6), [1, 4, 3, 5, 2, 0])


# ---------------------------------------------------------------------------------- metrics


def test_bleu_perfect_match_is_one():
  scores = captioning.bleu(["a red circle on the left"], [["A red circle on the left."]])
  assert scores == pytest.approx({"bleu1": 1.0, "bleu2": 1.0, "bleu3": 1.0, "bleu4": 1.0})


def test_bleu_one_sentence_by_hand():
  # cand: the cat sat on the mat  /  ref: the cat is on the mat   (c = r = 6, no penalty)
  # 1-grams: the x2, cat, on, mat match; sat does not          p1 = 5/6
  # 2-grams: "the cat", "on the", "the mat" of 5                p2 = 3/5
  # 3-grams: "on the mat" of 4                                  p3 = 1/4
  # 4-grams: none of 3                                          p4 = 0 -> BLEU-4 = 0
  scores = captioning.bleu(["the cat sat on the mat"], [["the cat is on the mat"]])
  assert scores["bleu1"] == pytest.approx(5 / 6)
  assert scores["bleu2"] == pytest.approx(math.sqrt(5 / 6 * 3 / 5))
  assert scores["bleu3"] == pytest.approx((5 / 6 * 3 / 5 * 1 / 4) ** (1 / 3))  # = 0.5
  assert scores["bleu4"] == 0.0


def test_bleu_pools_counts_over_the_corpus_with_brevity_penalty():
  # Adds a second image to the case above: cand "a dog", ref "a dog runs".
  # Corpus: p1 = (5 + 2) / (6 + 2) = 7/8, p2 = (3 + 1) / (5 + 1) = 2/3, p3 = (1 + 0) / (4 + 0).
  # c = 6 + 2 = 8 < r = 6 + 3 = 9, so BP = exp(1 - 9/8).
  scores = captioning.bleu(["the cat sat on the mat", "a dog"],
                           [["the cat is on the mat"], ["a dog runs"]])
  bp = math.exp(1 - 9 / 8)
  assert scores["bleu1"] == pytest.approx(bp * 7 / 8)
  assert scores["bleu2"] == pytest.approx(bp * math.sqrt(7 / 8 * 2 / 3))
  assert scores["bleu3"] == pytest.approx(bp * (7 / 8 * 2 / 3 * 1 / 4) ** (1 / 3))


def test_bleu_brevity_uses_the_closest_reference_and_clips_by_the_best_reference():
  # "the cat": all n-grams match, but c = 2 and the closest reference has 3 words:
  # BP = exp(1 - 3/2). No 3-grams at all -> BLEU-3 = 0.
  scores = captioning.bleu(["the cat"], [["the cat sat", "the cat sat on the mat"]])
  assert scores["bleu1"] == pytest.approx(math.exp(-0.5))
  assert scores["bleu2"] == pytest.approx(math.exp(-0.5))
  assert scores["bleu3"] == 0.0
  # Papineni et al.'s example: "the" x7 is clipped at 2, its count in the first reference.
  # c = 7, references of 6 and 7 words -> r = 7, BP = 1; p1 = 2/7.
  scores = captioning.bleu(["the the the the the the the"],
                           [["The cat is on the mat.", "There is a cat on the mat."]])
  assert scores["bleu1"] == pytest.approx(2 / 7)


def test_cider_d_by_hand():
  # Two images, one reference each: "red circle", "blue square". Every n-gram of the
  # references is in 1 of N = 2 reference sets, so idf = log 2 - log 1 = log 2 =: w; unseen
  # n-grams get df = max(1, 0) = 1, the same weight.
  refs = [["red circle"], ["blue square"]]
  # Image 2 identical: cosine 1 for n = 1, 2; no 3- or 4-grams -> 0. 10 * (1 + 1) / 4 = 5.
  # Image 1, "red square": unigrams (w, w) vs (w, w), one shared -> w^2 / (sqrt2 w)^2 = 1/2;
  # bigrams share nothing. 10 * (1/2) / 4 = 1.25.
  per_image = captioning.cider_d_per_image(["red square", "blue square"], refs)
  assert per_image == pytest.approx([1.25, 5.0])
  assert captioning.cider_d(["red square", "blue square"], refs) == pytest.approx(3.125)
  # Image 1, "red circle circle": the "-D" parts. Unigram tf-idf (red w, circle 2w) vs (w, w):
  # circle clipped, min(2w, w) * w, so dot = 2 w^2 over norms sqrt5 w * sqrt2 w -> 2/sqrt10.
  # Bigrams (red circle w, circle circle w) vs (red circle w): 1/sqrt2. Trigrams: ref has none.
  # One word longer than the reference: Gaussian penalty exp(-1 / (2 * 6^2)).
  expected = 10 * math.exp(-1 / 72) * (2 / math.sqrt(10) + 1 / math.sqrt(2)) / 4
  per_image = captioning.cider_d_per_image(["red circle circle", "blue square"], refs)
  assert per_image == pytest.approx([expected, 5.0])


def test_cider_d_idf_ignores_ngrams_in_every_image():
  # "a" is in both reference sets: idf = log 2 - log 2 = 0, so a caption of only "a" scores 0,
  # and 4-word identical captions whose n-grams are not all shared score 10.
  refs = [["a red big circle"], ["a blue small square"]]
  assert captioning.cider_d_per_image(["a", "a blue small square"], refs) == pytest.approx(
      [0.0, 10.0])


def test_perplexity():
  assert captioning.perplexity(2 * math.log(4.0), 2) == pytest.approx(4.0)


def test_metrics_match_coco_caption():
  """Cross-check against the reference implementation (requirements-test.txt)."""
  from pycocoevalcap.bleu import bleu as bleu_mod
  from pycocoevalcap.cider import cider as cider_mod
  rng = np.random.default_rng(0)
  scenes = [shapes_render.render_scene(np.random.default_rng(i), 32) for i in range(40)]
  refs = [[s["caption"], shapes_render.render_scene(np.random.default_rng(100 + i), 32)["caption"]]
          for i, s in enumerate(scenes)]
  cands = []
  for r in refs:  # Perturbed references: dropped and swapped words.
    words = split_words(r[0])
    words = [w for w in words if rng.random() > 0.15]
    if len(words) > 3 and rng.random() < 0.5:
      words[1], words[2] = words[2], words[1]
    cands.append(" ".join(words))
  gts = {i: [" ".join(split_words(x)) for x in r] for i, r in enumerate(refs)}
  res = {i: [c] for i, c in enumerate(cands)}
  coco_bleu, _ = bleu_mod.Bleu(4).compute_score(gts, res, verbose=0)
  coco_cider, coco_per_image = cider_mod.Cider().compute_score(gts, res)
  ours = captioning.bleu(cands, refs)
  np.testing.assert_allclose([ours[f"bleu{n}"] for n in range(1, 5)], coco_bleu, rtol=1e-6)
  np.testing.assert_allclose(captioning.cider_d(cands, refs), coco_cider, rtol=1e-6)
  np.testing.assert_allclose(captioning.cider_d_per_image(cands, refs), coco_per_image,
                             rtol=1e-6, atol=1e-9)


# ---------------------------------------------------------------------------------- model


def _captioner(**kwargs) -> Captioner:
  fields = dict(backbone="simple_cnn", feature="conv2", vocab_size=11, embed_dim=8,
                hidden_dim=16, attention_dim=8)
  return Captioner(**{**fields, **kwargs})


@pytest.mark.parametrize("backbone,feature,attention,grid", [
    ("simple_cnn", "conv2", True, 8 * 8),
    ("simple_cnn", "conv2", False, None),  # Grid mean-pooled.
    ("simple_cnn", "hidden", False, None),  # Already pooled.
    ("resnet20", "stage3", True, 8 * 8),  # BatchNorm backbone.
])
def test_captioner_shapes(backbone, feature, attention, grid):
  model = _captioner(backbone=backbone, feature=feature, attention=attention)
  images = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
  tokens = jax.ShapeDtypeStruct((2, 5), jnp.int32)
  variables = jax.eval_shape(model.init, _key(0), images, tokens)
  logits, aux = jax.eval_shape(
      functools.partial(model.apply, train=True, mutable=["batch_stats"],
                        rngs={"dropout": _key(1)}), variables, images, tokens)[0]
  assert logits.shape == (2, 5, 11) and logits.dtype == jnp.float32
  if attention:
    assert aux["attention"].shape == (2, 5, grid)
  else:
    assert aux == {}


def test_model_kwargs_that_are_no_captioner_field_configure_the_backbone():
  config = config_lib.base_config()
  config.task = "captioning"
  config.model.name = "simple_cnn"
  config.model.kwargs.features = [8, 16, 24]  # SimpleCNN's (a list, as from the command line).
  config.model.kwargs.feature = "conv3"
  config.model.kwargs.hidden_dim = 32
  task = dataclasses.replace(tasks.get_task(config), vocab=Vocabulary.build(["a red circle"]))
  model = task.build_model(config, builder=None)
  assert model.hidden_dim == 32 and dict(model.backbone_kwargs) == {"features": (8, 16, 24)}
  _, aux = jax.eval_shape(model.apply, jax.eval_shape(
      model.init, _key(0), *[jax.ShapeDtypeStruct(x.shape, x.dtype)
                             for x in task.init_inputs((32, 32, 3))]),
      *task.init_inputs((32, 32, 3)))
  assert aux["attention"].shape == (1, task.max_length - 1, 4 * 4)  # conv3 at 32 px: 4x4.


def _param_shapes(variables) -> dict[str, tuple[int, ...]]:
  return {"/".join(k.key for k in path): leaf.shape
          for path, leaf in jax.tree_util.tree_leaves_with_path(variables["params"])}


def test_captioner_backbone_is_headless_unless_old_parameters_need_its_classifier():
  images = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  tokens = jax.ShapeDtypeStruct((1, 5), jnp.int32)
  shapes = _param_shapes(jax.eval_shape(_captioner().init, _key(0), images, tokens))
  decoder = {  # Next to `encoder`, as before the decoder was a module of its own.
      "init_h/kernel": (64, 16), "init_h/bias": (16,), "init_c/kernel": (64, 16),
      "init_c/bias": (16,), "embed/embedding": (11, 8),
      "att_keys/kernel": (66, 8), "att_keys/bias": (8,), "att_query/kernel": (16, 8),
      "att_query/bias": (8,), "att_score/kernel": (8, 1), "att_score/bias": (1,),
      "att_gate/kernel": (16, 1), "att_gate/bias": (1,), "head/kernel": (16 + 66, 11),
      "head/bias": (11,)}
  for gate in ("i", "f", "g", "o"):
    decoder |= {f"cell/i{gate}/kernel": (8 + 66, 16), f"cell/h{gate}/kernel": (16, 16),
                f"cell/h{gate}/bias": (16,)}
  encoder = {"encoder/conv1/kernel": (3, 3, 3, 32), "encoder/conv1/bias": (32,),
             "encoder/conv2/kernel": (3, 3, 32, 64), "encoder/conv2/bias": (64,),
             "encoder/hidden/kernel": (8 * 8 * 64, 128), "encoder/hidden/bias": (128,)}
  assert shapes == encoder | decoder  # No `encoder/head`: the classifier is not built.
  # backbone_classes=1 gives the tree captioners had before, with the unused classifier, which
  # the shipped captioning configs keep so that their checkpoints load.
  old = _param_shapes(jax.eval_shape(_captioner(backbone_classes=1).init, _key(0), images, tokens))
  assert old == shapes | {"encoder/head/kernel": (128, 1), "encoder/head/bias": (1,)}
  for name in ("shapes_captioning", "fashion_scenes_captioning", "coco_captioning"):
    assert shipped.load_config(name).model.kwargs.backbone_classes == 1


def test_caption_decoder_on_any_vector_or_grid():
  rng = np.random.default_rng(0)
  tokens = jnp.asarray(rng.integers(0, 11, (2, 5)), jnp.int32)
  fields = dict(vocab_size=11, embed_dim=8, hidden_dim=16, attention_dim=8)
  grid = jnp.asarray(rng.normal(size=(2, 3, 4, 64)), jnp.float32)  # (B, H, W, C)
  decoder = CaptionDecoder(**fields)
  variables = jax.jit(decoder.init)(_key(0), grid, tokens)
  logits, aux = jax.jit(decoder.apply)(variables, grid, tokens)
  assert logits.shape == (2, 5, 11) and aux["attention"].shape == (2, 5, 12)
  # The captioner's parameters are its encoder's plus exactly a decoder's on that feature.
  captioner = jax.eval_shape(_captioner().init, _key(0),
                             jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32), tokens)
  assert _param_shapes(variables) == {k: v for k, v in _param_shapes(captioner).items()
                                      if not k.startswith("encoder/")}
  # Decoding drives the decoder alone too (its `encode` starts from the features).
  out, _, maps = decoding.greedy_decode(variables, decoder, grid, bos_id=1, eos_id=2,
                                        max_length=4)
  assert out.shape == (2, 4) and maps.shape == (2, 4, 12)
  vector = jnp.asarray(rng.normal(size=(2, 10)), jnp.float32)  # (B, D): Show and Tell.
  show_and_tell = CaptionDecoder(**fields, attention=False)
  logits, aux = jax.eval_shape(show_and_tell.init_with_output, _key(0), vector, tokens)[0]
  assert logits.shape == (2, 5, 11) and aux == {}
  with pytest.raises(ValueError, match="grid"):
    jax.eval_shape(decoder.init, _key(0), vector, tokens)


@pytest.mark.parametrize("feature, attention", [("stage1", True), ("pre_logits", False)])
def test_captioner_trains_on_a_user_backbone(feature, attention):
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(2, 16, 16, 3)), jnp.float32)
  tokens = jnp.asarray(rng.integers(1, 11, (2, 5)), jnp.int32)
  model = _captioner(backbone=functools.partial(UserBackbone, num_stages=1), feature=feature,
                     attention=attention)
  params = jax.jit(model.init)(_key(0), images, tokens[:, :-1])["params"]
  assert set(params["encoder"]) == {"conv1"}

  @jax.jit
  def loss_and_grads(params):
    def loss_fn(params):
      logits, _ = model.apply({"params": params}, images, tokens[:, :-1])
      return caption_loss(logits, tokens[:, 1:])[0]
    return jax.value_and_grad(loss_fn)(params)

  loss, grads = loss_and_grads(params)
  assert np.isfinite(loss)
  dead = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(g) != 0)]
  assert not dead, dead


def test_captioner_rejects_pooled_feature_for_attention():
  model = _captioner(feature="hidden", attention=True)
  with pytest.raises(ValueError, match="grid"):
    jax.eval_shape(model.init, _key(0), jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32),
                   jax.ShapeDtypeStruct((1, 3), jnp.int32))


def test_caption_loss_ignores_pads():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 4, 7)).astype(np.float32)
  targets = np.array([[5, 6, 2, 0], [4, 2, 0, 0]])
  loss, (nll_sum, count) = caption_loss(jnp.asarray(logits), jnp.asarray(targets), pad_id=0)
  log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  real = [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1)]
  expected = -sum(log_probs[b, t, targets[b, t]] for b, t in real)
  assert float(count) == 5
  np.testing.assert_allclose(nll_sum, expected, rtol=1e-5)
  np.testing.assert_allclose(loss, expected / 5, rtol=1e-5)
  # Anything at pad positions changes nothing.
  noisy = logits.copy()
  noisy[targets == 0] += 100 * rng.normal(size=(3, 7)).astype(np.float32)
  loss2, _ = caption_loss(jnp.asarray(noisy), jnp.asarray(targets), pad_id=0)
  np.testing.assert_allclose(loss2, loss, rtol=1e-6)


def test_attention_penalty_is_zero_for_full_coverage():
  # T = N = 4 uniform maps: each location gets 4 * 1/4 = 1 in total -> (1 - 1)^2 = 0.
  uniform = jnp.full((1, 4, 4), 0.25)
  assert float(attention_penalty(uniform, jnp.ones((1, 4), jnp.int32))) == pytest.approx(0.0)
  # Padding steps do not count: 2 real steps -> coverage 1/2 each -> 4 * (1/2)^2 = 1.
  targets = jnp.array([[5, 2, 0, 0]])
  assert float(attention_penalty(uniform, targets)) == pytest.approx(1.0)


# ---------------------------------------------------------------------------------- decoding

PAD, BOS, EOS, X, Y = range(5)


def _table_step(table: dict[int, dict[int, float]]) -> decoding.StepFn:
  """A step function whose next-token probabilities depend only on the previous token."""
  probs = np.full((5, 5), 1e-6)
  for prev, row in table.items():
    for token, p in row.items():
      probs[prev, token] = p
  log_table = jnp.asarray(np.log(probs / probs.sum(1, keepdims=True)), jnp.float32)

  def step(carry, tokens):
    return carry + 1, log_table[tokens], {}

  return step


def _search(step, beam_size=None, alpha=0.0, max_length=6):
  if beam_size is None:
    tokens, score, _ = decoding.greedy_search(
        step, jnp.zeros((1,)), 1, bos_id=BOS, eos_id=EOS, max_length=max_length)
  else:
    tokens, score = decoding.beam_search(
        step, jnp.zeros((beam_size,)), 1, beam_size=beam_size, bos_id=BOS, eos_id=EOS,
        max_length=max_length, alpha=alpha)
  return np.asarray(tokens[0]).tolist(), float(score[0])


def test_beam_search_beats_greedy_on_a_trap():
  # Greedy takes X (0.6), but X ends with <eos> only 0.35 of the time: P = 0.21.
  # Y (0.4) is followed by <eos> 0.9 of the time: P = 0.36, which a beam of 2 finds.
  step = _table_step({BOS: {X: 0.6, Y: 0.4}, X: {EOS: 0.35, X: 0.33, Y: 0.32},
                      Y: {EOS: 0.9, X: 0.05, Y: 0.05}})
  tokens, score = _search(step)
  assert tokens == [X, EOS, PAD, PAD, PAD, PAD]
  assert score == pytest.approx(math.log(0.21), abs=1e-4)
  tokens, score = _search(step, beam_size=2)
  assert tokens == [Y, EOS, PAD, PAD, PAD, PAD]
  assert score == pytest.approx(math.log(0.36), abs=1e-4)
  beam_tokens, beam_score = _search(step, beam_size=1)
  assert beam_tokens == [X, EOS, PAD, PAD, PAD, PAD]
  assert beam_score == pytest.approx(math.log(0.21), abs=1e-4)


def test_beam_search_length_penalty_prefers_longer_captions():
  # "<eos>" right away: P = 0.55, |Y| = 1.  "X <eos>": P = 0.45 * 0.99 = 0.4455, |Y| = 2.
  # alpha = 0: log 0.55 = -0.598 > log 0.4455 = -0.808.
  # alpha = 3: lp(2) = (7/6)^3 = 1.588, -0.808 / 1.588 = -0.509 > -0.598 / lp(1) = -0.598.
  step = _table_step({BOS: {EOS: 0.55, X: 0.45}, X: {EOS: 0.99, X: 0.005, Y: 0.005}})
  tokens, score = _search(step, beam_size=2, alpha=0.0)
  assert tokens[:1] == [EOS] and score == pytest.approx(math.log(0.55), abs=1e-4)
  tokens, score = _search(step, beam_size=2, alpha=3.0)
  assert tokens[:2] == [X, EOS]
  assert score == pytest.approx(math.log(0.4455) / (7 / 6) ** 3, abs=1e-4)


def test_unfinished_hypotheses_fill_max_length():
  step = _table_step({BOS: {X: 1.0}, X: {X: 1.0}})
  assert _search(step, max_length=3)[0] == [X, X, X]
  assert _search(step, beam_size=2, max_length=3)[0] == [X, X, X]


@pytest.mark.parametrize("attention", [True, False])
def test_captioner_beam_of_one_equals_greedy(attention):
  model = _captioner(attention=attention)
  images = np.random.default_rng(0).normal(size=(3, 32, 32, 3)).astype(np.float32)
  variables = jax.jit(model.init)(_key(0), images[:1], jnp.ones((1, 2), jnp.int32))
  static = dict(model=model, bos_id=1, eos_id=2, max_length=7)
  tokens, log_probs, maps = jax.jit(functools.partial(decoding.greedy_decode, **static))(
      variables, images=images)
  assert tokens.shape == (3, 7) and log_probs.shape == (3,)
  assert (maps.shape == (3, 7, 64)) if attention else maps is None
  for alpha in (0.0, 0.7):
    beam = jax.jit(functools.partial(decoding.beam_decode, beam_size=1, alpha=alpha, **static))
    beam_tokens, scores = beam(variables, images=images)
    np.testing.assert_array_equal(beam_tokens, tokens)
    if alpha == 0:
      np.testing.assert_allclose(scores, log_probs, rtol=1e-5)
  wide_tokens, wide_scores = jax.jit(functools.partial(
      decoding.beam_decode, beam_size=3, **static))(variables, images=images)
  assert wide_tokens.shape == (3, 7)
  # A wider beam never finds a worse best hypothesis than greedy (alpha = 0).
  assert np.all(np.asarray(wide_scores) >= np.asarray(log_probs) - 1e-5)


# ---------------------------------------------------------------------------------- overfit


def test_attention_captioner_memorises_sixteen_scenes():
  start = time.time()
  scenes = [shapes_render.render_scene(np.random.default_rng(i), 32) for i in range(16)]
  captions = [s["caption"] for s in scenes]
  vocab = Vocabulary.build(captions)
  max_length = max(len(split_words(c)) for c in captions) + 2
  tokens = jnp.asarray(vocab.encode_batch(captions, max_length))  # (16, L)
  images = jnp.asarray(np.stack([s["image"] for s in scenes]), jnp.float32) / 255.0
  model = Captioner(backbone="simple_cnn", feature="conv2", vocab_size=len(vocab), embed_dim=32,
                    hidden_dim=128, attention_dim=32)
  params = jax.jit(model.init)(_key(0), images[:1], tokens[:1, :-1])["params"]
  tx = optax.adam(3e-3)

  @jax.jit
  def train_step(params, opt_state):
    def loss_fn(params):
      logits, _ = model.apply({"params": params}, images, tokens[:, :-1])  # (B, L-1, V)
      return caption_loss(logits, tokens[:, 1:], vocab.pad_id)[0]

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = tx.init(params)
  for _ in range(300):
    params, opt_state, loss = train_step(params, opt_state)
    if float(loss) < 0.02:
      break
  out, _, maps = decoding.greedy_decode(
      {"params": params}, model, images, vocab.bos_id, vocab.eos_id, max_length - 1)
  generated = [vocab.decode(t) for t in np.asarray(out)]
  scores = captioning.bleu(generated, [[c] for c in captions])
  assert scores["bleu4"] >= 0.9, (scores, generated[:4], captions[:4], float(loss))
  np.testing.assert_allclose(np.asarray(maps).sum(-1), 1.0, rtol=1e-5)
  print(f"memorised in {time.time() - start:.1f}s, loss {float(loss):.3f}, {scores}")


def test_captioning_task_trains_evaluates_and_resumes_through_the_loop(tmp_path,
                                                                       tiny_shapes_dir):
  """configs/shapes_captioning.py, smaller: vocabulary saved, BLEU/CIDEr/perplexity, pictures."""
  import json
  import os

  from vision_jax.train import loop

  c = shipped.load_config("shapes_captioning")
  c.dataset.name = "synthetic_shapes/tiny32"
  c.dataset.data_dir = tiny_shapes_dir
  c.dataset.prepare = False
  c.input.batch_size = c.input.eval_batch_size = 32
  c.model.kwargs.hidden_dim = 32
  c.model.kwargs.attention_dim = 16
  c.train.num_steps = 2
  c.train.progress_bar = False
  c.captioning.eval_examples = 40  # Two eval batches, the second padded.
  c.captioning.num_pictures = 2
  workdir = str(tmp_path / "run")
  result = loop.train_and_evaluate(c, workdir)
  for key in ("bleu1", "bleu4", "cider", "beam_bleu4", "beam_cider", "perplexity"):
    assert np.isfinite(result[key]), key
  assert 0.0 <= result["bleu4"] <= result["bleu1"] <= 1.0
  assert result["num_examples"] == 64 and result["perplexity"] >= 1.0
  vocab = json.load(open(os.path.join(workdir, "vocab.json")))["words"]
  assert {"circle", "left", "of"} <= set(vocab)
  assert os.listdir(os.path.join(workdir, "captions")) == ["step_0000002.png"]
  # Inference rebuilds the captioner through the workdir's task, with its saved vocabulary.
  from vision_jax import inference
  loaded = inference.load_for_inference(workdir)
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
  predicted = loaded.predict(images)
  assert len(predicted["caption"]) == len(predicted["beam_caption"]) == 2
  assert all(set(c.split()) <= set(vocab) for c in predicted["caption"])
  # Resuming reads the saved vocabulary (a changed min_count would otherwise change the ids).
  c.train.num_steps = 3
  c.captioning.min_count = 1000
  assert loop.train_and_evaluate(c, workdir)["step"] == 3
  assert json.load(open(os.path.join(workdir, "vocab.json")))["words"] == vocab


def test_coco_captions_config_runs_on_mock_data(tmp_path):
  """configs/coco_captioning.py as shipped, only tiny: nested caption feature, 5 references."""
  import tensorflow_datasets as tfds

  from vision_jax.train import loop

  c = shipped.load_config("coco_captioning")
  c.model.name = "simple_cnn"
  c.model.dtype = "float32"
  c.model.kwargs.update(feature="conv2", embed_dim=8, hidden_dim=16, attention_dim=8)
  c.input.image_size = 32
  c.input.batch_size = c.input.eval_batch_size = 8
  c.input.num_workers = 0
  c.captioning.min_count = 1
  c.captioning.beam_size = 1
  c.captioning.num_pictures = 1
  c.train.num_steps = 1
  c.train.progress_bar = False
  with tfds.testing.mock_data(num_examples=8):
    result = loop.train_and_evaluate(c, str(tmp_path))
  assert result["num_examples"] == 8 and np.isfinite(result["cider"])
