"""nwt_jax: NWT (arXiv 2106.04283) audio-to-video generation in JAX/Flax."""

__version__ = "0.1.0"
