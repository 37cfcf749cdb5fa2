"""Pictures people look at: training curves, and what the network sees.

Course-notes pictures: `pixels` (images are numbers), `convolution` (by hand, step by step),
`filters` (sharpen, edge detect), `max_pool`, `x_vs_o` (a tiny CNN learns the notes' X filters).
Trained-model pictures (`model_pictures`): first-layer filters, feature maps, saliency and
Grad-CAM (`attribution`, on activations named by `activations`). Command line:
`python -m vision_jax.viz --help`. Tasks draw their eval pictures after every eval:
`segmentation` (image | truth | prediction), `captions` (captions and attention maps),
`detection` (ground-truth and predicted boxes).
"""
