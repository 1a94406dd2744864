"""Your own videos to a trained talking head and an honest report (`python -m nwt_jax.footage`),
as a library.

    python -m nwt_jax.footage --videos=$HOME/videos --workdir=runs/mine [--preset=tiny|base|paper]
        [--crop=face|center] [--dvae_steps=N --prior_steps=N]

`--videos` holds one folder per episode (speaker or setting): `alice/*.mp4`, `bob/*.mov`, ... The
command first checks the videos (before any compute; nothing is written on a refusal), then
chains the commands a user would run, each in its own process with its log in WORKDIR:

  data      tfds build tfds_builders/nwt_clips (folder config at the preset's frame size,
            face or centre crop, split by time within each video) into WORKDIR/tfds;
  dvae      python -m nwt_jax.train --config=configs/dvae.py:<preset> on that dataset;
  tokenize  python -m nwt_jax.tokenize (the frozen dVAE's codes of every clip);
  prior     python -m nwt_jax.train --config=configs/prior.py:<preset>,far on those codes;
  generate  python -m nwt_jax.generate on a held-out clip's audio, its episode given by name;
  report    (in this process) WORKDIR/report/report.html: reconstruction PSNR/SSIM and code
            usage, the prior's held-out NLL with its own vs another clip's audio of the same
            speaker, the probe-free sync score (`nwt_jax.evaluation.sync`) of real, reconstructed
            and generated held-out clips with a shuffled-audio control, and a side-by-side video
            (real | reconstructed | generated from the same audio).

A rerun resumes: a stage that finished with the same arguments (WORKDIR/stages.json) is skipped;
when a stage reruns, the outputs of the stages after it are made again.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
import shutil
import subprocess
import sys
import time
import wave

import jax
import jax.numpy as jnp
import numpy as np

from nwt_jax import errors
from nwt_jax import presets
from nwt_jax.data import audio as audio_lib
from nwt_jax.data import constants
from nwt_jax.data import episodes as episodes_lib
from nwt_jax.data import faces
from nwt_jax.data import input_pipeline
from nwt_jax.data import video_io
from nwt_jax.evaluation import jobs
from nwt_jax.evaluation import metrics
from nwt_jax.evaluation import report
from nwt_jax.evaluation import sync
from nwt_jax.inference import controls
from nwt_jax.inference import generator
from nwt_jax.inference import sampling
from nwt_jax.training import losses

REPO = pathlib.Path(__file__).resolve().parents[2]
VIDEO_SUFFIXES = (".mp4", ".mov", ".mkv", ".webm")  # what the nwt_clips folder config reads
CROPS = ("face", "center")
STAGES = ("data", "dvae", "tokenize", "prior", "generate", "report")


@dataclasses.dataclass(frozen=True)
class Preset:
  """One size of the whole pipeline."""
  dvae: str  # --config of the dVAE
  prior: str  # --config of the prior
  frame_size: tuple[int, int]  # (H, W): the dataset's frames, the dVAE's and the output's
  dvae_steps: int  # default dVAE training steps
  prior_steps: int  # default prior training steps


# Step counts: tiny as the measured CPU recipes (configs/dvae.py: 1000 steps < 15 min on 2 cores;
# the prior at half its config's 2000), base and paper as their configs' schedules, shortened for
# base to what one GPU does in a few hours.
PRESETS = {
    "tiny": Preset("configs/dvae.py:tiny", "configs/prior.py:tiny,far", (64, 56), 1000, 1000),
    "base": Preset("configs/dvae.py:base", "configs/prior.py:base,far", (128, 112), 20_000,
                   20_000),
    "paper": Preset("configs/dvae.py:paper_mem16", "configs/prior.py:paper,far", (256, 224),
                    300_000, 500_000),
}


@dataclasses.dataclass(frozen=True)
class Settings:
  """What the command builds and trains (its flags)."""
  videos: str  # <videos>/<episode>/<video files>
  workdir: str = "runs/mine"  # the dataset, both runs, the generated video and the report
  preset: str = ""  # tiny | base | paper; '': tiny on a CPU, base on an accelerator
  crop: str = "face"  # face: a crop centred on the detected face; center: a plain centre crop
  num_frames: int = 32  # frames per clip (30 fps)
  dvae_steps: int = 0  # 0: the preset's
  prior_steps: int = 0  # 0: the preset's
  eval_clips: int = 8  # held-out clips the report measures (at most)
  dvae_overrides: tuple[str, ...] = ()  # more dVAE config fields, 'field=value'
  prior_overrides: tuple[str, ...] = ()  # more prior config fields, 'field=value'
  episode: str = ""  # the generate stage's episode (name or id); '': the held-out clip's own
  options: sampling.SamplingOptions = sampling.SamplingOptions(temperature=0.7)
  opening: str = "bank"  # a fresh window's first frame (Generator)
  seed: int = 0  # the trainings' seed and the sampling seed


# ----------------------------------------------------------------------------------------------
# Checks before any compute


@dataclasses.dataclass(frozen=True)
class Videos:
  """What `inspect_videos` found: episode names (sorted), usable files and refused ones."""
  episodes: list[str]
  usable: list[tuple[str, pathlib.Path, float]]  # (episode, path, seconds)
  refused: list[tuple[str, str]]  # (episode/file, why)


def inspect_videos(videos: str, num_frames: int) -> Videos:
  """Lists and probes `videos`/<episode>/<file>; raises one clear InvalidInput when nothing
  there can make a training and a held-out clip (each refused file named with its reason)."""
  root = pathlib.Path(videos).expanduser()
  if not root.is_dir():
    raise errors.MissingInput(f"--videos={videos}: no such directory")
  folders = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
  files = [(d.name, p) for d in folders for p in sorted(d.iterdir())
           if (p.is_file() or p.is_symlink()) and not p.name.startswith(".")]
  if not files:
    loose = [p.name for p in root.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES]
    hint = (f" ({len(loose)} video(s) lie directly in it: move them into a folder named after "
            f"the speaker, e.g. {root}/alice/)" if loose else "")
    raise errors.InvalidInput(f"--videos={videos}: no episode folders with files; expected "
                              f"{videos}/<episode>/<video>{'|'.join(VIDEO_SUFFIXES)}{hint}")
  need = 2 * num_frames / constants.FPS  # a training clip and a held-out one
  usable, refused = [], []
  for episode, path in files:
    name = f"{episode}/{path.name}"
    if path.suffix.lower() not in VIDEO_SUFFIXES:
      refused.append((name, f"not a video file ({'|'.join(VIDEO_SUFFIXES)})"))
      continue
    try:
      info = video_io.probe(str(path))
    except video_io.VideoIOError as e:
      refused.append((name, f"unreadable ({str(e).rpartition(': ')[2][:80]})"))
      continue
    if not info.has_video:
      refused.append((name, "audio only: no video stream"))
    elif not info.has_audio:
      refused.append((name, "no audio stream"))
    elif 0 < info.duration < need:
      frames = max(1, round(info.duration * constants.FPS))
      refused.append((name, f"{frames} frame(s), {info.duration:.2f} s: shorter than two clips "
                            f"of {num_frames} frames ({need:.2f} s)"))
    else:
      usable.append((episode, path, info.duration))
  if not usable:
    raise errors.InvalidInput(
        f"--videos={videos}: no usable video ("
        + "; ".join(f"{n}: {why}" for n, why in refused)
        + f"); each needs a video and an audio stream and >= {need:.2f} s")
  episodes = sorted({e for e, _, _ in usable})
  return Videos(episodes, usable, refused)


def check_faces(found: Videos, videos: str, *, frames_per_video: int = 6) -> dict[str, int]:
  """--crop=face: a face must be found in some of the sampled frames of some usable video;
  returns {episode/file: frames with a face}. Reads `frames_per_video` frames at 1 fps."""
  counts = {}
  for episode, path, _ in found.usable:
    info = video_io.probe(str(path))
    scale = min(1.0, faces.DETECT_SIZE / max(info.height, info.width, 1))
    height = max(2, round(info.height * scale) // 2 * 2)
    width = max(2, round(info.width * scale) // 2 * 2)
    try:
      frames = next(video_io.iter_video(str(path), fps=1, height=height, width=width,
                                        chunk_frames=frames_per_video))
    except (video_io.VideoIOError, StopIteration):
      continue
    counts[f"{episode}/{path.name}"] = int((~np.isnan(faces.detect_faces(frames)).any(-1)).sum())
  if not any(counts.values()):
    raise errors.InvalidInput(
        f"--crop=face: no face found in {videos} ({len(found.usable)} video(s), up to "
        f"{frames_per_video} frames each at 1 fps); pass --crop=center for a centre crop")
  return counts


# ----------------------------------------------------------------------------------------------
# Stages


def fingerprint(found: Videos) -> str:
  """'videos:<hash>' of the usable files' names, sizes and modification times: a rerun after
  videos were added, removed or replaced builds the dataset again."""
  h = hashlib.sha1()
  for episode, path, _ in found.usable:
    stat = path.stat()
    h.update(f"{episode}/{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
  return f"videos:{h.hexdigest()[:16]}"


def dataset_name(preset: str, crop: str, num_frames: int) -> str:
  """The folder build's config name: its size, crop and clip length (TFDS takes a built name as
  done, whatever it holds)."""
  return f"folder_{preset}_{crop}_t{num_frames}"


def builder_config(preset: str, crop: str, num_frames: int) -> dict:
  """The `--config` JSON of the nwt_clips folder build."""
  height, width = PRESETS[preset].frame_size
  return {"name": dataset_name(preset, crop, num_frames), "source": "folder", "size": preset,
          "crop": crop, "num_frames": num_frames, "height": height, "width": width,
          "description": f"{crop}-cropped clips of the user's videos at {height}x{width}."}


def _error_line(log_path: pathlib.Path) -> str | None:
  """The child's own message: its last `error: ...` line, else the last `SomethingError: ...`
  line of a traceback."""
  lines = log_path.read_text(errors="replace").splitlines()
  for line in reversed(lines):
    if line.startswith("error: "):
      return line[len("error: "):]
  for line in reversed(lines):
    head = line.split(":", 1)[0]
    if head.endswith(("Error", "Exception")) and " " not in head:
      return line
  return None


def _worth_showing(line: str) -> bool:
  keep = ("steps/s", "eval", "Resumed", "error", "Error", "Wrote", "Done", "build summary",
          "shards", "skipping", "probe")
  return any(k in line for k in keep) and "WARNING: All log messages" not in line


def run_stage(stage: str, command: list[str], log_path: pathlib.Path) -> float:
  """Runs `command` (its output kept in log_path, progress lines shown); returns its seconds.
  A failure is one UserError carrying the child's own error line."""
  print(f"\n=== {stage}: {' '.join(command)}", flush=True)
  start = time.perf_counter()
  env = dict(os.environ, PYTHONUNBUFFERED="1")
  with open(log_path, "w") as log:
    proc = subprocess.Popen([sys.executable, *command], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
      log.write(line)
      if _worth_showing(line):
        print(line.rstrip(), flush=True)
  if proc.wait():
    reason = _error_line(log_path)
    raise errors.UserError(f"the {stage} stage failed" + (f": {reason}" if reason else
                           f" (exit {proc.returncode})") + f" (log: {log_path})")
  seconds = time.perf_counter() - start
  print(f"=== {stage}: {seconds:.0f} s", flush=True)
  return seconds


class StageRecord:
  """WORKDIR/stages.json: {stage: {"args": [...], "seconds": s}} of the stages that finished."""

  def __init__(self, workdir: pathlib.Path):
    self.path = workdir / "stages.json"
    self.done = json.loads(self.path.read_text()) if self.path.exists() else {}

  def finished(self, stage: str, args: list[str]) -> bool:
    return self.done.get(stage, {}).get("args") == args

  def record(self, stage: str, args: list[str], seconds: float) -> None:
    self.done[stage] = {"args": args, "seconds": round(seconds, 1)}
    self.path.write_text(json.dumps(self.done, indent=1) + "\n")

  def forget_after(self, stage: str) -> None:
    for later in STAGES[STAGES.index(stage) + 1:]:
      self.done.pop(later, None)
    self.path.write_text(json.dumps(self.done, indent=1) + "\n")


def _stage(record: StageRecord, stage: str, command: list[str], workdir: pathlib.Path,
           outputs: tuple[pathlib.Path, ...] = (), timings: dict | None = None,
           inputs: tuple[str, ...] = ()) -> None:
  """Runs a stage unless it finished with this command (and `inputs`, a fingerprint of what it
  reads); a rerun first removes `outputs`: its own old output and what the later stages made
  from it."""
  key = command + list(inputs)
  if record.finished(stage, key):
    print(f"=== {stage}: done before (kept; WORKDIR/stages.json)", flush=True)
    return
  record.forget_after(stage)
  for path in outputs:
    if path.exists():
      print(f"    removing {path} (made from the previous {stage} output)", flush=True)
      shutil.rmtree(path) if path.is_dir() else path.unlink()
  seconds = run_stage(stage, command, workdir / f"{stage}.log")
  record.record(stage, key, seconds)
  if timings is not None:
    timings[stage] = seconds


def default_preset() -> str:
  """tiny on a CPU, base where JAX finds an accelerator (asked in a child process, so this one
  holds no accelerator memory while the stages run)."""
  proc = subprocess.run([sys.executable, "-c", "import jax; print(jax.default_backend())"],
                        capture_output=True, text=True, check=False)
  backend = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "cpu"
  return "tiny" if backend == "cpu" else "base"


def read_clips(data_dir: str, tfds_name: str, split: str, limit: int) -> list[dict]:
  """Up to `limit` clips of a split in stored order (file, then time): video, audio int16,
  episode, clip_id. Reads TFRecord and ArrayRecord builds alike."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top  (GPU machines lack it)
  builder = tfds.core.read_only_builder.builder_from_files(tfds_name, data_dir=data_dir)
  if builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD:
    source = builder.as_data_source(split=split)
    examples = [source[i] for i in range(min(limit, len(source)))]
  else:
    examples = list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)
                                  .take(limit)))
  out = []
  for e in examples:
    clip_id = e["clip_id"]
    out.append({"video": np.asarray(e["video"]), "audio": np.asarray(e["audio"]),
                "episode": int(e["episode"]),
                "clip_id": clip_id.decode() if isinstance(clip_id, bytes) else str(clip_id)})
  return out


def dataset_summary(data_dir: pathlib.Path, name: str) -> dict:
  info = episodes_lib.dataset_info(str(data_dir), f"nwt_clips/{name}")
  return {
      "dataset": f"nwt_clips/{name}", "data_dir": str(data_dir),
      "splits": {s: info.splits[s].num_examples for s in info.splits},
      "clip_shape": list(info.features["video"].shape),
      "episodes": episodes_lib.names_of(info) or info.features["episode"].num_classes,
      "file_format": getattr(info.file_format, "value", str(info.file_format)),
      "build_summary": dict((info.metadata or {}).get("build_summary", {})),
  }


def _write_wav(path: pathlib.Path, audio: np.ndarray) -> None:
  with wave.open(str(path), "wb") as f:
    f.setnchannels(1)
    f.setsampwidth(2)
    f.setframerate(constants.SAMPLE_RATE)
    f.writeframes(np.asarray(audio).astype("<i2").tobytes())


def _overrides(fields: dict, extra: tuple[str, ...]) -> list[str]:
  return [f"--config.{k}={v}" for k, v in fields.items()] + [f"--config.{x}" for x in extra]


def train_commands(s: Settings, preset: str, workdir: pathlib.Path, name: str,
                   num_episodes: int, validation_clips: int) -> dict[str, list[str]]:
  """The dvae, tokenize and prior commands."""
  p = PRESETS[preset]
  dvae_steps, prior_steps = s.dvae_steps or p.dvae_steps, s.prior_steps or p.prior_steps
  dvae_default, prior_default = presets.load_config(p.dvae), presets.load_config(p.prior)
  dvae = {"data.source": "tfds", "data.data_dir": workdir / "tfds",
          "data.tfds_name": f"nwt_clips/{name}", "dvae.num_episodes": num_episodes,
          "train.num_steps": dvae_steps, "optim.decay_steps": dvae_steps,
          "train.eval_every": _cadence(dvae_steps, dvae_default.train.eval_every),
          "train.checkpoint_every": _cadence(dvae_steps, dvae_default.train.checkpoint_every),
          "train.eval_batch_size": max(1, min(dvae_default.train.eval_batch_size,
                                              validation_clips)),
          "train.num_samples": max(1, min(dvae_default.train.num_samples, validation_clips)),
          "seed": s.seed}
  prior = {"dvae_workdir": workdir / "dvae", "data.tokens_dir": workdir / "tokens",
           "train.num_steps": prior_steps, "optim.decay_steps": prior_steps,
           "train.eval_every": _cadence(prior_steps, prior_default.train.eval_every),
           "train.checkpoint_every": _cadence(prior_steps, prior_default.train.checkpoint_every),
           "train.eval_batch_size": max(1, min(prior_default.train.eval_batch_size,
                                               validation_clips)),
           "seed": s.seed}
  return {
      "dvae": ["-m", "nwt_jax.train", f"--config={p.dvae}", f"--workdir={workdir / 'dvae'}",
               *_overrides(dvae, s.dvae_overrides)],
      "tokenize": ["-m", "nwt_jax.tokenize", f"--dvae_workdir={workdir / 'dvae'}",
                   f"--output={workdir / 'tokens'}"],
      "prior": ["-m", "nwt_jax.train", f"--config={p.prior}", f"--workdir={workdir / 'prior'}",
                *_overrides(prior, s.prior_overrides)],
  }


def _cadence(steps: int, every: int) -> int:
  """An eval or checkpoint cadence for a run of `steps`: the preset's, at most the run."""
  return max(1, min(every, steps))


def run(s: Settings) -> dict:
  """Every stage (each finished one kept on a rerun); returns the report's metrics."""
  if s.crop not in CROPS:
    raise errors.InvalidInput(f"--crop={s.crop}: use one of {', '.join(CROPS)}")
  if s.preset and s.preset not in PRESETS:
    raise errors.InvalidInput(f"--preset={s.preset}: use one of {', '.join(PRESETS)}")
  found = inspect_videos(s.videos, s.num_frames)  # before anything is written
  print(f"Videos: {len(found.usable)} usable in {len(found.episodes)} episode(s) "
        f"({', '.join(found.episodes)})" + (f"; refused: " + "; ".join(
            f"{n} ({why})" for n, why in found.refused) if found.refused else ""), flush=True)
  if s.crop == "face":
    counts = check_faces(found, s.videos)
    print("Faces found (frames of those sampled): " + ", ".join(
        f"{k} {v}" for k, v in counts.items()), flush=True)
  preset = s.preset or default_preset()
  print(f"Preset: {preset} ({'x'.join(map(str, PRESETS[preset].frame_size))} frames)",
        flush=True)

  workdir = pathlib.Path(s.workdir).resolve()
  created = not workdir.exists()
  workdir.mkdir(parents=True, exist_ok=True)
  record = StageRecord(workdir)
  timings, start = {}, time.perf_counter()
  name = dataset_name(preset, s.crop, s.num_frames)
  data_dir = workdir / "tfds"
  data_cmd = ["-m", "tensorflow_datasets.scripts.cli.main", "build",
              str(REPO / "tfds_builders" / "nwt_clips"), f"--data_dir={data_dir}",
              f"--manual_dir={pathlib.Path(s.videos).expanduser().resolve()}",
              f"--config={json.dumps(builder_config(preset, s.crop, s.num_frames))}"]
  try:
    _stage(record, "data", data_cmd, workdir, timings=timings, inputs=(fingerprint(found),),
           outputs=(data_dir / "nwt_clips" / name, workdir / "dvae", workdir / "tokens",
                    workdir / "prior"))
  except errors.UserError:
    if created:  # nothing of a failed first build is left
      shutil.rmtree(workdir, ignore_errors=True)
    raise
  summary = dataset_summary(data_dir, name)
  (workdir / "dataset_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
  print("Dataset summary:\n" + json.dumps(summary, indent=2), flush=True)
  if not summary["splits"].get("train") or not summary["splits"].get("validation"):
    raise errors.InvalidInput(f"the dataset {summary['dataset']} has splits {summary['splits']}; "
                              "both need clips: give longer or more videos")
  names = episodes_lib.names_of(episodes_lib.dataset_info(str(data_dir), f"nwt_clips/{name}"))
  num_episodes = len(names) if names else len(found.episodes)

  commands = train_commands(s, preset, workdir, name, num_episodes,
                            summary["splits"]["validation"])
  _stage(record, "dvae", commands["dvae"], workdir, timings=timings,
         outputs=(workdir / "tokens", workdir / "prior"))
  _stage(record, "tokenize", commands["tokenize"], workdir, timings=timings,
         outputs=(workdir / "prior",))
  _stage(record, "prior", commands["prior"], workdir, timings=timings)

  held_out = read_clips(str(data_dir), f"nwt_clips/{name}", "validation", 1)[0]
  _write_wav(workdir / "heldout.wav", held_out["audio"])
  episode = s.episode or (names[held_out["episode"]] if names else str(held_out["episode"]))
  site = workdir / "report"
  site.mkdir(exist_ok=True)
  generate_cmd = [
      "-m", "nwt_jax.generate", f"--dvae_workdir={workdir / 'dvae'}",
      f"--prior_workdir={workdir / 'prior'}", f"--audio={workdir / 'heldout.wav'}",
      f"--output={site / 'generated.mp4'}", f"--episode={episode}",
      f"--temperature={s.options.temperature}", f"--top_k={s.options.top_k}",
      f"--top_p={s.options.top_p}", f"--audio_guidance={s.options.audio_guidance}",
      f"--change_threshold={s.options.change_threshold}", f"--opening={s.opening}",
      f"--seed={s.seed}"]
  _stage(record, "generate", generate_cmd, workdir, timings=timings)

  print("\n=== report", flush=True)
  report_start = time.perf_counter()
  clips = pick_clips(read_clips(str(data_dir), f"nwt_clips/{name}", "validation",
                                4 * s.eval_clips), s.eval_clips)
  results = evaluate_and_report(workdir, clips, names=names, options=s.options,
                                opening=s.opening, seed=s.seed, preset=preset,
                                summary=summary, timings=timings)
  timings["report"] = time.perf_counter() - report_start
  timings["total"] = time.perf_counter() - start
  print_table(results["table"])
  print("\nseconds per stage (this run): " + ", ".join(f"{k} {v:.0f}"
                                                       for k, v in timings.items()))
  print(f"Report: {site / 'report.html'}", flush=True)
  return results["metrics"]


def pick_clips(clips: list[dict], count: int) -> list[dict]:
  """Up to `count` clips, taken in turn from each episode, consecutive clips of an episode kept
  together (so that an episode's clips pair up for the same-speaker audio control)."""
  by_episode = {}
  for clip in clips:
    by_episode.setdefault(clip["episode"], []).append(clip)
  chosen, depth = [], 0
  while len(chosen) < count and any(len(v) > depth for v in by_episode.values()):
    for episode in sorted(by_episode):
      for clip in by_episode[episode][depth:depth + 2]:
        if len(chosen) < count:
          chosen.append(clip)
    depth += 2
  return sorted(chosen, key=lambda c: (c["episode"], c["clip_id"]))


# ----------------------------------------------------------------------------------------------
# The report


def mouth_boxes(frames: np.ndarray, *, every: int = 4) -> tuple[np.ndarray, bool]:
  """Per-frame mouth boxes [T, 4] of a clip (faces.mouth_box of the smoothed detected face, on
  every `every`-th frame), and whether a face was found (else `sync.fallback_mouth_box`)."""
  sampled = faces.detect_faces(frames[::every])
  if np.isnan(sampled).any(axis=-1).all():
    height, width = frames.shape[1:3]
    return np.broadcast_to(sync.fallback_mouth_box(height, width), (len(frames), 4)), False
  smooth = faces.smooth_boxes(sampled)
  times = np.arange(len(frames)) / every
  per_frame = np.stack([np.interp(times, np.arange(len(smooth)), smooth[:, k])
                        for k in range(4)], axis=-1)
  return faces.mouth_box(per_frame), True


def prior_nll(models: generator.Models, clips: list[dict], codes: list[np.ndarray]) -> dict:
  """The prior's held-out NLL (nats per code) of each clip's first window of codes with its own
  audio and with other audio of the same speaker: the next held-out clip of its episode, or,
  for an episode with one held-out clip, the same clip's audio rolled by half a window (another
  moment of the same voice). The style z is the posterior mean of the clip's codes."""
  prior, variables = models.prior, {"params": models.prior_params}
  window = min(models.window_frames, min(len(c) for c in codes))
  rows = constants.MEL_PER_FRAME * window

  @jax.jit
  def nll(codes, mel, episode):
    mu, _ = prior.apply(variables, codes, method=prior.encode_style)
    logits, _ = prior.apply(variables, codes, mel, episode, train=False, z=mu)
    return losses.code_cross_entropy(logits, codes).mean(axis=(1, 2, 3, 4))  # [B]

  mels = [input_pipeline.mel_rows(c["audio"], 0, rows) for c in clips]
  others = []
  for i, clip in enumerate(clips):
    same = [j for j, c in enumerate(clips) if c["episode"] == clip["episode"] and j != i]
    later = [j for j in same if j > i] or same
    others.append(mels[later[0]] if later else np.roll(mels[i], rows // 2, axis=0))
  batch_codes = jnp.asarray(np.stack([c[:window] for c in codes]))
  episodes = jnp.asarray([c["episode"] for c in clips], jnp.int32)
  own = np.asarray(nll(batch_codes, jnp.asarray(np.stack(mels)), episodes))
  other = np.asarray(nll(batch_codes, jnp.asarray(np.stack(others)), episodes))
  return {"nll": float(own.mean()), "nll_other_audio": float(other.mean()),
          "audio_gap": float((other - own).mean()),
          "audio_gap_positive_share": float((other > own).mean()), "nll_windows": len(clips)}


def evaluate_and_report(workdir: pathlib.Path, clips: list[dict], *, names: list[str] | None,
                        options: sampling.SamplingOptions, opening: str, seed: int,
                        preset: str, summary: dict, timings: dict) -> dict:
  """The report stage: metrics of the held-out `clips` and WORKDIR/report/report.html."""

  models = generator.load_models(str(workdir / "dvae"), str(workdir / "prior"))
  dvae = models.dvae
  codes, recons = jobs.dvae_roundtrip(models, clips)
  originals = np.concatenate([c["video"] for c in clips])
  out = metrics.reconstruction_metrics(originals, np.concatenate(recons),
                                       np.concatenate(codes), dvae.num_codes)
  out.update(prior_nll(models, clips, codes))

  # Generated from each held-out clip's audio, in its own episode, style copied from the clip.
  gen = generator.Generator(models, options, opening=opening)
  generated = []
  for k, clip in enumerate(clips):
    mel, num_frames = audio_lib.frame_features(clip["audio"].astype(np.float32) / 32768.0)
    episodes = np.full(num_frames, clip["episode"], np.int32)
    z = controls.reference_style(models, clip["video"])[None]
    frames = gen.frames(gen.codes(mel, episodes, z, seed + k), episodes)[0]
    generated.append(frames)

  boxes, found = zip(*(mouth_boxes(c["video"]) for c in clips))
  for what, videos in (("real", [c["video"] for c in clips]), ("reconstructed", recons),
                       ("generated", generated)):
    score = sync.clip_sync([{"video": v, "audio": c["audio"]} for v, c in zip(videos, clips)],
                           list(boxes))
    out.update({f"sync_{what}_{k}": v for k, v in score.items()})
  out["mouth_found_clips"] = int(sum(found))
  out["clips"] = len(clips)
  out["frame_size"] = list(models.frame_size)

  site = workdir / "report"
  site.mkdir(exist_ok=True)
  side = np.concatenate([clips[0]["video"], recons[0], generated[0]], axis=2)  # [T, H, 3W, 3]
  video_io.write_video(str(site / "side_by_side.mp4"), side, fps=constants.FPS,
                       audio=clips[0]["audio"])
  first = names[clips[0]["episode"]] if names else str(clips[0]["episode"])
  videos = [(f"held-out clip {clips[0]['clip_id']} ({first}): real | reconstructed | "
             "generated from its audio", "side_by_side.mp4")]
  if (site / "generated.mp4").exists():
    videos.append(("python -m nwt_jax.generate on a held-out clip's audio", "generated.mp4"))
  grid_rows = []
  for c, r, g in zip(clips[:4], recons[:4], generated[:4]):
    grid_rows += [c["video"][::8][:4], r[::8][:4], g[::8][:4]]
  report.save_png(str(site / "heldout.png"), report.grid(grid_rows))
  images = [("held-out frames: real, reconstructed, generated (rows, per clip)", "heldout.png")]
  for stage, tags in (("dvae", ("train/loss", "eval/psnr", "eval/usage_min")),
                      ("prior", ("train/loss", "eval/nll", "eval/audio_gap"))):
    scalars = report.read_scalars(str(workdir / stage))
    curves = {tag: scalars[tag] for tag in tags if tag in scalars}
    if curves:
      report.plot_curves(str(site / f"{stage}_curves.png"), curves, title=f"{stage} training")
      images.append((f"{stage} training curves", f"{stage}_curves.png"))
  table = metric_rows(out)
  (workdir / "metrics.json").write_text(json.dumps(out, indent=2, default=float) + "\n")
  # The page is `python -m nwt_jax.report`'s (training curves, code usage, the explorer), with
  # this run's own sections first.
  report.build(str(workdir), output=str(site), num_clips=len(clips), intro=(
      f"The {preset} dVAE and prior trained on {summary['dataset']} ({summary['splits']}), "
      f"measured on {len(clips)} held-out clips. There is no ground truth here: reconstruction, "
      "code usage, the prior's likelihood with its own vs another clip's audio, and a "
      "probe-free audio-visual sync score with a shuffled-audio control."),
      sections=sections(table, videos, images, {"metrics": out, "dataset": summary,
                                                "seconds": timings}))
  return {"metrics": out, "table": table}


def sections(table: list[dict], videos: list[tuple[str, str]], images: list[tuple[str, str]],
             details: dict) -> list[report.Section]:
  """The footage report's sections (`nwt_jax.evaluation.report.Section`): what
  `python -m nwt_jax.report` shows for a footage run, and this command's own page."""
  return [
      report.Section("Metrics (held-out clips)", text=(
          "Sync r: Pearson r between speech activity (|change| of the log RMS envelope) and the "
          "mouth region's motion energy, pooled over clips; the control pairs each clip's video "
          "with another clip's audio. NLL in nats per code."), table=table),
      report.Section("Videos", videos=videos),
      report.Section("Frames and training", images=images),
      report.Section("Details", pre=json.dumps(details, indent=2, default=_jsonable)),
  ]


def report_sections(workdir: str) -> list[report.Section]:
  """The sections of a finished footage run (WORKDIR/metrics.json and the media in
  WORKDIR/report), rebuilt without computing anything: for `python -m nwt_jax.report` to show a
  footage run (its media paths are relative to WORKDIR/report)."""
  root = pathlib.Path(workdir)
  path = root / "metrics.json"
  if not path.exists():
    raise errors.MissingInput(f"No metrics.json in {workdir}: not a finished footage run "
                              "(python -m nwt_jax.footage)")
  out = json.loads(path.read_text())
  site = root / "report"
  videos = [(caption, name) for caption, name in (
      ("held-out clip: real | reconstructed | generated from its audio", "side_by_side.mp4"),
      ("python -m nwt_jax.generate on a held-out clip's audio", "generated.mp4"))
            if (site / name).exists()]
  images = [(caption, name) for caption, name in (
      ("held-out frames: real, reconstructed, generated (rows, per clip)", "heldout.png"),
      ("dvae training curves", "dvae_curves.png"), ("prior training curves", "prior_curves.png"))
            if (site / name).exists()]
  summary = root / "dataset_summary.json"
  details = {"metrics": out}
  if summary.exists():
    details["dataset"] = json.loads(summary.read_text())
  return sections(metric_rows(out), videos, images, details)


def _jsonable(x):
  if isinstance(x, np.ndarray):
    return x.tolist()
  if isinstance(x, (np.floating, np.integer)):
    return x.item()
  return str(x)


def metric_rows(m: dict) -> list[dict]:
  """The report's table: {'name', 'value', 'bar', 'status'} rows (bars are checks of sense,
  not of quality: real footage has no truth to aim at)."""
  rows = []

  def row(name, value, bar="", ok=None, fmt="{:.3f}"):
    status = "" if ok is None else ("pass" if ok else "fail")
    rows.append({"name": name, "value": fmt.format(value), "bar": bar, "status": status})

  row("dVAE PSNR (dB, held-out)", m["psnr"], fmt="{:.2f}")
  row("dVAE SSIM", m["ssim"])
  row("codes in use, least-used head", m["usage_min"])
  row("prior NLL, own audio (nats/code)", m["nll"])
  row("prior NLL, another clip's audio, same speaker", m["nll_other_audio"])
  gap = m["audio_gap"]
  row("audio gap (other - own)", gap, "> 0", None if np.isnan(gap) else gap > 0)
  for what in ("real", "reconstructed", "generated"):
    r, control = m[f"sync_{what}_r"], m[f"sync_{what}_shuffled_r"]
    row(f"sync r, {what} (speech activity vs mouth motion)", r,
        "> shuffled" if what != "reconstructed" else "",
        None if what == "reconstructed" or np.isnan(r) else r > control)
    row(f"sync r, {what}, shuffled-audio control", control)
    row(f"best offset, {what} (frames, video after audio)", m[f"sync_{what}_best_offset"],
        fmt="{:d}")
  return rows


def print_table(table: list[dict]) -> None:
  print("\n=== report (held-out clips)")
  width = max(len(r["name"]) for r in table)
  for r in table:
    print(f"{r['name']:<{width}}  {r['value']:>8}  {r['bar']:<12} {r['status']}")
