"""Looking inside trained models: first-layer filters, feature maps, saliency and Grad-CAM.

`activations` names a model's intermediate activations, `attribution` computes saliency and
Grad-CAM maps from them, `model_pictures` draws them. Command line (which also runs the course
notes' demonstrations from `vision_jax.course`): `python -m vision_jax.viz --help`. Each task
draws its own eval pictures (`vision_jax.tasks.<task>.pictures`); training curves are drawn by
`vision_jax.train.curves`.
"""
