"""Tokens for the prior's tests: a randomly initialised tiny dVAE encodes a few small synthetic
clips (32x16 frames -> a 4x2 grid x 2 heads, 16 codes), as `nwt_jax.tokenize` does for a trained
one. Shared by test_tokenize.py and test_train_prior.py."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from nwt_jax.models import dvae
from nwt_jax.training import tokens

DVAE = dict(channels=(8, 8, 8, 8), res_blocks=(1, 0, 0, 0), dim=16, num_codes=16, heads=2,
            num_episodes=8, episode_dim=8, norm_groups=4)
CLIPS = dict(source="synthetic_inline", num_frames=8, height=32, width=16, num_train_clips=12,
             num_validation_clips=8, num_episodes=4, num_workers=2)
CLIPS_PER_SHARD = 3  # train: 4 shards of 3; validation: 3 shards (3, 3, 2)


@functools.lru_cache(maxsize=None)
def model_and_params():
  model = dvae.DVAE(**DVAE)
  frames = jnp.zeros((1, CLIPS["height"], CLIPS["width"], 3), jnp.uint8)
  params = jax.jit(lambda k: model.init(k, frames, jnp.zeros((1,), jnp.int32), train=False))(
      jax.random.key(0))["params"]
  return model, nn.unbox(params)


def data_config():
  return tokens.clip_data_config(CLIPS)


def make_tokens(root, **kwargs):
  """Tokenizes the fixture clips into `root`; returns the shard paths written."""
  model, params = model_and_params()
  kwargs.setdefault("clips_per_shard", CLIPS_PER_SHARD)
  return tokens.tokenize(model, params, data_config(), str(root),
                           dvae_info={"workdir": "random-init", "step": 0, "config": DVAE},
                           encode_batch=16, **kwargs)
