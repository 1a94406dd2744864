"""The prior's trainer: presets, 1 vs 8 devices, exact resume, a smoke run with the controls."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import prior as prior_config
from nwt_jax.training import checkpoint
from nwt_jax.data import frame_bank
from nwt_jax.data import token_pipeline
from nwt_jax import train
from nwt_jax.training import prior as train_prior
import token_fixtures
import toy
from nwt_jax.training import restore

MESH_222 = dict(data=2, fsdp=2, model=2)
ONE_DEVICE = dict(data=1, fsdp=1, model=1)
# Tiny widths: the point is the wiring, not the model.
SMALL = dict(max_frames=4, d_model=32, num_heads=2, head_dim=16, mlp_dim=64, temporal_layers=1,
             spatial_layers=0, audio_layers=1, code_embed_dim=8, style_dim=16, style_hidden=32,
             depth_dim=32, depth_layers=1)
# XLA's CPU compiler at its lowest effort: these steps run a few times, compile time dominates.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True}


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
  root = tmp_path_factory.mktemp("tokens")
  token_fixtures.make_tokens(root)
  return str(root)


def _config(tokens, decoder="far", mesh=MESH_222, **train_fields):
  c = prior_config.get_config(f"tiny,{decoder}")
  c.mesh = mesh
  c.data.update(tokens_dir=tokens, batch_size=4, frames_per_example=4)
  c.prior.update(SMALL)
  c.optim.update(lr=3e-3, warmup_steps=2, decay_steps=100)
  c.loss.kl_anneal_steps = 10
  c.train.update(num_steps=20, log_every=1, eval_every=10, checkpoint_every=10, eval_batches=2,
                 eval_batch_size=4)
  c.train.update(train_fields)
  return c


def _train(config, workdir, **kwargs):
  writer = toy.RecordingWriter()
  devices = jax.devices()[:config.mesh.data * config.mesh.fsdp * config.mesh.model]
  state = train_prior.train(config, str(workdir), devices=devices, writer=writer,
                            compiler_options=FAST_COMPILE, **kwargs)
  return jax.device_get(state), writer


@pytest.mark.parametrize("arg", ["tiny,far", "tiny,mar", "base", "base,mar", "paper,far",
                                 "paper,mar", None])
def test_presets_parse(arg):
  c = prior_config.get_config(arg)
  assert c.model == "prior" and train.trainer(c.model) is train_prior
  assert c.prior.decoder == ("mar" if arg and "mar" in arg else "far")
  assert c.prior.style_dim >= 16 and c.data.source == "tokens"
  assert c.data.frames_per_example <= c.prior.max_frames
  assert c.optim.warmup_steps < c.optim.decay_steps


def test_unknown_or_conflicting_presets_error():
  with pytest.raises(ValueError, match="Unknown config preset 'huge'"):
    prior_config.get_config("huge,far")
  with pytest.raises(ValueError, match="both set 'decoder'"):
    prior_config.get_config("tiny,far,mar")


@pytest.fixture(scope="module")
def reference(tokens, tmp_path_factory):
  """20 uninterrupted FAR steps on the 2x2x2 mesh, evaluating at 10 and 20."""
  workdir = tmp_path_factory.mktemp("reference")
  state, writer = _train(_config(tokens), workdir)
  return state, writer, workdir


def test_smoke_loss_falls_checkpoint_exists_and_controls_are_logged(reference, tokens):
  state, writer, workdir = reference
  assert int(state.step) == 20
  first = np.mean([writer.scalars[s]["train/loss"] for s in (1, 2)])
  last = np.mean([writer.scalars[s]["train/loss"] for s in (19, 20)])
  assert last < first - 0.1, (first, last)
  with checkpoint.Checkpointer(workdir, _config("unused")) as ckpt:
    assert ckpt.latest_step() == 20
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "20"))
  metrics = writer.scalars[20]
  for key in ("nll", "accuracy", "kl", "nll_other_audio", "audio_gap", "nll_other_z",
              "style_gap", "mouth_nll", "mouth_nll_other_audio", "mouth_audio_gap"):
    assert np.isfinite(metrics[f"eval/{key}"]), key
  assert metrics["eval/nll"] < np.log(16)  # below chance after 20 steps
  # The mean probability of the new code where a code changes (a mean, not a sum: in (0, 1)).
  for key in ("change_p", "mouth_change_p"):
    assert 0 < metrics[f"eval/{key}"] < 1, (key, metrics[f"eval/{key}"])
  np.testing.assert_allclose(metrics["eval/audio_gap"],
                             metrics["eval/nll_other_audio"] - metrics["eval/nll"], rtol=1e-6)
  assert writer.scalars[20]["train/nonfinite_skips"] == 0
  # What generation loads: the same parameters and the model the manifest describes.
  model, params, config = restore.prior(str(workdir))
  assert config.model == "prior" and model.decoder == "far" and model.d_model == SMALL["d_model"]
  assert (model.grid, model.code_heads, model.num_codes) == ((4, 2), 2, 16)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)
  # The frame bank a FAR prior's first frames come from: every training frame (96 < the cap).
  train_clips = token_pipeline.TokenSource(tokens, "train")
  np.testing.assert_array_equal(frame_bank.load(str(workdir)), np.concatenate(
      [train_clips.clip(i)["codes"] for i in range(len(train_clips))]))


def test_ten_steps_save_restore_ten_steps_equals_twenty_bitwise(tokens, reference, tmp_path):
  first, _ = _train(_config(tokens, num_steps=10), tmp_path)
  assert int(first.step) == 10
  batches = []
  resumed, _ = _train(_config(tokens), tmp_path, hook=batches.append)
  assert batches == list(range(10, 20))  # it resumed at batch 10
  jax.tree.map(np.testing.assert_array_equal, resumed, reference[0])


@pytest.mark.parametrize("decoder", ["far", "mar"])
def test_one_and_eight_devices_give_the_same_losses(tokens, tmp_path, decoder):
  losses = {}
  for mesh in (ONE_DEVICE, MESH_222):
    config = _config(tokens, decoder, mesh, num_steps=5, eval_every=0, checkpoint_every=0)
    _, writer = _train(config, tmp_path / str(mesh["data"]), with_eval=False)
    losses[mesh["data"]] = [writer.scalars[s]["train/loss"] for s in range(1, 6)]
  np.testing.assert_allclose(losses[1], losses[2], rtol=2e-5)
  assert losses[1][-1] < losses[1][0]



def test_gap_z_scores_are_paired_over_windows():
  """Per-window gaps 1, 2, 3, 4 (a window's gap: the mean over its weighted codes) -> mean 2.5,
  sample sd 1.291, z = 2.5 / (1.291 / 2); a window without weighted codes is left out."""
  nll = jnp.zeros((5, 2))
  control = jnp.array([[1.0, 1.0], [2.0, 2.0], [3.0, 9.0], [4.0, 4.0], [7.0, 7.0]])
  weight = jnp.array([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
  sums = {k: float(v) for k, v in train_prior._paired_sums("gap", control, nll, weight).items()}
  assert sums["gap_windows"] == 4 and sums["gap_sum"] == 10.0 and sums["gap_sq"] == 30.0
  want = 2.5 / (np.std([1, 2, 3, 4], ddof=1) / 2)
  np.testing.assert_allclose(train_prior._z_score(sums, "gap"), want, rtol=1e-6)
