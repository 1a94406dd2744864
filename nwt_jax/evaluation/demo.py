"""The demo on the built-in synthetic world (`python -m nwt_jax.demo`, `make demo`), as a library.

    python -m nwt_jax.demo --workdir=runs/demo

It chains the commands a user runs (README), each as its own process, then measures the result:
  data      build the `nwt_clips` synthetic TFDS dataset into WORKDIR/tfds, print its summary;
  dvae      python -m nwt_jax.train --config=configs/dvae.py:tiny   (on that dataset);
  tokenize  python -m nwt_jax.tokenize                              (frozen dVAE -> codes);
  prior     python -m nwt_jax.train --config=configs/prior.py:tiny,far;
  generate  python -m nwt_jax.generate on a held-out clip's audio with an episode switch;
  evaluate  the probe (trained once, checked against its r >= 0.95 bar) reads held-out generated
            videos: lipsync, style and episode control, traversals; dVAE PSNR/SSIM and codes;
  report    WORKDIR/report/report.html (`python -m nwt_jax.report --workdir=WORKDIR` writes the
            same): the bars, sample videos, training curves, code usage and the Memcodes explorer.
A rerun resumes: finished training runs and tokens are kept, the rest is redone.
"""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time
import wave

from absl import logging
from etils import epath

from nwt_jax import errors
from nwt_jax.data import constants
from nwt_jax.data import synthetic
from nwt_jax.evaluation import footage
from nwt_jax.evaluation import jobs
from nwt_jax.evaluation import report
from nwt_jax.inference import generator
from nwt_jax.inference import sampling
from nwt_jax.inference import settings

REPO = pathlib.Path(__file__).resolve().parents[2]


DEMO_FRAME_SIZE = (64, 56)  # (H, W) of the demo's clips: the `tiny` dVAE's frames


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the demo trains and how it samples (the CLI's flags)."""
  workdir: str = "runs/demo"  # where the dataset, runs and report go
  num_train_clips: int = 384  # synthetic clips in the train split
  num_validation_clips: int = 64  # synthetic clips in the validation split
  num_frames: int = 32  # frames per clip (30 fps)
  dvae_steps: int = 400  # dVAE training steps (the demo stops before the adversarial phase)
  prior_steps: int = 600  # prior training steps
  prior_preset: str = "tiny,far"  # configs/prior.py preset
  eval_clips: int = 16  # held-out clips the evaluation generates
  eval_frames: int = 64  # frames per held-out clip (two prior windows)
  traverse_dims: int = 0  # style dimensions the evaluation traverses (0: all)
  generate_frames: int = 120  # the generate stage's held-out audio (the episode switches halfway)
  options: sampling.SamplingOptions = sampling.SamplingOptions(
      temperature=0.7, audio_guidance=3.0, change_threshold=0.2)
  opening: str = "bank"  # a fresh window's first frame (Generator)
  seed: int = 0  # the trainings' seed (data order, initialisation) and the sampling seed


def options_for(prior_preset: str, options: sampling.SamplingOptions, *,
                threshold_given: bool) -> sampling.SamplingOptions:
  """The demo's sampling options for a prior preset: the change threshold is a FAR sampler's (a
  MAR prior draws each code in turn and refuses one), so a MAR demo drops it unless given."""
  if "mar" in prior_preset.split(",") and not threshold_given:
    return dataclasses.replace(options, change_threshold=0.0)
  return options


def _nwt_clips():
  """The `nwt_clips` builder module from the repository's tfds_builders/ (not a pip package)."""
  builders = REPO / "tfds_builders"
  if not (builders / "nwt_clips").is_dir():
    raise errors.MissingInput(f"{builders}/nwt_clips not found; run the demo from a clone of "
                              "the repository (pip install -e .).")
  sys.path.insert(0, str(builders))
  from nwt_clips import nwt_clips_dataset_builder  # pylint: disable=g-import-not-at-top
  return nwt_clips_dataset_builder


def dataset_builder(data_dir: pathlib.Path, *, num_train_clips: int, num_validation_clips: int,
                    num_frames: int):
  """The `nwt_clips` builder of the demo's synthetic dataset of these sizes in `data_dir`."""
  nwt_clips = _nwt_clips()
  # The sizes are in the config's name: TFDS takes a built name as done, whatever its sizes.
  config = nwt_clips.NwtClipsConfig(
      name=f"demo_t{num_frames}_{num_train_clips}_{num_validation_clips}",
      num_frames=num_frames, num_train_clips=num_train_clips,
      num_validation_clips=num_validation_clips, height=DEMO_FRAME_SIZE[0],
      width=DEMO_FRAME_SIZE[1], description="The demo's synthetic talking-head clips.")
  return nwt_clips.Builder(config=config, data_dir=str(data_dir))


def build_dataset(data_dir: pathlib.Path, **sizes) -> dict:
  """Builds (or finds already built) the synthetic dataset; returns its summary."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (GPU machines lack it)
  builder = dataset_builder(data_dir, **sizes)
  name = builder.builder_config.name
  start = time.perf_counter()
  built_now = not builder.is_prepared()
  if built_now:
    logging.info("Building nwt_clips/%s into %s ...", name, data_dir)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig())
  info = builder.info
  video = info.features["video"]
  return {
      "dataset": f"nwt_clips/{name}",
      "data_dir": str(data_dir),
      "built_now": built_now,
      "seconds": round(time.perf_counter() - start, 1),
      "splits": {split: info.splits[split].num_examples for split in info.splits},
      "clip_shape": list(video.shape),
      "fps": constants.FPS,
      "audio_sample_rate": info.features["audio"].sample_rate,
      "episodes": info.features["episode"].num_classes,
      "bytes": info.dataset_size,
      "truth": list(synthetic.TRUTH_KEYS),
  }


def _run(stage: str, args: list[str], log_path: pathlib.Path) -> float:
  """Runs `python -m ARGS` (`footage.run_stage`: output kept in log_path, progress shown, a
  failure one UserError with the child's error line); returns its seconds."""
  return footage.run_stage(stage, ["-m", *args], log_path)


def _start_probe(workdir: pathlib.Path, height: int, width: int) -> subprocess.Popen | None:
  """Trains the evaluation probe in a background process at low priority (nice 10) while the
  tokenizer and the prior run: they leave part of the CPU idle, and the probe needs none of their
  outputs. None if the probe is already saved. Its log is workdir/probe.log."""
  path = workdir / "probe.npz"
  if path.exists():
    return None
  code = ("import os; os.nice(10); from nwt_jax.evaluation import jobs; "
          f"jobs.load_or_train_probe({str(path)!r}, {height}, {width})")
  print(f"\n=== probe: training in the background (log: {workdir / 'probe.log'})", flush=True)
  with open(workdir / "probe.log", "w") as log:
    return subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=log,
                            stderr=subprocess.STDOUT, env=dict(os.environ, PYTHONUNBUFFERED="1"))


def _wait_for_probe(proc: subprocess.Popen | None, workdir: pathlib.Path) -> None:
  """Waits for `_start_probe`'s process; if it failed, the evaluation trains the probe itself."""
  if proc is not None and proc.wait():
    print(f"warning: the background probe failed (exit {proc.returncode}; see "
          f"{workdir / 'probe.log'}); the evaluation trains it again", flush=True)



def _train_args(config: str, workdir: pathlib.Path, overrides: dict) -> list[str]:
  return (["nwt_jax.train", f"--config={config}", f"--workdir={workdir}"]
          + [f"--config.{k}={v}" for k, v in overrides.items()])


def _write_clip_audio(path: pathlib.Path, clip: dict) -> None:
  """A held-out clip's audio as a 24 kHz mono wav (what a user would pass to generate)."""
  with wave.open(str(path), "wb") as f:
    f.setnchannels(1)
    f.setsampwidth(2)
    f.setframerate(constants.SAMPLE_RATE)
    f.writeframes(clip["audio"].astype("<i2").tobytes())


_bars = report.bar_table  # the bar table the demo prints (and its report shows)


def evaluate_and_report(workdir: pathlib.Path, *, num_clips: int, num_frames: int,
                        options: sampling.SamplingOptions, timings: dict, opening: str = "bank",
                        seed: int = 0, traverse_dims: int = 0,
                        prior_preset: str = "tiny,far"):
  """The evaluate and report stages (in this process; options: `sampling.SamplingOptions`):
  `report.measure` writes the measurements and sample videos into WORKDIR/report, then
  `report.build` (what `python -m nwt_jax.report --workdir=WORKDIR` runs) writes the page.
  Returns (metrics, the bar table)."""

  print("\n=== evaluate", flush=True)
  start = time.perf_counter()
  models = generator.load_models(str(workdir / "dvae"), str(workdir / "prior"))
  height, width = models.frame_size
  probe = jobs.load_or_train_probe(str(workdir / "probe.npz"), height, width)
  clips = jobs.heldout_clips(num_clips, num_frames, height, width, models.prior.num_episodes)
  site = workdir / "report"
  metrics = report.measure(models, probe, clips, epath.Path(site), options=options,
                           opening=opening, seed=seed, traverse_dims=traverse_dims)
  (workdir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float) + "\n")
  timings["evaluate"] = time.perf_counter() - start

  start = time.perf_counter()
  report.build(str(workdir), num_clips=num_clips, num_frames=num_frames,
               intro=(f"A tiny dVAE and a {prior_preset} prior trained on this machine "
                      f"({os.cpu_count()} CPU cores), evaluated on {num_clips} held-out clips of "
                      f"{num_frames} frames by a probe that reads the truth back from frames."),
               extra={"seconds": timings})
  timings["report"] = time.perf_counter() - start
  return metrics, _bars(metrics)


def run(s: Settings) -> dict:
  """Every stage (each finished one is kept on a rerun); prints the bar table and returns the
  metrics."""
  workdir = pathlib.Path(s.workdir).resolve()
  workdir.mkdir(parents=True, exist_ok=True)
  timings, start = {}, time.perf_counter()
  summary = build_dataset(workdir / "tfds", num_train_clips=s.num_train_clips,
                          num_validation_clips=s.num_validation_clips,
                          num_frames=s.num_frames)
  timings["data"] = summary["seconds"]
  (workdir / "dataset_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  print("Dataset summary:")
  print(json.dumps(summary, indent=2))

  data = {"data.source": "tfds", "data.data_dir": workdir / "tfds",
          "data.tfds_name": summary["dataset"]}
  timings["dvae"] = _run("dvae", _train_args(
      "configs/dvae.py:tiny", workdir / "dvae",
      {**data, "train.num_steps": s.dvae_steps, "seed": s.seed}), workdir / "dvae.log")
  probe = _start_probe(workdir, *DEMO_FRAME_SIZE)
  timings["tokenize"] = _run("tokenize", [
      "nwt_jax.tokenize", f"--dvae_workdir={workdir / 'dvae'}", f"--output={workdir / 'tokens'}",
      "--source=tfds", f"--data_dir={workdir / 'tfds'}", f"--tfds_name={summary['dataset']}"],
      workdir / "tokenize.log")
  timings["prior"] = _run("prior", _train_args(
      f"configs/prior.py:{s.prior_preset}", workdir / "prior",
      {"dvae_workdir": workdir / "dvae", "data.tokens_dir": workdir / "tokens",
       "train.num_steps": s.prior_steps, "seed": s.seed}), workdir / "prior.log")
  # The demo's sampling settings travel with its prior: generate and evaluate use them when no
  # sampling flag is given.
  print(f"Sampling settings stored in {settings.save(str(workdir / 'prior'), s.options, s.opening)}")

  clip = jobs.heldout_clips(1, s.generate_frames, *DEMO_FRAME_SIZE)[0]
  switch = s.generate_frames // 2 / constants.FPS  # seconds
  _write_clip_audio(workdir / "heldout.wav", clip)
  timings["generate"] = _run("generate", [
      "nwt_jax.generate", f"--dvae_workdir={workdir / 'dvae'}",
      f"--prior_workdir={workdir / 'prior'}", f"--audio={workdir / 'heldout.wav'}",
      f"--output={workdir / 'generated.mp4'}",
      f"--episode_schedule=0:{clip['episode']},{switch:g}:{(clip['episode'] + 3) % 8}",
      f"--temperature={s.options.temperature}", f"--top_k={s.options.top_k}",
      f"--top_p={s.options.top_p}", f"--audio_guidance={s.options.audio_guidance}",
      f"--change_threshold={s.options.change_threshold}", f"--opening={s.opening}",
      f"--seed={s.seed}"],
      workdir / "generate.log")

  _wait_for_probe(probe, workdir)
  metrics, table = evaluate_and_report(
      workdir, num_clips=s.eval_clips, num_frames=s.eval_frames,
      options=s.options, opening=s.opening, seed=s.seed, traverse_dims=s.traverse_dims,
      timings=timings, prior_preset=s.prior_preset)
  timings["total"] = time.perf_counter() - start
  print("\n=== metrics (held-out synthetic clips)")
  width = max(len(r["name"]) for r in table)
  for r in table:
    print(f"{r['name']:<{width}}  {r['value']:>8}  {r['bar']:<16} {r['status']}")
  print("\nseconds per stage: " + ", ".join(f"{k} {v:.0f}" for k, v in timings.items()))
  print(f"Report: {workdir / 'report' / 'report.html'}")
  return metrics
