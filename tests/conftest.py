import os

os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

# Silent rank broadcasting hides shape bugs (equinox's conftest does the same).
jax.config.update("jax_numpy_rank_promotion", "raise")
