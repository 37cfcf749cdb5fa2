"""Array operations shared by models and tasks that are no layers: box geometry and NMS
(`boxes`), RoIAlign (`roi_align`), mixup / CutMix of a batch (`mixing`). All are jax.numpy with
static shapes, so they run inside `jax.jit` and `jax.vmap`."""
