"""Clips per second of `hearflow prepare` against the released preprocessing recipe.

Both run on the same generated clips (10 s, 640 x 360, 30 fps H.264 with 44.1 kHz
stereo AAC, x264's default settings: B-frames, a keyframe every 250 frames) in the
same run, one thread per worker:

- released recipe (restated here from its description; see `released_recipe`):
  OpenCV seeks by frame index to the middle frame and again to the next one (each
  seek decodes from the preceding keyframe), Farnebäck flow at full resolution,
  the whole audio track decoded and resampled to 22,050 Hz, the 3-s window cut out,
  and the flow written as two 8-bit JPEGs;
- hearflow prepare with 1 worker (Farnebäck and DIS) and with 2 workers;
- for information, where hearflow's per-video time goes, step by step.

Goals (issue 3): >= 2x the released recipe with 1 worker and Farnebäck, >= 3x with
DIS, >= 1.8x from 1 to 2 workers, < 500 MB resident per worker. Each configuration
runs `--repeats` times, the configurations alternating (order rotated each repeat), and
the fastest run counts (the machine may be shared); the per-video CPU ratios are also
printed repeat by repeat, each against the released recipe's run of the same repeat.

    python3 bench/prepare.py                # 16 clips, best of 2
    python3 bench/prepare.py --clips 32 --repeats 3 --workdir /tmp/hearflow-bench
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import cv2
import numpy as np
from scipy.io import wavfile

from hearflow.config import DataConfig
from hearflow.media.flow import FARNEBACK
from hearflow.prepare import WorkerPool, prepare, prepare_video

WIDTH, HEIGHT, FPS, SECONDS, AUDIO_RATE = 640, 360, 30, 10, 44100
UNIQUE_CLIPS = 4  # generating a clip takes longer than preparing it; the rest are copies


# ---------------------------------------------------------------- the clips


def make_clip(path: Path, seed: int, width: int = WIDTH, height: int = HEIGHT, seconds: float = SECONDS) -> None:
    """A panning textured background, two moving blobs, film grain, and stereo noise + tones."""
    rng = np.random.default_rng(seed)
    texture = cv2.GaussianBlur(rng.integers(0, 255, (height * 2, width * 2, 3), dtype=np.uint8), (0, 0), 2.5)
    texture = cv2.normalize(texture, None, 0, 255, cv2.NORM_MINMAX)
    blob = cv2.GaussianBlur(rng.integers(0, 255, (height // 4, height // 4, 3), dtype=np.uint8), (0, 0), 1.5)
    n_frames = int(seconds * FPS)
    container = av.open(str(path), "w")
    video = container.add_stream("libx264", rate=FPS)
    video.width, video.height, video.pix_fmt = width, height, "yuv420p"
    audio = container.add_stream("aac", rate=AUDIO_RATE)
    audio.layout = "stereo"
    for i in range(n_frames):
        x, y = int(i * 1.5) % width, int(i * 0.7) % height
        frame = texture[y : y + height, x : x + width].copy()
        for k, speed in enumerate((3, -2)):
            bx = int((width / 3 + speed * i) % (width - blob.shape[1]))
            by = height // 4 + k * height // 3
            frame[by : by + blob.shape[0], bx : bx + blob.shape[1]] = blob
        grain = rng.normal(0, 4, frame.shape)
        frame = np.clip(frame + grain, 0, 255).astype(np.uint8)
        for packet in video.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
            container.mux(packet)
    for packet in video.encode():
        container.mux(packet)
    n = int(seconds * AUDIO_RATE)
    t = np.arange(n) / AUDIO_RATE
    sound = 0.05 * rng.standard_normal((2, n)) + 0.2 * np.sin(2 * np.pi * np.array([[330.0], [440.0]]) * t)
    for start in range(0, n, 4096):
        chunk = av.AudioFrame.from_ndarray(np.ascontiguousarray(sound[:, start : start + 4096], np.float32),
                                           format="fltp", layout="stereo")
        chunk.sample_rate, chunk.pts, chunk.time_base = AUDIO_RATE, start, Fraction(1, AUDIO_RATE)
        for packet in audio.encode(chunk):
            container.mux(packet)
    for packet in audio.encode():
        container.mux(packet)
    container.close()


# ---------------------------------------------------------------- the released recipe, restated


def released_recipe(video: Path, out: Path, timings: dict) -> None:
    """One clip the released way (our restatement of it), with per-stage times added to `timings`."""
    sample_id = video.stem
    start = time.perf_counter()
    capture = cv2.VideoCapture(str(video), cv2.CAP_FFMPEG, [cv2.CAP_PROP_N_THREADS, 1])
    n_frames = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    fps = capture.get(cv2.CAP_PROP_FPS)
    key = n_frames // 2
    capture.set(cv2.CAP_PROP_POS_FRAMES, key)
    _, frame = capture.read()
    capture.set(cv2.CAP_PROP_POS_FRAMES, key + 1)
    _, next_frame = capture.read()
    capture.release()
    decoded = time.perf_counter()
    flow = cv2.calcOpticalFlowFarneback(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY),
                                        cv2.cvtColor(next_frame, cv2.COLOR_BGR2GRAY), None, **FARNEBACK)
    flowed = time.perf_counter()
    with av.open(str(video)) as container:
        resampler = av.AudioResampler(format="flt", layout="mono", rate=22050)
        chunks = [f.to_ndarray().reshape(-1) for frame_ in container.decode(audio=0) for f in resampler.resample(frame_)]
        chunks += [f.to_ndarray().reshape(-1) for f in resampler.resample(None)]
    sound = np.concatenate(chunks)
    center = int(key / fps * 22050)
    window = sound[max(0, center - 3 * 22050 // 2) : max(0, center - 3 * 22050 // 2) + 3 * 22050]
    audio_done = time.perf_counter()
    cv2.imwrite(str(out / "frames" / f"{sample_id}.jpg"), frame)
    for axis, name in enumerate(("flow_x", "flow_y")):  # float -> 8 bit: rounded, clipped to [0, 255]
        cv2.imwrite(str(out / "flow" / name / f"{sample_id}.jpg"), np.clip(np.round(flow[..., axis]), 0, 255).astype(np.uint8))
    wavfile.write(out / "audio" / f"{sample_id}.wav", 22050, (window * 32767).astype(np.int16))
    written = time.perf_counter()
    for stage, seconds in (("decode", decoded - start), ("flow", flowed - decoded), ("audio", audio_done - flowed),
                           ("write", written - audio_done)):
        timings[stage] = timings.get(stage, 0.0) + seconds


def run_released(videos: list[Path], work: Path) -> tuple[float, float, dict]:
    """(wall s, CPU s, per-stage wall s) of the released recipe over `videos`."""
    out = work / "released"
    shutil.rmtree(out, ignore_errors=True)
    for folder in ("frames", "flow/flow_x", "flow/flow_y", "audio"):
        (out / folder).mkdir(parents=True)
    timings: dict = {}
    wall, cpu = time.perf_counter(), time.process_time()
    for video in videos:
        released_recipe(video, out, timings)
    return time.perf_counter() - wall, time.process_time() - cpu, timings


def run_in_process(videos: list[Path], work: Path, method: str) -> tuple[float, float]:
    """(wall s, CPU s) of hearflow's per-video function (what a worker runs) in this process."""
    out = work / f"in-process-{method}"
    shutil.rmtree(out, ignore_errors=True)
    recipe = {"sample_rate": 16000, "seconds": 3.0, "flow_method": method, "flow_size": 256, "flow_pairs": 1}
    wall, cpu = time.perf_counter(), time.process_time()
    for video in videos:
        prepare_video(video, video.stem, out, recipe)
    return time.perf_counter() - wall, time.process_time() - cpu


def hearflow_stages(videos: list[Path], work: Path, method: str) -> dict[str, float]:
    """CPU ms per clip of each step of `prepare_video`, the same calls made one by one."""
    from hearflow.data.prepared import write_sample
    from hearflow.media.audio import read_audio_window
    from hearflow.media.flow import aggregate_flow
    from hearflow.media.video import VideoFile, key_frame_index

    out = work / f"stages-{method}"
    shutil.rmtree(out, ignore_errors=True)
    spent = dict.fromkeys(["open + demux", "audio window", "decode frame pair", "flow", "write"], 0.0)

    def timed(stage, function, *arguments):
        start = time.process_time()
        result = function(*arguments)
        spent[stage] += time.process_time() - start
        return result

    for video in videos:
        clip = timed("open + demux", VideoFile, video)
        key = key_frame_index(clip.info.n_frames)
        audio = timed("audio window", read_audio_window, clip, clip.info.frame_time(key), 3.0, 16000)
        frames = timed("decode frame pair", clip.read_frames, key, 2)
        clip.close()
        frame, flow = timed("flow", aggregate_flow, frames, method, 256)
        timed("write", write_sample, out, video.stem, frame, flow, audio, 16000)
    return {stage: 1000 * seconds / len(videos) for stage, seconds in spent.items()}


def run_hearflow(videos: list[Path], work: Path, method: str, workers: int) -> float:
    """Wall seconds of `hearflow prepare` (the library call) over `videos`, workers included."""
    out = work / f"hearflow-{method}-{workers}"
    shutil.rmtree(out, ignore_errors=True)
    listing = work / "videos.txt"
    listing.write_text("\n".join(map(str, videos)) + "\n")
    config = DataConfig(flow_method=method)
    start = time.perf_counter()
    summary = prepare(listing, out, config, workers=workers, progress=False)
    elapsed = time.perf_counter() - start
    if summary.prepared != len(videos):
        sys.exit(f"hearflow prepare failed on some clips: {summary.line()}")
    return elapsed


def peak_worker_memory_mb(videos: list[Path], work: Path) -> float | None:
    """Peak resident memory (VmHWM) of one worker after preparing `videos` (Linux only)."""
    out = work / "memory"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    pool = WorkerPool(1, str(out), {"sample_rate": 16000, "seconds": 3.0, "flow_method": "farneback",
                                    "flow_size": 256, "flow_pairs": 1}, 300.0)
    peak = None
    tasks = [(i, str(v), v.stem, None) for i, v in enumerate(videos)]
    for count, (_, message) in enumerate(pool.run(tasks), 1):
        if message[0] != "ok":
            sys.exit(f"memory run failed: {message}")
        if count == len(tasks):
            status = Path(f"/proc/{pool.workers[0].process.pid}/status")
            if status.exists():
                line = next(l for l in status.read_text().splitlines() if l.startswith("VmHWM"))
                peak = int(line.split()[1]) / 1024
    return peak


def alternating(sides: list, repeats: int):
    """Each side once per repeat, the order rotated by one each repeat, so a host that gets
    slower or faster during the benchmark moves every side alike."""
    for repeat in range(repeats):
        shift = repeat % len(sides)
        yield from sides[shift:] + sides[:shift]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clips", type=int, default=16, help="number of clips (default 16)")
    parser.add_argument("--repeats", type=int, default=2, help="runs per configuration; the fastest counts")
    parser.add_argument("--workdir", help="keep the clips here between runs (default: a temporary folder)")
    args = parser.parse_args()
    cv2.setNumThreads(1)
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="hearflow-bench-"))
    clips = work / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    videos = []
    for i in range(args.clips):  # UNIQUE_CLIPS different clips, copied: each file is still read and decoded
        path = clips / f"clip{i:03d}.mp4"
        if not path.exists():
            if i < UNIQUE_CLIPS:
                make_clip(path, i)
            else:
                shutil.copyfile(clips / f"clip{i % UNIQUE_CLIPS:03d}.mp4", path)
        videos.append(path)
    uhd = clips / "uhd.mp4"
    if not uhd.exists():
        make_clip(uhd, 99, 3840, 2160, 1.0)
    print(f"{args.clips} clips of {SECONDS} s {WIDTH}x{HEIGHT} {FPS} fps + AAC {AUDIO_RATE} Hz stereo "
          f"(ready in {time.perf_counter() - started:.0f} s), best of {args.repeats} runs, one thread per worker\n")

    run_hearflow(videos[:1], work, "farneback", 1)  # start the worker server once, outside the timings
    n = len(videos)

    sides = ["released", "farneback", "dis"]
    results: dict[str, list] = {side: [] for side in sides}
    for side in alternating(sides, args.repeats):
        results[side].append(run_released(videos, work) if side == "released" else run_in_process(videos, work, side))

    def best_of(side):
        """The fastest wall clock and the smallest CPU time of the side's runs (+ the fastest run's extras)."""
        runs = sorted(results[side], key=lambda result: result[0])
        return (runs[0][0], min(result[1] for result in runs), *runs[0][2:])

    released_wall, released_cpu, stages = best_of("released")
    per_video = {method: best_of(method) for method in ("farneback", "dis")}
    print("per video, one thread, in this process (CPU time does not grow when other programs share the CPU):")
    print(f"{'':34s} {'CPU ms/clip':>12s} {'vs released':>12s} {'wall clips/s':>13s} {'vs released':>12s}")
    print(f"{'released recipe (restated)':34s} {1000 * released_cpu / n:12.1f} {'1.00x':>12s} "
          f"{n / released_wall:13.2f} {'1.00x':>12s}")
    for method, (wall, cpu) in per_video.items():
        print(f"{'hearflow, ' + method:34s} {1000 * cpu / n:12.1f} {released_cpu / cpu:11.2f}x "
              f"{n / wall:13.2f} {released_wall / wall:11.2f}x")
    for method in ("farneback", "dis"):
        paired = [released[1] / run[1] for released, run in zip(results["released"], results[method])]
        print(f"  {method} CPU ratio repeat by repeat: " + ", ".join(f"{ratio:.2f}x" for ratio in paired))
    total = sum(stages.values())
    print("released recipe time split: " + ", ".join(f"{k} {v / total:.0%}" for k, v in stages.items()))
    for method in ("farneback", "dis"):
        split = hearflow_stages(videos, work, method)
        print(f"hearflow ({method}) CPU ms per clip: " + ", ".join(f"{k} {v:.1f}" for k, v in split.items()))

    print("\nend to end, `hearflow prepare` (wall clock, starting the workers included), against the released")
    print("recipe's wall clock measured again in this section (the runs alternate, as above):")
    configurations = [("farneback", 1), ("dis", 1), ("farneback", 2)]
    times: dict[tuple, list] = {configuration: [] for configuration in configurations}
    start_up: dict[tuple, list] = {configuration: [] for configuration in configurations}
    released_walls = []
    for side in alternating(["released", *configurations], args.repeats):
        if side == "released":
            released_walls.append(run_released(videos, work)[0])
            continue
        method, workers = side
        times[side].append(run_hearflow(videos, work, method, workers))
        start_up[side].append(run_hearflow(videos[:workers], work, method, workers))
    released_wall = min(released_walls)  # this section's own, not the per-video section's
    print(f"  released recipe: {n / released_wall:6.2f} clips/s")
    runs = {configuration: min(seconds) for configuration, seconds in times.items()}
    for (method, workers), seconds in runs.items():
        # The same call with one clip per worker is start-up + one clip; the difference is
        # what the other clips cost, the rate a long run settles at.
        steady = (n - workers) / (seconds - min(start_up[method, workers]))
        print(f"  --flow {method:9s} --workers {workers}: {n / seconds:6.2f} clips/s, "
              f"{released_wall / seconds:5.2f}x the released recipe's wall clock; without the start-up "
              f"({1000 * min(start_up[method, workers]):.0f} ms with {workers} clip(s)): {steady:6.2f} clips/s, "
              f"{steady * released_wall / n:5.2f}x")
    print(f"  scaling 1 -> 2 workers (farneback): {runs['farneback', 1] / runs['farneback', 2]:.2f}x")
    memory = peak_worker_memory_mb(videos[:3] + [uhd], work)
    print(f"\npeak resident memory of one worker (3 clips + one 4K clip): "
          + (f"{memory:.0f} MB" if memory is not None else "n/a (needs Linux /proc)"))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
