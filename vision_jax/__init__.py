"""vision_jax: a JAX/Flax research codebase for deep learning in computer vision."""
