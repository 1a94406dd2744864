"""The demo: its stages on small sizes, and `python -m nwt_jax.demo` end to end (FAR, then MAR) at
a tiny size (the full `make demo` run is the same command at its default sizes); on its run,
`python -m nwt_jax.report` for the run, its dVAE workdir and its prior workdir, each page
checked in headless Chromium, and the prior's TensorBoard previews."""

import html as html_lib
import importlib.util
import json
import math
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import shared_probe
import xla_env

from nwt_jax import presets
from nwt_jax.data import input_pipeline
from nwt_jax.data import synthetic
from nwt_jax.data import token_pipeline
from nwt_jax.data import video_io
from nwt_jax.evaluation import demo
from nwt_jax.evaluation import explore
from nwt_jax.evaluation import report
from nwt_jax.inference import controls
from nwt_jax.training import dvae as train_dvae
from nwt_jax.training import previews
from nwt_jax.training import restore

REPO = pathlib.Path(__file__).resolve().parents[2]


def test_dataset_stage_builds_once_and_summarises(tmp_path):
  kw = dict(num_train_clips=3, num_validation_clips=2, num_frames=8)
  summary = demo.build_dataset(tmp_path, **kw)
  assert summary["built_now"] and summary["splits"] == {"train": 3, "validation": 2}
  assert summary["clip_shape"] == [8, 64, 56, 3] and summary["episodes"] == synthetic.NUM_EPISODES
  assert summary["audio_sample_rate"] == 24000 and summary["bytes"] > 0
  again = demo.build_dataset(tmp_path, **kw)
  assert not again["built_now"] and again["splits"] == summary["splits"]
  # What was written (TFRecord, read as `tfds.load` users read it) is the synthetic world's
  # validation clips 0 and 1.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  written = [e["video"] for e in tfds.as_numpy(
      demo.dataset_builder(tmp_path, **kw).as_dataset(split="validation"))]
  for i in range(2):
    expected = synthetic.make_clip(input_pipeline.synthetic_clip_seed("validation", i),
                                   num_frames=8)
    assert sum(np.array_equal(v, expected["video"]) for v in written) == 1, i


# ----------------------------------------------------------------------------------------------
# End to end

# The smallest demo that runs every stage: the tiny dVAE evaluates 64 validation clips a batch
# (configs/dvae.py), so the validation split has 64; FAR's held-out clips are two windows of the
# tiny prior (8 frames, configs/prior.py), the episode switch at the second.
SIZES = dict(num_train_clips=16, num_validation_clips=64, num_frames=16, dvae_steps=3,
             prior_steps=3, eval_clips=2)
# Per prior preset: the evaluation's and the generate stage's frames (the generated clip's episode
# switches halfway) and the style dimensions traversed. A MAR prior draws each frame code by code
# (896 draws for `tiny`): one window of evaluation and 12 generated frames.
RUNS = {"tiny,far": dict(eval_frames=16, generate_frames=48, traverse_dims=2),
        "tiny,mar": dict(eval_frames=8, generate_frames=12, traverse_dims=1)}
# (The MAR run, 2.3 more minutes on 2 cores, is not part of the suite; run it with
# `pytest tests/integration/test_demo.py --mar_demo`.)


class _Recording(dict):
  """A dict that records which keys were read."""

  def __init__(self, *args):
    super().__init__(*args)
    self.read = []

  def __getitem__(self, key):
    self.read.append(key)
    return super().__getitem__(key)


def _bar_keys(metrics: dict) -> list[str]:
  """The metrics the demo's bar table (`demo._bars`) shows; a missing one raises KeyError."""
  recording = _Recording(metrics)
  demo._bars(recording)
  return list(dict.fromkeys(recording.read))


def _is_correlation(key: str) -> bool:
  """Pearson r and Spearman: NaN where a reading is constant, which 3 training steps can give."""
  return key.endswith("_r") or "_r_" in key or "spearman" in key


VIDEOS = ("copied_style.mp4", "random_style.mp4", "episode_switch.mp4", "traversal.mp4",
          "generated.mp4", "truth_vs_generated.mp4", "swap.mp4")
# Streams side by side in a video of the report.
STREAMS = {"traversal.mp4": len(controls.TRAVERSE_STEPS), "truth_vs_generated.mp4": 2,
           "swap.mp4": 2}
# The report's sections on a demo run (`nwt_jax.evaluation.report.build`).
DEMO_SECTIONS = ["Metrics", "Explorer numbers", "Generation", "Controls", "Training",
                 "Code usage", "Explorer: what each code looks like",
                 "Explorer: which codes follow the audio", "Explorer: swap a code",
                 "Explorer: which codes carry the episode", "Explorer: which codes carry the style",
                 "Details"]


def _run_demo(workdir: pathlib.Path, preset: str) -> subprocess.CompletedProcess:
  """`python -m nwt_jax.demo` at SIZES into workdir, on one CPU device as `make demo` runs it
  (with the tests' compile flags and compilation cache, which its stages inherit)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), XLA_FLAGS=xla_env.xla_flags(1))
  sizes = dict(SIZES, **RUNS[preset])
  args = [f"--workdir={workdir}", f"--prior_preset={preset}",
          *(f"--{k}={v}" for k, v in sizes.items())]
  proc = subprocess.run([sys.executable, "-m", "nwt_jax.demo", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600, check=False)
  assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
  return proc


def _check_demo(workdir: pathlib.Path, proc: subprocess.CompletedProcess, preset: str) -> dict:
  """The demo's outputs in workdir: the dataset it was asked for, the report with its videos, and
  every bar a number in its range. Returns the metrics."""
  summary = json.loads((workdir / "dataset_summary.json").read_text())
  assert summary["splits"] == {"train": SIZES["num_train_clips"],
                               "validation": SIZES["num_validation_clips"]}, summary
  assert summary["clip_shape"] == [SIZES["num_frames"], *demo.DEMO_FRAME_SIZE, 3], summary

  metrics = json.loads((workdir / "metrics.json").read_text())
  keys = _bar_keys(metrics)
  assert len(keys) >= 12 and "lipsync_r" in keys and "psnr" in keys, keys
  for key in keys:
    value = metrics[key]
    if isinstance(value, str):  # the style key the best traversal moves
      assert value in synthetic.TRUTH_KEYS, (key, value)
      continue
    if isinstance(value, list):  # integrity per second: one finite dB value per second
      assert value and all(math.isfinite(v) for v in value), (key, value)
      continue
    assert isinstance(value, (int, float)) and not isinstance(value, bool), (key, value)
    if _is_correlation(key):
      assert math.isnan(value) or -1.0 - 1e-9 <= value <= 1.0 + 1e-9, (key, value)
    else:
      assert math.isfinite(value), (key, value)
    if "accuracy" in key or "usage" in key:
      assert 0.0 <= value <= 1.0, (key, value)
  assert metrics["psnr"] > 0 and metrics["style_error_copied"] >= 0, metrics
  assert isinstance(metrics["lipsync_best_offset"], int), metrics
  assert 0 <= metrics["traversal_best_dim"] < 16, metrics  # the tiny prior's style_dim
  assert metrics["num_clips"] == SIZES["eval_clips"], metrics
  assert metrics["num_frames"] == RUNS[preset]["eval_frames"], metrics

  site = workdir / "report"
  html = (site / "report.html").read_text()
  assert f"a {preset} prior" in html and "lipsync r (copied style)" in html
  height, width = demo.DEMO_FRAME_SIZE
  window = presets.load_config(f"configs/prior.py:{preset}").data.frames_per_example
  eval_frames = RUNS[preset]["eval_frames"]
  frames = {"generated.mp4": RUNS[preset]["generate_frames"],
            "traversal.mp4": min(eval_frames, window)}
  for name in VIDEOS:
    assert name in html, name
    info = video_io.probe(str(site / name))
    streams = STREAMS.get(name, 1)  # side by side
    assert (info.height, info.width) == (height, streams * width) and info.has_audio, info
    video = video_io.read_video(str(site / name), height=info.height, width=info.width)
    assert len(video) == frames.get(name, eval_frames), (name, video.shape)
  for image in ("reconstructions.png", "traversal.png", "dvae_losses.png", "prior_losses.png",
                "code_usage.png", "code_patches.png", "audio_cells.png", "lipsync_by_offset.png",
                "mouth_over_time.png"):
    assert (site / image).stat().st_size > 0, image
  assert _headings(html) == DEMO_SECTIONS
  measured = json.loads((site / "measurements.json").read_text())
  curve = measured["lipsync"]
  assert curve["offsets"] == list(range(-5, 6)) and len(curve["shuffled_r_by_offset"]) == 11
  # The curve's value at offset 0 is the table's lipsync r (NaN where a reading is constant).
  np.testing.assert_allclose(curve["r_by_offset"][5], metrics["lipsync_r"])
  np.testing.assert_allclose(curve["shuffled_r_by_offset"][5], metrics["lipsync_shuffled_r"])
  assert measured["settings"]["seed"] == 0 and measured["settings"]["temperature"] == 0.7
  assert "Report: " in proc.stdout and "seconds per stage" in proc.stdout
  return metrics


def _headings(page: str) -> list[str]:
  return [html_lib.unescape(h) for h in re.findall(r"<h2>(.*?)</h2>", page)]


def _browser():
  """tests/unit/evaluation/test_report.py's Chromium checks (`check_page`)."""
  spec = importlib.util.spec_from_file_location(
      "report_browser", REPO / "tests" / "unit" / "evaluation" / "test_report.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _report(workdir: pathlib.Path, *args: str) -> subprocess.Popen:
  """Starts `python -m nwt_jax.report --workdir=WORKDIR` (2 held-out clips of 16 frames)."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), XLA_FLAGS=xla_env.xla_flags(1))
  return subprocess.Popen([sys.executable, "-m", "nwt_jax.report", f"--workdir={workdir}",
                           "--num_clips=2", "--num_frames=16", *args], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _page(proc: subprocess.Popen) -> pathlib.Path:
  """The page a `_report` command printed, once it succeeded."""
  stdout, stderr = proc.communicate(timeout=300)
  assert proc.returncode == 0, (stdout[-3000:], stderr[-3000:])
  return pathlib.Path(stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def far_demo(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("demo_far")
  # Its background probe is the default one: test_evaluate.py uses it rather than train another.
  with shared_probe.publish_when_saved(workdir / "probe.npz"):
    return workdir, _run_demo(workdir, "tiny,far")


@pytest.mark.slow
def test_demo_runs_end_to_end(far_demo):
  workdir, proc = far_demo
  _check_demo(workdir, proc, "tiny,far")
  # The probe trained in the background while the tokenizer and the prior ran, and passed its bar.
  assert (workdir / "probe.npz").exists()
  assert "held-out r mouth_open" in (workdir / "probe.log").read_text()
  assert json.loads((workdir / "prior" / "sampling.json").read_text())["change_threshold"] == 0.2


@pytest.mark.slow
def test_the_report_command_on_a_demo_run_a_dvae_and_a_prior_workdir(far_demo, tmp_path):
  workdir, _ = far_demo
  browser = _browser()
  # A demo run: the command writes the demo's own page again (one code path), from the
  # measurements its evaluate stage saved.
  site = workdir / "report"
  before = (site / "report.html").read_text()
  # The three commands run side by side (each mostly waits on one core).
  runs = [_report(workdir), _report(workdir / "dvae", f"--output={tmp_path / 'dvae'}"),
          _report(workdir / "prior", f"--output={tmp_path / 'prior'}")]
  page = _page(runs[0])
  assert page == site / "report.html"
  after = page.read_text()
  assert _headings(after) == _headings(before) == DEMO_SECTIONS
  assert "a tiny,far prior" in after and "lipsync r (copied style)" in after
  media = browser.check_page(page, min_media=20)
  shown = {m["src"] for m in media}
  assert set(VIDEOS) <= shown and {"code_patches.png", "swap_change.png"} <= shown, shown
  details = json.loads(html_lib.unescape(re.findall(r"<pre>(.*?)</pre>", after, re.S)[-1]))
  explorer = details["explorer"]
  assert 0.0 <= explorer["audio_mouth_iou"] <= 1.0 and explorer["audio_cells"] >= 1, explorer
  assert explorer["swap_old"] != explorer["swap_new"] and explorer["swap_cells"] > 0, explorer

  # A dVAE workdir: training, code usage and the explorer; nothing of a prior.
  page = _page(runs[1])
  assert page == tmp_path / "dvae" / "report.html"
  assert _headings(page.read_text()) == [
      "Explorer numbers", "Training", "Code usage", "Explorer: what each code looks like",
      "Explorer: which codes follow the audio", "Explorer: swap a code",
      "Explorer: which codes carry the episode", "Details"]
  assert (tmp_path / "dvae" / "dvae_recon_3.png").exists()  # the grids over training steps
  # The dVAE's training also put that grid in TensorBoard.
  images = [(e.step, v.tag) for e in report._events(str(workdir / "dvae"))
            for v in e.summary.value if v.HasField("image")]
  assert images == [(SIZES["dvae_steps"], "eval/reconstructions")], images
  browser.check_page(page, min_media=8)

  # A prior workdir (its dVAE found from its config): both runs' curves and the style codes;
  # no probe there, so no generation measurement.
  page = _page(runs[2])
  headings = _headings(page.read_text())
  assert "Explorer: which codes carry the style" in headings and "Generation" not in headings
  assert (tmp_path / "prior" / "prior_losses.png").exists()
  assert (tmp_path / "prior" / "dvae_losses.png").exists()
  browser.check_page(page, min_media=10)


@pytest.mark.slow
def test_prior_previews_draw_the_true_and_the_teacher_forced_codes(far_demo):
  workdir, _ = far_demo
  model, params, config = restore.prior(str(workdir / "prior"))
  with token_pipeline.create_iterator(config.data, "validation", seed=0,
                                      root=str(workdir / "tokens"), batch_size=2) as it:
    batch = next(it)
  image = previews.Previewer(str(workdir / "dvae"), model, clips=1, frames=2, stride=1)(
      params, batch)
  height, width = demo.DEMO_FRAME_SIZE
  assert image.shape == (2 * (2 * height + 6), 2 * (2 * (width + 2) + 2), 3)  # 2 rows, zoom 2
  dvae, dvae_params, _ = train_dvae.load_frozen(str(workdir / "dvae"))
  episode = np.broadcast_to(np.reshape(batch["episode"][0], (-1,)),
                            (config.data.frames_per_example,))
  truth = explore.decode(dvae, dvae_params, batch["codes"][0, :2], episode[:2])
  # The same frames, decoded in another batch: equal but for a rare rounding step.
  same = lambda a, b: np.mean(a == b) > 0.99 and np.abs(a.astype(int) - b).max() <= 1
  assert same(image[4:4 + 2 * height:2, 4:4 + 2 * width:2], truth[0])
  predicted = np.asarray(previews.teacher_forced_codes(model, params, {
      k: np.asarray(batch[k])[:1] for k in ("codes", "mel", "episode")}))
  second_row = image[2 * (height + 4):2 * (2 * height + 4):2, 4:4 + 2 * width:2]
  assert same(second_row, explore.decode(dvae, dvae_params, predicted[0, :1], episode[:1])[0])
  assert not same(second_row, np.zeros_like(second_row))


def test_a_mar_demo_drops_the_far_change_threshold_unless_given():
  # The demo's default threshold (0.2) would make a MAR prior's sampler refuse to start.
  options = demo.Settings().options
  assert options.change_threshold == 0.2
  assert demo.options_for("tiny,mar", options, threshold_given=False).change_threshold == 0.0
  assert demo.options_for("tiny,mar", options, threshold_given=True) == options
  assert demo.options_for("tiny,far", options, threshold_given=False) == options


@pytest.mark.slow
def test_mar_demo_runs_end_to_end(far_demo, request):
  if not request.config.getoption("--mar_demo"):
    pytest.skip("the MAR demo run is opt-in (--mar_demo): 2.3 more minutes on 2 cores")
  # In the FAR run's workdir, without its prior and report: the demo keeps finished stages (the
  # dataset, the dVAE, the tokens and the probe; their configs name this workdir's paths), so
  # only the MAR prior is trained. (This test runs after the FAR test.)
  workdir = far_demo[0]
  for name in ("prior", "report", "metrics.json"):
    path = workdir / name
    shutil.rmtree(path) if path.is_dir() else path.unlink()
  probe_log = (workdir / "probe.log").read_text()
  proc = _run_demo(workdir, "tiny,mar")
  metrics = _check_demo(workdir, proc, "tiny,mar")
  assert metrics["traversal_best_dim"] == 0  # the only dimension traversed
  assert (workdir / "probe.log").read_text() == probe_log  # no new probe
  assert json.loads((workdir / "prior" / "sampling.json").read_text())["change_threshold"] == 0.0
  assert "--change_threshold=0.0 " in proc.stdout  # the generate stage's command line
