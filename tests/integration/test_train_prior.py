"""The prior's trainer: presets, 1 vs 8 devices, exact resume, a smoke run with the controls."""

import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nwt_jax import presets
from nwt_jax import train
from nwt_jax.data import frame_bank
from nwt_jax.data import token_pipeline
from nwt_jax.training import audio_cells
from nwt_jax.training import checkpoint
from nwt_jax.training import prior as train_prior
from nwt_jax.training import restore
from nwt_jax.training import sharding
import token_fixtures
import toy

MESH_222 = dict(data=2, fsdp=2, model=2)
ONE_DEVICE = dict(data=1, fsdp=1, model=1)
# Tiny widths: the point is the wiring, not the model.
SMALL = dict(max_frames=4, d_model=32, num_heads=2, head_dim=16, mlp_dim=64, temporal_layers=1,
             spatial_layers=0, audio_layers=1, code_embed_dim=8, style_dim=16, style_hidden=32,
             depth_dim=32, depth_layers=1)


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
  root = tmp_path_factory.mktemp("tokens")
  token_fixtures.make_tokens(root)
  return str(root)


def _config(tokens, decoder="far", mesh=MESH_222, **train_fields):
  c = presets.load_config(f"configs/prior.py:tiny,{decoder}")
  c.mesh = mesh
  c.data.update(tokens_dir=tokens, batch_size=4, frames_per_example=4)
  c.prior.update(SMALL)
  c.optim.update(lr=3e-3, warmup_steps=2, decay_steps=100)
  c.loss.kl_anneal_steps = 10
  c.train.update(num_steps=20, log_every=1, eval_every=10, checkpoint_every=10, eval_batches=2,
                 eval_batch_size=4)
  c.train.update(train_fields)
  return c


def _train(config, workdir):
  """`train_and_evaluate` on all 8 devices: (the final state on host, {step: {tag: value}} of
  the TensorBoard events in `workdir`)."""
  state = train_prior.train_and_evaluate(config, str(workdir))
  return jax.device_get(state), toy.scalars(workdir)


@pytest.mark.parametrize("arg", ["tiny,far", "tiny,mar", "base", "base,mar", "paper,far",
                                 "paper,mar", None])
def test_presets_parse(arg):
  c = presets.load_config("configs/prior.py" + (f":{arg}" if arg else ""))
  assert c.model == "prior" and train.trainer(c.model) is train_prior
  assert c.prior.decoder == ("mar" if arg and "mar" in arg else "far")
  assert c.prior.style_dim >= 16 and c.data.source == "tokens"
  assert c.data.frames_per_example <= c.prior.max_frames
  assert c.optim.warmup_steps < c.optim.decay_steps


def test_unknown_or_conflicting_presets_error():
  with pytest.raises(ValueError, match="Unknown config preset 'huge'"):
    presets.load_config("configs/prior.py:huge,far")
  with pytest.raises(ValueError, match="both set 'decoder'"):
    presets.load_config("configs/prior.py:tiny,far,mar")


@pytest.fixture(scope="module")
def reference(tokens, tmp_path_factory):
  """20 uninterrupted FAR steps on the 2x2x2 mesh, evaluating at 10 and 20."""
  workdir = tmp_path_factory.mktemp("reference")
  state, scalars = _train(_config(tokens), workdir)
  return state, scalars, workdir


def test_smoke_loss_falls_checkpoint_exists_and_controls_are_logged(reference, tokens):
  state, scalars, workdir = reference
  assert int(state.step) == 20
  first = np.mean([scalars[s]["train/loss"] for s in (1, 2)])
  last = np.mean([scalars[s]["train/loss"] for s in (19, 20)])
  assert last < first - 0.1, (first, last)
  with checkpoint.Checkpointer(workdir, _config("unused")) as ckpt:
    assert ckpt.latest_step() == 20
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "20"))
  metrics = scalars[20]
  for key in ("nll", "accuracy", "kl", "nll_other_audio", "audio_gap", "nll_other_z",
              "style_gap", "mouth_nll", "mouth_nll_other_audio", "mouth_audio_gap"):
    assert np.isfinite(metrics[f"eval/{key}"]), key
  assert metrics["eval/nll"] < np.log(16)  # below chance after 20 steps
  # The mean probability of the new code where a code changes (a mean, not a sum: in (0, 1)).
  for key in ("change_p", "mouth_change_p"):
    assert 0 < metrics[f"eval/{key}"] < 1, (key, metrics[f"eval/{key}"])
  np.testing.assert_allclose(metrics["eval/audio_gap"],  # float32 event values
                             metrics["eval/nll_other_audio"] - metrics["eval/nll"], atol=1e-6)
  assert scalars[20]["train/nonfinite_skips"] == 0
  # What generation loads: the same parameters and the model the manifest describes.
  model, params, config = restore.prior(str(workdir))
  assert config.model == "prior" and model.decoder == "far" and model.d_model == SMALL["d_model"]
  assert (model.grid, model.code_heads, model.num_codes) == ((4, 2), 2, 16)
  # The hidden audio cells found from the tokens before training travel with the checkpoint.
  assert config.train.hide_audio_cells > 0 and config.data.anchor_frame == "distant"
  assert model.hidden_cells and model.hidden_cells == audio_cells.find(
      tokens, config.train.hide_audio_cells)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(state.params)):
    np.testing.assert_array_equal(a, b)
  # The frame bank a FAR prior's first frames come from: every training frame (96 < the cap).
  train_clips = token_pipeline.TokenSource(tokens, "train")
  np.testing.assert_array_equal(frame_bank.load(str(workdir)), np.concatenate(
      [train_clips.clip(i)["codes"] for i in range(len(train_clips))]))


def test_ten_steps_save_restore_ten_steps_equals_twenty_bitwise(tokens, reference, tmp_path,
                                                               caplog):
  first, _ = _train(_config(tokens, num_steps=10), tmp_path)
  assert int(first.step) == 10
  with caplog.at_level("INFO"):
    resumed, scalars = _train(_config(tokens), tmp_path)
  # It resumed at step 10 with the data iterator at batch 10, and trained steps 11-20 only.
  assert re.search(r"Resumed from \S+ at step 10 \(data position \{'step': 10\}\)", caplog.text)
  assert len(re.findall(r"step \d+/20 \(", caplog.text)) == 10
  jax.tree.map(np.testing.assert_array_equal, resumed, reference[0])
  np.testing.assert_array_equal([scalars[s]["train/loss"] for s in range(11, 21)],
                                [reference[1][s]["train/loss"] for s in range(11, 21)])


@pytest.mark.parametrize("decoder", ["far", "mar"])
def test_one_and_eight_devices_give_the_same_losses(tokens, decoder):
  """The same 5 batches through `setup(...)`'s step on 1 device and on the 2 x 2 x 2 mesh."""
  config = _config(tokens, decoder)
  manifest = token_pipeline.read_manifest(tokens)
  with token_pipeline.create_iterator(config.data, "train", seed=config.seed, root=tokens) as it:
    batches = [next(it) for _ in range(5)]
  losses = {}
  for mesh, devices in ((ONE_DEVICE, jax.devices()[:1]), (MESH_222, jax.devices())):
    config.mesh = mesh
    s = train_prior.setup(config, manifest, devices)
    state, losses[len(devices)] = s.init_state(), []
    for batch in batches:
      state, metrics = s.train_step(state, sharding.put_batch(batch, s.mesh))
      losses[len(devices)].append(float(metrics["loss"]))
  np.testing.assert_allclose(losses[1], losses[8], rtol=2e-5)
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
