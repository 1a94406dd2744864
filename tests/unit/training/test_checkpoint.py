"""Checkpoints: any-mesh restore, config compatibility, retention, unfinished saves."""

import shutil

import jax
import numpy as np
import pytest

from nwt_jax.training import checkpoint
import toy

MESH_222 = dict(data=2, fsdp=2, model=2)


def _state_and_shardings(config, devices=None):
  _, init_state, shardings, _, _ = toy.setup(config, devices)
  return init_state, shardings


def _assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(a), jax.device_get(b))


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
  """A checkpoint at step 7 written from the 2x2x2 mesh, and the host copy of its state."""
  workdir = tmp_path_factory.mktemp("ckpt")
  config = toy.make_config()
  config.mesh = MESH_222
  init_state, _ = _state_and_shardings(config)
  state = init_state()
  # Make every leaf distinct from a fresh init, so a restore that silently re-inits would fail.
  state = jax.tree.map(lambda x: x + 7, state)
  with checkpoint.Checkpointer(workdir, config, max_to_keep=2) as ckpt:
    ckpt.save(7, state, {"step": 7})
  return workdir, config, jax.device_get(state)


@pytest.mark.parametrize("mesh, num_devices", [
    (dict(data=1, fsdp=1, model=1), 1),
    (dict(data=1, fsdp=4, model=2), 8),
    (dict(data=2, fsdp=1, model=2), 4),
])
def test_checkpoint_from_8_devices_restores_onto_other_meshes(saved, mesh, num_devices):
  workdir, config, expected = saved
  config = config.copy_and_resolve_references()
  config.mesh = mesh
  init_state, shardings = _state_and_shardings(config, jax.devices()[:num_devices])
  abstract = checkpoint.abstract_like(jax.eval_shape(init_state), shardings)
  with checkpoint.Checkpointer(workdir, config) as ckpt:
    assert ckpt.latest_step() == 7
    state, data_state = ckpt.restore(abstract)
  assert data_state == {"step": 7}
  _assert_trees_equal(state, expected)
  jax.tree.map(lambda x, s: _assert_same_sharding(x.sharding, s), state, shardings)


def test_saving_small_replicated_arrays_compiles_nothing(tmp_path, caplog):
  """Orbax's replica-parallel save slices each replicated array once per device, a compilation
  per shape and device (~20 s for a `tiny` prior on 8 devices); under 1 MiB a slice it must not."""
  config = toy.make_config()
  config.mesh = MESH_222
  init_state, _ = _state_and_shardings(config)
  state = jax.tree.map(lambda x: x + 1, init_state())  # compiled here, before the save
  jax.block_until_ready(state)
  with jax.log_compiles(True), caplog.at_level("WARNING"):
    with checkpoint.Checkpointer(tmp_path, config) as ckpt:
      ckpt.save(1, state, {"step": 1})
      ckpt.wait_until_finished()
  compiled = [r.getMessage() for r in caplog.records if "Finished XLA compilation" in r.getMessage()]
  assert not compiled, compiled
  with checkpoint.Checkpointer(tmp_path, config) as ckpt:
    assert ckpt.latest_step() == 1


def test_a_relative_workdir_restores(saved, monkeypatch):
  workdir, config, expected = saved
  monkeypatch.chdir(workdir.parent)
  init_state, shardings = _state_and_shardings(config)
  abstract = checkpoint.abstract_like(jax.eval_shape(init_state), shardings)
  with checkpoint.Checkpointer(workdir.name, config) as ckpt:  # e.g. --dvae_workdir=runs/dvae
    state, _ = ckpt.restore(abstract)
  _assert_trees_equal(state, expected)


def _assert_same_sharding(actual, wanted):
  assert actual.is_equivalent_to(wanted, 2), (actual, wanted)


def test_config_mismatch_is_one_error_naming_the_fields(saved):
  workdir, config, _ = saved
  config = config.copy_and_resolve_references()
  config.toy.hidden = 32  # architecture: shapes differ
  config.optim.lr = 1.0  # optimiser
  config.train.num_steps = 999  # may change
  config.data.batch_size = 16  # may change
  init_state, shardings = _state_and_shardings(config)
  abstract = checkpoint.abstract_like(jax.eval_shape(init_state), shardings)
  with checkpoint.Checkpointer(workdir, config) as ckpt:
    with pytest.raises(checkpoint.ConfigMismatchError) as error:
      ckpt.restore(abstract)
  message = str(error.value)
  assert "does not match the checkpoint " in message and "checkpoints/7" in message
  assert "toy.hidden: 16 in the checkpoint, 32 now" in message
  assert "optim.lr: 0.03 in the checkpoint, 1.0 now" in message
  assert "num_steps" not in message.split("(Fields")[0]
  assert "batch_size" not in message.split("(Fields")[0]


def test_config_check_reports_added_and_removed_fields():
  with pytest.raises(checkpoint.ConfigMismatchError, match=r"(?s)a\.new: \(absent\).*b: 1"):
    checkpoint.check_config_compatible({"b": 1, "train": {"x": 1}}, {"a": {"new": 2}})
  checkpoint.check_config_compatible({"mesh": {"data": 2}, "m": [1, 2]},
                                     {"mesh": {"data": 8}, "m": [1, 2]})


def test_unfinished_save_is_never_loaded(saved, tmp_path):
  workdir, config, expected = saved
  copy = tmp_path / "copy"
  shutil.copytree(workdir, copy)
  # A complete-looking save whose final rename never happened (crash mid-save), and a torn one.
  shutil.copytree(copy / "checkpoints" / "7", copy / "checkpoints" / "9.orbax-checkpoint-tmp")
  torn = copy / "checkpoints" / "12.orbax-checkpoint-tmp-1234"
  torn.mkdir()
  (torn / "state").mkdir()
  init_state, shardings = _state_and_shardings(config)
  abstract = checkpoint.abstract_like(jax.eval_shape(init_state), shardings)
  with checkpoint.Checkpointer(copy, config) as ckpt:
    assert ckpt.latest_step() == 7 and ckpt.all_steps() == [7]
    state, _ = ckpt.restore(abstract)
  _assert_trees_equal(state, expected)


def test_keeps_the_latest_k_or_the_best_k(tmp_path):
  config = toy.make_config()
  init_state, _ = _state_and_shardings(config)
  state = init_state()
  with checkpoint.Checkpointer(tmp_path / "latest", config, max_to_keep=2) as ckpt:
    for step in (1, 2, 3, 4):
      ckpt.save(step, state, {"step": step})
  with checkpoint.Checkpointer(tmp_path / "latest", config) as ckpt:
    assert ckpt.all_steps() == [3, 4]
  losses = {1: 0.5, 2: 0.1, 3: 0.9, 4: 0.3}
  with checkpoint.Checkpointer(tmp_path / "best", config, max_to_keep=2,
                               best_metric="loss") as ckpt:
    for step, loss in losses.items():
      ckpt.save(step, state, {"step": step}, metrics={"loss": loss})
  with checkpoint.Checkpointer(tmp_path / "best", config) as ckpt:
    assert sorted(ckpt.all_steps()) == [2, 4]


def test_restore_without_checkpoint_names_the_directory(tmp_path):
  with checkpoint.Checkpointer(tmp_path, toy.make_config()) as ckpt:
    assert ckpt.latest_step() is None
    with pytest.raises(FileNotFoundError, match="No finished checkpoint in .*checkpoints"):
      ckpt.restore({})
