"""The models' records (vision_jax/models/info.py) and what is generated from them: docs/zoo.md's
table, the ImageNet recipes, `tools.summary`'s default input; a model without a record still works
everywhere."""

import os

import pytest

from vision_jax import models, recipes
from vision_jax.config import base_config
from vision_jax.models import googlenet
from vision_jax.tools import summary

import shipped

zoo_table = shipped.load_module(os.path.join("experiments", "zoo_table.py"))
_REGENERATE = "regenerate it with `python experiments/zoo_table.py --write` and commit docs/zoo.md"


def test_every_built_in_model_has_one_record_in_registry_order():
  assert list(models.MODEL_INFO) == list(models.MODELS)
  for name, info in models.MODEL_INFO.items():
    assert info.name == name
    height, width, channels = info.input_size
    assert height == width > 0 and len(info.mean) == len(info.std) == channels, name
    assert info.num_classes > 1, name


def test_records_are_frozen():
  with pytest.raises(AttributeError):
    models.model_info("resnet50").family = "vgg"  # type: ignore[misc]


def _stored_rows() -> list[str]:
  with open(zoo_table.DOCS) as f:
    return zoo_table.table_in(f.read()).splitlines()


def test_docs_zoo_table_has_every_model_with_its_record_and_parameter_count():
  """Everything but the FLOPs (which need compiling every model: the slow test below)."""
  rows = _stored_rows()
  assert rows[:2] == summary.ZOO_TABLE_HEADER.splitlines(), (
      f"docs/zoo.md's table has another header than the code's: {_REGENERATE}.")
  stored = {row.split("|")[1].strip(" `"): row for row in rows[2:]}
  assert list(stored) == list(models.MODEL_INFO), f"docs/zoo.md lists other models: {_REGENERATE}."
  for name, info in models.MODEL_INFO.items():
    height, width, channels = info.input_size
    stats = summary.model_params(name, height, channels, info.num_classes)
    cells = [cell.strip() for cell in stored[name].split("|")[2:-1]]
    want = [f"{height}×{width}×{channels}", str(info.num_classes), f"{stats:,}", cells[3],
            info.ilsvrc]
    assert cells == want, f"docs/zoo.md's row of {name} is out of date: {_REGENERATE}."


@pytest.mark.slow
def test_docs_zoo_table_equals_what_the_code_renders_now():
  assert "\n".join(_stored_rows()) == summary.zoo_table(), (
      f"docs/zoo.md's table differs from what the code gives now: {_REGENERATE}.")


def test_write_replaces_only_the_table():
  text = f"intro\n{zoo_table.BEGIN}\nold\n{zoo_table.END}\noutro\n"
  new = zoo_table.with_table(text, "| a |\n| b |")
  assert new == f"intro\n{zoo_table.BEGIN}\n| a |\n| b |\n{zoo_table.END}\noutro\n"
  assert zoo_table.table_in(new) == "| a |\n| b |"
  with pytest.raises(ValueError, match="lost the lines"):
    zoo_table.table_in("no markers")


def test_googlenet_undoes_the_imagenet_normalisation_of_its_record():
  info = models.model_info("googlenet")
  assert (googlenet.IMAGENET_MEAN, googlenet.IMAGENET_STD) == (info.mean, info.std)


@pytest.mark.parametrize("model, family", [
    ("resnet50", "resnet"), ("resnet20", "resnet"), ("vgg16_bn", "vgg"), ("zfnet", "zfnet"),
    # A model without a record takes the recipe of the family its name starts with, as before.
    ("resnet_user", "resnet")])
def test_imagenet_recipe_follows_the_family(model, family):
  c = base_config()
  recipes.large_scale_classification(c, model, num_train_examples=1000)
  batch_size, lr_per_256, _, _ = recipes._FAMILY_RECIPES[family]  # pylint: disable=protected-access
  assert (c.input.batch_size, c.optim.learning_rate) == (batch_size, lr_per_256 * batch_size / 256)
  assert (c.input.mean, c.input.std) == (models.info.IMAGENET_MEAN, models.info.IMAGENET_STD)


@pytest.mark.parametrize("model, match", [
    ("wrn28_10", r"'wrn28_10' \(family 'wide_resnet'\).*valid choices: \['resnet20'"),
    ("my_net", r"'my_net'; valid choices:.*starts with a family"),
])
def test_models_without_an_imagenet_recipe_are_refused(model, match):
  with pytest.raises(ValueError, match=match):
    recipes.large_scale_classification(base_config(), model, num_train_examples=1000)


def test_summary_defaults_to_the_usual_input_of_the_record():
  assert summary.usual_input("resnet20") == (32, 3, 10)
  assert summary.usual_input("simple_cnn") == (28, 1, 10)
  assert summary.usual_input("googlenet") == (224, 3, 1000)
  assert summary.usual_input("a_users_model") == (224, 3, 1000)  # No record: as before.
