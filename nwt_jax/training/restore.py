"""Trained models, frozen, for the stages after them: the dVAE for tokenization and generation, the
prior for generation. Each returns (model, params, the config saved with the checkpoint)."""

import functools
import json
from typing import Any

from etils import epath
import flax.linen as nn
import jax
import ml_collections

from nwt_jax import errors
from nwt_jax.models import dvae as dvae_lib
from nwt_jax.models import prior as prior_lib
from nwt_jax.training import checkpoint
from nwt_jax.training import dvae as train_dvae
from nwt_jax.training import prior as train_prior


def dvae(workdir: str, step: int | None = None
         ) -> tuple[dvae_lib.DVAE, Any, ml_collections.ConfigDict]:
  """(model, generator params, config) of the dVAE trained in `workdir`, at `step` (default:
  the latest checkpoint). The config is the one saved with the checkpoint; params are float32
  arrays on the default device. Use with `model.apply({'params': params}, frames,
  method=model.encode)` and `method=model.decode`."""

  return train_dvae.load_frozen(workdir, step)


def prior(workdir: str, step: int | None = None
          ) -> tuple[prior_lib.Prior, Any, ml_collections.ConfigDict]:
  """(model, params, config) of the prior trained in `workdir` (latest checkpoint by default),
  for generation. The code layout comes from the tokens' manifest the run copied into its
  workdir."""
  path = epath.Path(workdir) / train_prior.WORKDIR_MANIFEST
  if not path.exists():
    raise errors.MissingInput(
        f"No {train_prior.WORKDIR_MANIFEST} in {workdir}: not a prior workdir.")
  manifest = json.loads(path.read_text())

  def abstract_state(config):
    if "end_lr_ratio" in config.optim:  # its name in runs before the configs shared one
      config.optim.end_lr_factor = config.optim.end_lr_ratio
    model, tx = train_prior.make_model(config, manifest), train_prior.make_optimizer(config.optim)
    example = train_prior.example_batch(manifest, train_prior.window_frames(config, manifest))
    init = functools.partial(train_prior.create_train_state, model, tx, example)
    return jax.eval_shape(lambda k: nn.unbox(init(k)), jax.random.key(0))

  state, config = checkpoint.restore_frozen(workdir, "prior", abstract_state, step)
  return train_prior.make_model(config, manifest), state.params, config
