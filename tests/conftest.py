import os

# Eight fake CPU devices, so that multi-device code paths run in tests. XLA reads this flag once,
# when jax initialises its backend, hence it is set here before any test module imports jax.
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
