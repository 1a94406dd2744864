"""The shared training loop: exact resume, SIGTERM, non-finite guards, eval, the entry point."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nwt_jax.training import checkpoint
from nwt_jax.training import sharding
from nwt_jax import train
from nwt_jax.training import loop
import toy
import xla_env

MESH_222 = dict(data=2, fsdp=2, model=2)
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(**train_fields):
  config = toy.make_config(**train_fields)
  config.mesh = MESH_222
  return config


def _host(state):
  return jax.device_get(state)


def _assert_bitwise_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, _host(a), _host(b))


def _restore_latest(workdir, config):
  _, init_state, shardings, _, _ = toy.setup(config)
  with checkpoint.Checkpointer(workdir, config) as ckpt:
    abstract = checkpoint.abstract_like(jax.eval_shape(init_state), shardings)
    return ckpt.latest_step(), ckpt.restore(abstract)[0]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """20 uninterrupted steps on the 2x2x2 mesh: (final state on host, writer, eval calls)."""
  writer, evals = toy.RecordingWriter(), []

  def eval_fn(state, step):
    evals.append((step, int(state.step)))
    return {"param_norm": float(np.linalg.norm(state.params["Dense_0"]["kernel"]))}

  state = toy.train(_config(), tmp_path_factory.mktemp("reference"), writer=writer,
                    eval_fn=eval_fn)
  return _host(state), writer, evals


def test_run_logs_evaluates_and_checkpoints(reference, tmp_path):
  state, writer, evals = reference
  assert int(state.step) == 20
  assert evals == [(10, 10), (20, 20)]
  assert sorted(writer.scalars) == [1, 2, 5, 10, 15, 20]  # the 1-2-5 series, then every 5
  loss = {s: writer.scalars[s]["train/loss"] for s in writer.scalars}  # means since the last
  assert loss[20] < (loss[1] + loss[2] + 3 * loss[5]) / 5  # steps 16-20 vs 1-5
  assert writer.scalars[20]["train/nonfinite_skips"] == 0
  assert writer.scalars[20]["eval/param_norm"] > 0 and writer.scalars[20]["steps_per_sec"] > 0


def _progress_lines(text, num_steps):
  return [int(step) for step in re.findall(rf"step (\d+)/{num_steps} \(", text)]


def test_progress_lines_come_at_1_2_5_then_every_log_every_steps(tmp_path, caplog):
  """What a person watching sees: lines from the first step on, each with the loss and steps/s,
  then every log_every steps; a resumed run counts its own steps."""
  writer = toy.RecordingWriter()
  with caplog.at_level("INFO"):
    toy.train(_config(num_steps=25, log_every=10), tmp_path / "fresh", writer=writer)
  assert _progress_lines(caplog.text, 25) == [1, 2, 5, 10, 20, 25]
  assert sorted(writer.scalars) == [1, 2, 5, 10, 20, 25]
  first, second = (re.search(rf"step {s}/25 .*", caplog.text)[0] for s in (1, 2))
  assert re.fullmatch(r"step 1/25 \(4\.0%\), loss [-\d.e+]+, [\d.]+ steps/s \([\d.]+ s, "
                      r"compilation included\)", first), first
  assert re.fullmatch(r"step 2/25 \(8\.0%\), loss [-\d.e+]+, [\d.]+ steps/s, ETA \d\d:\d\d:\d\d",
                      second), second
  assert "steps_per_sec" not in writer.scalars[1] and writer.scalars[2]["steps_per_sec"] > 0
  toy.train(_config(num_steps=10, log_every=10), tmp_path / "resumed")
  caplog.clear()
  with caplog.at_level("INFO"):
    toy.train(_config(num_steps=25, log_every=10), tmp_path / "resumed")
  assert _progress_lines(caplog.text, 25) == [11, 12, 15, 20, 25]


def test_ten_steps_save_restore_ten_steps_equals_twenty_bitwise(reference, tmp_path):
  first = toy.train(_config(num_steps=10), tmp_path)
  assert int(first.step) == 10
  batches = []
  resumed = toy.train(_config(num_steps=20), tmp_path, hook=batches.append)
  assert batches == list(range(10, 20))  # it resumed: batches 10..19, not a rerun from 0
  _assert_bitwise_equal(resumed, reference[0])


def test_resume_from_eight_devices_onto_one_device_continues(reference, tmp_path):
  toy.train(_config(num_steps=10), tmp_path)
  config = toy.make_config(num_steps=20)
  config.mesh = dict(data=1, fsdp=1, model=1)
  resumed = toy.train(config, tmp_path, devices=jax.devices()[:1])
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7),
               _host(resumed.params), reference[0].params)


def test_sigterm_saves_returns_and_the_rerun_reaches_the_same_params(reference, tmp_path):
  def send_sigterm(step):
    if step == 7:
      os.kill(os.getpid(), signal.SIGTERM)

  stopped = toy.train(_config(), tmp_path, hook=send_sigterm)
  assert int(stopped.step) == 8  # the step in flight finishes, then a checkpoint is written
  assert _restore_latest(tmp_path, _config())[0] == 8
  assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored
  batches = []
  resumed = toy.train(_config(), tmp_path, hook=batches.append)
  assert batches == list(range(8, 20))
  _assert_bitwise_equal(resumed, reference[0])


def _manual_steps(config, steps, **iterator_kwargs):
  """Per-step (params on host, metrics on host) of the toy's jitted step."""
  mesh, init_state, _, step, _ = toy.setup(config)
  state, it, out = init_state(), toy.Iterator(config, **iterator_kwargs), []
  for _ in range(steps):
    state, metrics = step(state, sharding.put_batch(next(it), mesh))
    out.append((_host(state.params), _host(state.opt_state), _host(metrics)))
  return out


def test_nan_at_step_skips_that_update_bitwise_and_training_goes_on():
  config = _config()
  config.debug.nan_at_step = 3
  steps = _manual_steps(config, 6)
  clean = _manual_steps(_config(), 3)
  _assert_bitwise_equal(steps[2][:2], clean[2][:2])
  _assert_bitwise_equal(steps[3][:2], steps[2][:2])  # step 3 skipped: params and adam unchanged
  assert np.isnan(steps[3][2]["loss"])
  assert [int(m["nonfinite"]) for _, _, m in steps] == [0, 0, 0, 1, 0, 0]
  assert [int(m["nonfinite_skips"]) for _, _, m in steps] == [0, 0, 0, 1, 1, 1]
  assert [int(m["nonfinite_streak"]) for _, _, m in steps] == [0, 0, 0, 1, 0, 0]
  changed = jax.tree.map(lambda a, b: not np.array_equal(a, b), steps[4][0], steps[3][0])
  assert all(jax.tree.leaves(changed))  # step 4 updates again


def test_run_counts_and_logs_skips(tmp_path, caplog):
  config = _config(num_steps=10)
  config.debug.nan_at_step = 3
  writer = toy.RecordingWriter()
  with caplog.at_level("WARNING"):
    state = toy.train(config, tmp_path, writer=writer)
  assert int(state.step) == 10 and int(state.nonfinite_skips) == 1
  assert writer.scalars[5]["train/nonfinite_skips"] == 1
  assert np.isfinite(writer.scalars[5]["train/loss"])  # the mean leaves the skipped step out
  assert "Step 3: non-finite loss or gradient, update skipped (1 so far" in caplog.text


def test_k_consecutive_nonfinite_steps_stop_with_error_and_last_good_checkpoint(tmp_path):
  config = _config(max_consecutive_nonfinite=3)
  with pytest.raises(loop.NonFiniteError, match="3 consecutive steps .* non-finite"):
    toy.train(config, tmp_path, nan_from=6)  # every batch from batch 6 on holds NaNs
  step, saved = _restore_latest(tmp_path, config)
  assert 9 <= step < 20
  last_good = toy.train(_config(num_steps=6), tmp_path / "six")
  _assert_bitwise_equal((saved.params, saved.opt_state), (last_good.params, last_good.opt_state))
  assert int(saved.nonfinite_streak) >= 3


def test_unknown_model_is_one_clear_error():
  with pytest.raises(ValueError, match=r"config.model='gan'.*\['dvae', 'prior'\]"):
    train.trainer("gan")


def test_entry_point_sigterm_exits_zero_with_a_checkpoint(tmp_path):
  """`python -m nwt_jax.train` on the toy trainer, SIGTERM from outside mid-run."""
  code = ("import sys; sys.path.insert(0, 'tests/support'); from nwt_jax import cli, train; "
          "train.TRAINERS['toy'] = 'toy'; cli.run(train.main, flags_parser=train.parse_flags)")
  env = dict(os.environ, PYTHONPATH=REPO,
             XLA_FLAGS=xla_env.xla_flags(8), JAX_PLATFORMS="cpu")
  proc = subprocess.Popen(
      [sys.executable, "-c", code, "--config=tests/support/toy.py", f"--workdir={tmp_path}",
       "--config.train.num_steps=1000000", "--config.train.checkpoint_every=100",
       "--config.train.log_every=100", "--config.mesh.fsdp=2", "--config.mesh.data=-1"],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.time() + 120
    while not (tmp_path / "checkpoints" / "100").exists():
      assert proc.poll() is None and time.time() < deadline, proc.communicate()[0][-3000:]
      time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=60)
  finally:
    if proc.poll() is None:
      proc.kill()
  assert proc.returncode == 0, output[-3000:]
  assert "Stopped at step" in output and "steps/s, ETA" in output
  step = max(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert 100 < step < 1000000
  assert any(p.name.startswith("events.out.tfevents") for p in tmp_path.iterdir())


def test_all_finite_reads_nan_inf_and_overflow_in_any_leaf():
  tree = {"a": np.ones((3, 2), np.float32), "b": [np.zeros(4, np.float32), np.float32(2.0)]}
  assert bool(loop.all_finite(tree))
  for leaf, bad in ((("a",), np.nan), (("b", 0), np.inf), (("b", 0), -np.inf), (("a",), 1e20)):
    broken = jax.tree.map(np.copy, tree)
    target = broken[leaf[0]] if len(leaf) == 1 else broken[leaf[0]][leaf[1]]
    target.flat[1] = bad  # 1e20: the norm overflows float32, which counts as non-finite
    assert not bool(loop.all_finite(broken)), (leaf, bad)


def _guarded_update_size(num_leaves: int) -> int:
  """Instructions in the compiled HLO of a guarded SGD update of `num_leaves` parameters."""
  def update(params, grads):
    ok = loop.all_finite(grads)
    return jax.tree.map(lambda p, g: jnp.where(ok, p - 0.1 * g, p), params, grads)
  params = [jnp.ones((i + 2, 3)) for i in range(num_leaves)]
  hlo = jax.jit(update).lower(params, params).compile().as_text()
  return len(re.findall(r"^\s*(?:ROOT )?%\S+ = ", hlo, re.M))


def test_the_finite_check_is_compiled_once_not_into_every_parameter_update():
  # A per-leaf `and` chain was fused into each parameter's select: L copies of an L-long chain,
  # a compiled program quadratic in the parameter count (and twice the prior's compile time).
  small, large = _guarded_update_size(20), _guarded_update_size(40)
  assert large / small < 2.3, (small, large)
