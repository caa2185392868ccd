"""selfrl_jax: language models that improve themselves with RL, on one functional JAX core."""

__version__ = "0.1.0"
