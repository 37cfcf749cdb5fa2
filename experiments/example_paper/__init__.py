"""An example paper's own package: a new backbone, a head on any backbone, and a new task.

Nothing here edits `vision_jax`: importing the package registers its model (`paper_net`), its
head and its task (`shape_and_centre`) in the registries, and its config names the package in
`imports`, so every entry point (training, resume, `viz`, `summary`, inference) imports it first:

    cd experiments   # Or any directory that holds `example_paper/` (or put it on PYTHONPATH).
    python -m vision_jax.main --config=example_paper/config.py --workdir=/tmp/paper
    python -m vision_jax.viz feature_maps --workdir=/tmp/paper --indices=0
    python -m vision_jax.tools.summary paper_net --imports=example_paper --image_size=32

The task: classify the largest shape of a `synthetic_shapes` scene AND point at its centre.
The centre is a `points` feature, so flips and crops move it with the image.
"""

from example_paper import models, tasks  # Registers `paper_net` and `shape_and_centre`.

__all__ = ["models", "tasks"]
