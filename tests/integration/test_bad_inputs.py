"""The bad-input matrix (docs/bad_inputs.md): each bad input to `python -m nwt_jax.train`,
`nwt_jax.tokenize`, `nwt_jax.generate` and `nwt_jax.footage` is one `error: ...` line (absl's own
line for a flag error), exit code 1, no traceback and no partial output; a disk that fills up
during a checkpoint write loses nothing. The checks of a config against its dataset
(`nwt_jax.training.checks`) are tested on the library call, and once through the CLI. Rows about dataset building and the generator's own inputs are
tested next to their code (tests/integration/test_builder.py, tests/integration/test_generate.py, tests/integration/test_tokenize.py).
"""

import errno
import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import numpy as np
from orbax.checkpoint._src.handlers import json_checkpoint_handler
import pytest

from nwt_jax import errors
from nwt_jax import presets
from nwt_jax.data import episodes
from nwt_jax.evaluation import footage
from nwt_jax.training import checkpoint
from nwt_jax.training import checks
import media_fixtures
import real_footage
import toy
import xla_env

REPO = pathlib.Path(__file__).resolve().parents[2]

# The tiny dVAE at its smallest, so a run that gets as far as its data loads in a second.
TINY = {"data.height": 16, "data.width": 16, "data.batch_size": 4, "data.num_train_clips": 4,
        "data.num_validation_clips": 4, "dvae.channels": "(4,8)", "dvae.res_blocks": "(0,0)",
        "train.eval_batch_size": 4, "train.eval_frames_per_clip": 1, "train.eval_batches": 1}


def _cli(module: str, *args, devices: int = 1) -> tuple[int, str, str]:
  """(exit code, last stderr line, all of stderr) of `python -m module args`."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO),
             XLA_FLAGS=xla_env.xla_flags(devices))
  proc = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=300, check=False)
  lines = proc.stderr.strip().splitlines()
  return proc.returncode, lines[-1] if lines else "", proc.stderr


def _assert_one_error_line(result, pattern: str) -> None:
  code, last, stderr = result
  assert code == 1, stderr[-3000:]
  assert re.fullmatch(pattern, last), last
  assert "Traceback" not in stderr, stderr[-3000:]


def _overrides(fields: dict) -> list[str]:
  return [f"--config.{k}={v}" for k, v in fields.items()]


# --- training --------------------------------------------------------------------------------

DVAE = "--config=configs/dvae.py:tiny"
PRIOR = "--config=configs/prior.py:tiny,far"


def _train_cases(tmp: pathlib.Path) -> dict[str, tuple[list, str, int]]:
  """{case: (arguments after --workdir, the error line's pattern, devices)}."""
  return {
      "no --workdir": ([DVAE], r"FATAL Flags parsing error: flag --workdir=None: Flag --workdir "
                       r"must have a value other than None\.", 1),
      "no such config file": (["--config=configs/nope.py"], r"error: --config=configs/nope.py: "
                              r"no such config file 'configs/nope.py'", 1),
      "unknown preset": (["--config=configs/dvae.py:huge"], r"error: --config=configs/dvae.py:"
                         r"huge: Unknown config preset 'huge'\. Valid presets \(size: base\|tiny"
                         r"\|paper_mem16\|paper_mem8\)\.", 1),
      "unknown config field": ([DVAE, "--config.train.num_step=3"],
                               r"error: --config\.train\.num_step=3: the config has no field "
                               r"train\.num_step \(fields of train: .*num_steps.*\)", 1),
      "wrong value type": ([DVAE, "--config.train.num_steps=abc"],
                           r"FATAL Flags parsing error: flag --config\.train\.num_steps=abc: "
                           r"invalid literal for int\(\) with base 10: 'abc'", 1),
      "unknown model": ([DVAE, "--config.model=gan"], r"error: config\.model='gan' is not a "
                        r"model this entry point trains; choose one of \['dvae', 'prior'\]\.", 1),
      "mesh does not fit the devices": ([DVAE, *_overrides(TINY), "--config.mesh.fsdp=3"],
                                        r"error: Mesh data=-1 x fsdp=3 x model=1: 4 devices are "
                                        r"not divisible by 3\.", 4),
      "batch not divisible over the mesh": (
          [DVAE, *_overrides({**TINY, "data.batch_size": 6})],
          r"error: data\.batch_size: global batch size 6 is not divisible by data x fsdp = 4 "
          r"\(the mesh's batch axes\); use a multiple of 4\.", 4),
      "unknown data source": ([DVAE, *_overrides(TINY), "--config.data.source=youtube"],
                              r"error: data\.source must be one of \[.*\], got 'youtube'", 1),
      "dataset not built": ([DVAE, *_overrides(TINY), "--config.data.source=tfds",
                             "--config.data.tfds_name=nwt_clips/folder",
                             f"--config.data.data_dir={tmp / 'no_tfds'}"],
                            r"error: No built dataset nwt_clips/folder in .*no_tfds: build it "
                            r"first, e\.g\. `tfds build tfds_builders/nwt_clips .*`", 1),
      "prior: tokens not made": ([PRIOR, f"--config.data.tokens_dir={tmp / 'no_tokens'}"],
                                 r"error: No manifest\.json in .*no_tokens: tokenize the clips "
                                 r"first, e\.g\. `python -m nwt_jax\.tokenize .*`\.", 1),
      "prior: no tokens_dir or dvae_workdir": ([PRIOR], r"error: Set config\.data\.tokens_dir "
                                               r"\(the output of .*\) or config\.dvae_workdir "
                                               r"\(tokens then live in .*\)\.", 1),
  }


TRAIN_CASES = list(_train_cases(pathlib.Path("/nonexistent")))


@pytest.mark.parametrize("case", TRAIN_CASES)
def test_train_bad_input_is_one_error_line_and_leaves_no_workdir(case, tmp_path):
  args, pattern, devices = _train_cases(tmp_path)[case]
  workdir = tmp_path / "run"
  if case != "no --workdir":
    args = [f"--workdir={workdir}", *args]
  _assert_one_error_line(_cli("nwt_jax.train", *args, devices=devices), pattern)
  assert not workdir.exists()  # what a failed run created is removed again


@pytest.mark.parametrize("case", ["is a file", "under a file"])
def test_train_unusable_workdir_is_one_error_line(case, tmp_path):
  a_file = tmp_path / "a_file"
  a_file.write_text("kept")
  workdir, reason = ((a_file, "is a file, not a directory") if case == "is a file"
                     else (a_file / "run", "cannot be written: Not a directory"))
  _assert_one_error_line(_cli("nwt_jax.train", DVAE, f"--workdir={workdir}"),
                         rf"error: --workdir={re.escape(str(workdir))} {reason}")
  assert a_file.read_text() == "kept"


def _tiny_dvae_config(**changes):
  config = presets.load_config("configs/dvae.py:tiny")
  for key, value in {**TINY, **changes}.items():
    section, field = key.split(".")
    config[section][field] = eval(value) if isinstance(value, str) else value  # pylint: disable=eval-used
  return config


def test_train_config_that_does_not_match_the_checkpoint_is_refused(tmp_path):
  """Resuming a workdir with another seed: one error naming the field; the checkpoint stays."""
  with checkpoint.Checkpointer(tmp_path, _tiny_dvae_config(), async_save=False) as ckpt:
    ckpt.save(1, {"x": np.zeros(2, np.float32)}, {"step": 1})  # the config is checked first
  code, _, stderr = _cli("nwt_jax.train", DVAE, f"--workdir={tmp_path}", *_overrides(TINY),
                         "--config.seed=1")
  assert code == 1 and "Traceback" not in stderr, stderr[-3000:]
  message = stderr[stderr.index("error: "):]
  assert message.startswith("error: The config does not match the checkpoint ")
  assert "  seed: 0 in the checkpoint, 1 now\n" in message
  with checkpoint.Checkpointer(tmp_path, _tiny_dvae_config()) as ckpt:
    assert ckpt.all_steps() == [1]


# --- disk full during a checkpoint write ------------------------------------------------------


def test_disk_full_during_a_checkpoint_write_keeps_the_previous_one_and_nothing_partial(
    tmp_path, monkeypatch):
  """The write of checkpoint 20 fails with ENOSPC (simulated in orbax's JSON writer, which
  runs in its background thread): one clear error, checkpoint 10 intact and nothing of 20
  left; rerunning resumes from 10 and reaches the uninterrupted run's state bitwise."""
  real_save = json_checkpoint_handler.JsonCheckpointHandler._save_fn  # pylint: disable=protected-access

  async def disk_full_at_20(self, item, directory):
    if directory.parent.name.startswith("20."):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory))
    return await real_save(self, item, directory)

  config = toy.make_config(num_steps=30, checkpoint_every=10)
  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, "_save_fn", disk_full_at_20)
  with pytest.raises(checkpoint.CheckpointWriteError,
                     match=r"Writing checkpoint 20 into .*checkpoints failed \(No space left on "
                     r"device\); the unfinished checkpoint was removed and checkpoint 10 is "
                     r"intact\. Free space"):
    toy.train(config, tmp_path / "run", writer=toy.RecordingWriter())
  monkeypatch.undo()
  assert sorted(p.name for p in (tmp_path / "run" / "checkpoints").iterdir()) == ["10"]
  resumed = toy.train(config, tmp_path / "run", writer=toy.RecordingWriter())
  straight = toy.train(config, tmp_path / "straight", writer=toy.RecordingWriter())
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(resumed), jax.device_get(straight))


# --- tokenization and generation -------------------------------------------------------------


@pytest.fixture(scope="module")
def dvae_workdir(tmp_path_factory):
  """A dVAE workdir holding a real (initial-state) checkpoint of the tiny config."""
  from nwt_jax.training import dvae as train_dvae
  workdir = tmp_path_factory.mktemp("dvae")
  config = _tiny_dvae_config()
  state = train_dvae.setup(config, jax.devices()[:1]).init_state()
  with checkpoint.Checkpointer(workdir, config, async_save=False) as ckpt:
    ckpt.save(0, state, {"step": 0})
  return workdir


def _prior_checkpoint(workdir: pathlib.Path) -> None:
  with checkpoint.Checkpointer(workdir, {"model": "prior"}, async_save=False) as ckpt:
    ckpt.save(1, {"x": np.zeros(2, np.float32)}, {"step": 1})


def test_tokenize_bad_input_is_one_error_line_and_writes_nothing(dvae_workdir, tmp_path):
  def tokenize(*args):
    return _cli("nwt_jax.tokenize", *args)

  code, _, stderr = tokenize(f"--output={tmp_path / 'a'}")  # absl's line, then a usage hint
  assert code == 1 and stderr.startswith("FATAL Flags parsing error: flag --dvae_workdir=None: "
                                         "Flag --dvae_workdir must have a value other than None.")
  missing = tmp_path / "no_dvae"
  _assert_one_error_line(tokenize(f"--dvae_workdir={missing}", f"--output={tmp_path / 'b'}"),
                         rf"error: No checkpoints in {re.escape(str(missing))}/checkpoints\.")
  prior = tmp_path / "prior"
  _prior_checkpoint(prior)
  _assert_one_error_line(tokenize(f"--dvae_workdir={prior}", f"--output={tmp_path / 'c'}"),
                         rf"error: {re.escape(str(prior))} holds a 'prior' run, not a 'dvae' "
                         r"one\.")
  _assert_one_error_line(tokenize(f"--dvae_workdir={dvae_workdir}", "--splits=train,test",
                                  f"--output={tmp_path / 'd'}"),
                         r"error: unknown splits \['test'\]; the clips have splits "
                         r"\['train', 'validation'\]")
  assert not any((tmp_path / name).exists() for name in "abcd")
  # Tokens made from other clips: refused before any shard is written.
  other = tmp_path / "other_tokens"
  other.mkdir()
  (other / "manifest.json").write_text(json.dumps({"format": 1, "grid": [4, 3]}))
  _assert_one_error_line(tokenize(f"--dvae_workdir={dvae_workdir}", f"--output={other}"),
                         rf"error: {re.escape(str(other))} holds tokens made differently "
                         r"\(manifest fields \[.*'grid'.*\] differ\); tokenize into another "
                         r"--output, or delete it\.")
  assert sorted(p.name for p in other.iterdir()) == ["manifest.json"]


def test_generate_cli_bad_input_is_one_error_line_and_no_output(dvae_workdir, tmp_path):
  """The CLI's own refusals (its request-level ones: tests/integration/test_generate.py)."""
  out = tmp_path / "out.mp4"

  def generate(*args):
    return _cli("nwt_jax.generate", *args)

  _assert_one_error_line(generate(f"--dvae_workdir={dvae_workdir}", f"--output={out}"),
                         r"error: --prior_workdir, --audio must be given")
  missing = tmp_path / "no_dvae"
  _assert_one_error_line(generate(f"--dvae_workdir={missing}", f"--prior_workdir={missing}",
                                  "--audio=speech.wav", f"--output={out}"),
                         rf"error: the dVAE workdir '{re.escape(str(missing))}' does not exist")
  _assert_one_error_line(generate(f"--dvae_workdir={dvae_workdir}",
                                  f"--prior_workdir={dvae_workdir}", "--audio=speech.wav",
                                  f"--output={out}"),
                         rf"error: the prior workdir {re.escape(str(dvae_workdir))} holds no "
                         r"usable checkpoint \(No tokens_manifest\.json in .*: not a prior "
                         r"workdir\.\)")
  assert not out.exists() and not list(tmp_path.glob("*.partial"))


# --- your own footage: checks before training, the footage command, generate's names and step --


def _build_folder(videos: pathlib.Path, data_dir: pathlib.Path, name: str, **config) -> str:
  """Builds the nwt_clips folder config `name` of `videos` in this process; its tfds name."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  sys.path.insert(0, str(REPO / "tfds_builders"))
  from nwt_clips import nwt_clips_dataset_builder as nwt_clips  # pylint: disable=g-import-not-at-top,line-too-long
  builder = nwt_clips.Builder(config=nwt_clips.NwtClipsConfig(name=name, source="folder",
                                                               **config), data_dir=str(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(videos)))
  return f"nwt_clips/{name}"


@pytest.fixture(scope="module")
def named_dataset(tmp_path_factory):
  """A folder build of two episodes (alice, bob), one 2.2 s test-pattern video each, 16-frame
  clips at the tiny preset's 64x56 (2 validation clips): (data_dir, tfds name)."""
  root = tmp_path_factory.mktemp("named")
  for episode in ("alice", "bob"):
    (root / "videos" / episode).mkdir(parents=True)
    media_fixtures.make_video(root / "videos" / episode / "v.mp4", seconds=2.2)
  return root / "tfds", _build_folder(root / "videos", root / "tfds", "named_t16", size="tiny",
                                      num_frames=16)


def _dataset_config(data_dir, name, **changes):
  config = presets.load_config("configs/dvae.py:tiny")
  config.data.source, config.data.data_dir, config.data.tfds_name = "tfds", str(data_dir), name
  config.dvae.num_episodes, config.train.eval_batch_size = 2, 2
  for key, value in changes.items():
    section, field = key.split(".")
    config[section][field] = value
  return config


CHECK_CASES = {
    "frame size": ({"data.height": 128, "data.width": 112},
                   r"frame size: the dataset nwt_clips/named_t16 holds 64x56 \(HxW\) frames but "
                   r"the config trains at 128x112 \(data\.height x data\.width\); build the "
                   r"dataset at the config's size .* or pass --config\.data\.height=64 "
                   r"--config\.data\.width=56"),
    "episode count": ({"dvae.num_episodes": 8},
                      r"episodes: the dataset nwt_clips/named_t16 has 2 episodes \(alice, bob\) "
                      r"but the config's dVAE knows 8 \(dvae\.num_episodes\); pass "
                      r"--config\.dvae\.num_episodes=2"),
    "clip length": ({"train.eval_frames_per_clip": 32},
                    r"clip length: train\.eval_frames_per_clip=32 frames but the dataset "
                    r"nwt_clips/named_t16's clips are 16 frames long; pass "
                    r"--config\.train\.eval_frames_per_clip=16 \(or rebuild with num_frames >= "
                    r"32\)"),
    "validation smaller than an eval batch": (
        {"train.eval_batch_size": 64},
        r"validation size: the dataset nwt_clips/named_t16 has 2 validation clips but "
        r"train\.eval_batch_size=64 \(whole batches only\); pass "
        r"--config\.train\.eval_batch_size=2"),
}


@pytest.mark.parametrize("case", list(CHECK_CASES))
def test_config_that_does_not_fit_the_dataset_is_one_error_before_anything(case, named_dataset):
  """`nwt_jax.training.checks` (what train.py runs first): one line naming both values and the
  flag that fixes it. The CLI's own line and empty workdir: the episode-count case below."""
  changes, pattern = CHECK_CASES[case]
  assert checks.check(_dataset_config(*named_dataset)) == ["alice", "bob"]
  with pytest.raises(errors.InvalidInput) as e:
    checks.check(_dataset_config(*named_dataset, **changes))
  assert re.fullmatch(pattern, str(e.value)), str(e.value)


def test_train_on_a_dataset_it_does_not_fit_is_one_error_line_and_writes_nothing(
    named_dataset, tmp_path):
  data_dir, name = named_dataset
  workdir = tmp_path / "run"
  _assert_one_error_line(
      _cli("nwt_jax.train", DVAE, f"--workdir={workdir}", "--config.data.source=tfds",
           f"--config.data.data_dir={data_dir}", f"--config.data.tfds_name={name}"),
      r"error: episodes: the dataset nwt_clips/named_t16 has 2 episodes \(alice, bob\) but the "
      r"config's dVAE knows 8 \(dvae\.num_episodes\); pass --config\.dvae\.num_episodes=2")
  assert not workdir.exists()


def test_a_workdir_trained_on_other_episodes_is_refused_and_left_as_it_was(named_dataset,
                                                                          tmp_path):
  episodes.save(str(tmp_path), ["carol", "dave"])
  with pytest.raises(errors.InvalidInput) as e:
    checks.check(_dataset_config(*named_dataset), str(tmp_path))
  assert re.fullmatch(r'dataset vs workdir: .* was trained on episodes \["carol", "dave"\] but the '
                      r'dataset nwt_clips/named_t16 has \["alice", "bob"\]; pass a new --workdir '
                      r'\(or the dataset it was trained on\)', str(e.value)), str(e.value)
  assert [p.name for p in tmp_path.iterdir()] == ["episodes.json"]
  assert episodes.load(str(tmp_path)) == ["carol", "dave"]


def test_footage_without_a_face_is_one_error_line_and_writes_nothing(tmp_path):
  videos = real_footage.video_folder(tmp_path / "videos", {"cartoon": ["bunny"]})
  workdir = tmp_path / "run"
  _assert_one_error_line(
      _cli("nwt_jax.footage", f"--videos={videos}", f"--workdir={workdir}", "--preset=tiny",
           "--num_frames=16"),
      rf"error: --crop=face: no face found in {re.escape(videos)} \(1 video\(s\), up to 6 "
      r"frames each at 1 fps\); pass --crop=center for a centre crop")
  assert not workdir.exists()


@pytest.mark.parametrize("case", ["one-frame video", "audio-only file"])
def test_footage_with_no_usable_video_is_one_error_and_writes_nothing(case, tmp_path):
  (tmp_path / "videos" / "ep").mkdir(parents=True)
  if case == "one-frame video":
    media_fixtures.make_video(tmp_path / "videos" / "ep" / "one.mp4", seconds=1 / 30)
    why = (r"ep/one\.mp4: 1 frame\(s\), 0\.0\d s: shorter than two clips of 32 frames "
           r"\(2\.13 s\)")
  else:
    media_fixtures.make_audio_only(tmp_path / "videos" / "ep" / "speech.mp4", seconds=3)
    why = r"ep/speech\.mp4: audio only: no video stream"
  videos = tmp_path / "videos"
  with pytest.raises(errors.InvalidInput) as e:
    footage.run(footage.Settings(videos=str(videos), workdir=str(tmp_path / "run"),
                                 preset="tiny"))
  assert re.fullmatch(rf"--videos={re.escape(str(videos))}: no usable video \({why}\); each "
                      r"needs a video and an audio stream and >= 2\.13 s", str(e.value)), str(
                          e.value)
  assert not (tmp_path / "run").exists()


def test_generate_step_that_does_not_exist_is_one_error_line(dvae_workdir, tmp_path):
  prior = tmp_path / "prior"
  _prior_checkpoint(prior)
  _assert_one_error_line(
      _cli("nwt_jax.generate", f"--dvae_workdir={dvae_workdir}", f"--prior_workdir={prior}",
           "--audio=speech.wav", f"--output={tmp_path / 'out.mp4'}", "--step=5"),
      rf"error: --step=5: the prior workdir {re.escape(str(prior))} has no checkpoint 5 \(it has "
      r"1\)")
  assert not (tmp_path / "out.mp4").exists()
