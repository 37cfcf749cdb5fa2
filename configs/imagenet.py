"""ILSVRC-2012 (ImageNet-1k) classification with any zoo model; top-1 and top-5 error.

    python -m vision_jax.main --config=configs/imagenet.py:resnet50 --workdir=runs/in1k_rn50 \
        --config.dataset.manual_dir=/path/to/ILSVRC2012  # ILSVRC2012_img_{train,val}.tar

TFDS cannot download ImageNet: put the two tar files of image-net.org into `manual_dir`; the
first run converts them into array_record files once (needs TensorFlow; or run
`python -m vision_jax.data.prepare imagenet2012 --manual_dir=...` on a CPU machine and copy the
files). The argument after ':' is the model: resnet18..152, alexnet, zfnet, vgg11..19(_bn),
googlenet, each with its family's recipe (`vision_jax/recipes.py`).
"""

from vision_jax import recipes
from vision_jax.config import base_config


def get_config(model: str = "resnet50"):
  c = base_config()
  c.dataset.name = "imagenet2012"
  c.dataset.eval_split = "validation"
  recipes.large_scale_classification(c, model, num_train_examples=1_281_167)
  return c
