"""Load test: many gradio_client users at once against the app on loopback, with and without batching.

    python benchmarks/load_test.py                          # 32 users, 3 minutes, batched then one at a time
    python benchmarks/load_test.py --no_batching            # only today's one-at-a-time path
    python benchmarks/load_test.py --model user/repo --users 64 --seconds 300 --json load.json
    python benchmarks/load_test.py --modes batched --same_request   # every user sends the API's defaults
    python benchmarks/load_test.py --modes batched --baseline /tmp/today/model/default   # against another model

The app runs in a child process, so its memory can be read from /proc, with a temp folder of its own, so its files
can be counted. Each user sends the page's default /generate request (16 sprites, the default sampler, steps and
guidance, streamed) back to back; a request refused as busy is retried a few seconds later, as a person would. Each
user downloads every file the stream names, as the page does, and the final grid, GIF and sheet are decoded whole (a
download cut off counts against the run). With --same_request all users send the same request, so every answer holds
the same pictures, which gradio stores under one name. Each mode runs in a fresh server: "batched" merges the U-Net
calls of every request in flight (model/batching.py), "one at a time" samples one request at a time with up to 16
waiting (the app before batching). The report has a column per mode; its temp files are counted once gradio's
cleanup has run (the app keeps files for 30 minutes; here --cleanup_age s).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
ROOT = Path(__file__).resolve().parents[1]

import httpx  # noqa: E402
from gradio_client import Client  # noqa: E402
from gradio_client.utils import QueueError  # noqa: E402
from PIL import Image, ImageSequence  # noqa: E402

from ui.events import DEFAULT_GUIDANCE, DEFAULT_SAMPLER, DEFAULT_STEPS  # noqa: E402

DEFAULT_MODEL = ROOT / "model" / "default"
MODES = ("batched", "one at a time")
BASELINE = "batched, baseline model"  # --baseline: the batched app serving another model, in the same run
CONTEXTS = ["hero", "non-hero", "food", "spell", "item"]  # what the users ask for; the random model's contexts


@dataclass
class Results:
    mode: str = ""
    machine: str = ""
    model: str = ""
    users: int = 0
    request: str = ""
    sprite_steps: int = 0  # sprites x steps of one request
    wall_s: float = 0.0
    completed: list[float] = field(default_factory=list)  # seconds from submit to the final sprites
    first_frame: list[float] = field(default_factory=list)  # seconds from submit to the first streamed frame
    repeat: list[bool] = field(default_factory=list)  # False for each user's first request (the arrival burst)
    sampling: list[float] = field(default_factory=list)  # the server's sampling time for each, as it reports it
    rejected: list[float] = field(default_factory=list)  # time to the "busy" answer
    failed: list[str] = field(default_factory=list)
    rss_mb: list[tuple[float, float, int]] = field(default_factory=list)  # (seconds, RSS, completed so far)
    peak_rss_mb: float = 0.0
    temp_files: dict[str, int] = field(default_factory=dict)
    server_tracebacks: int = 0
    files_checked: int = 0  # final pictures downloaded and decoded whole (grid, GIF, sheet)
    files_incomplete: list[str] = field(default_factory=list)


# ---- the server, in a child process ----------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    """Child process: the app as `python app.py` builds it, compiled before the load starts, shorter cleanup."""
    import torch

    import app
    from model import load_pipeline
    from model.batching import BUCKETS

    if args.server_threads:
        torch.set_num_threads(args.server_threads)
    pipe = load_pipeline(args.model)
    batched = args.mode == "batched"
    if batched:
        pipe.enable_batching()
    compiling = pipe.compile_in_background(batch_sizes=BUCKETS if batched else None)  # as app.main does
    if compiling is not None:
        compiling.join()  # waited for, so the load meets the steady state
    demo = app.build_demo(pipe, "load test")
    demo.delete_cache = (max(1, args.cleanup_age // 2), args.cleanup_age)
    app.launch(demo, queue_size=None if batched else 16, server_name="127.0.0.1", server_port=args.port, quiet=True)


def random_model(folder: Path, preset: str) -> Path:
    """A pipeline of the given size with random weights: the same compute as a trained one."""
    import torch

    from model import SpritePipeline, build_unet, make_scheduler

    torch.manual_seed(0)
    SpritePipeline(build_unet(len(CONTEXTS), preset), make_scheduler(), CONTEXTS).save_pretrained(folder)
    return folder


def rss_mb(pid: int) -> tuple[float, float]:
    """(current, peak) resident memory of a process in MB, from /proc (Linux)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def count_files(folder: Path) -> int:
    return sum(1 for p in folder.rglob("*") if p.is_file())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    name = "unknown CPU"
    try:
        name = next(line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return f"{name}, {os.cpu_count()} cores, load average {load} at the start"


def incomplete(path: str | None) -> str | None:
    """Why a downloaded picture is not whole (missing, empty, cut off), or None: PIL decodes every frame."""
    if not path or not Path(path).is_file():
        return "missing"
    try:
        with Image.open(path) as picture:
            for frame in ImageSequence.Iterator(picture):
                frame.load()
    except (OSError, SyntaxError, ValueError) as err:
        return f"{Path(path).stat().st_size} bytes, {type(err).__name__}: {err}"
    return None


def default_request(args: argparse.Namespace, context: str, seed: int) -> dict:
    return dict(context=context, weights="", num_inference_steps=args.steps, sampler=args.sampler, add_noise=True,
                noise_scale=1.0, guidance_scale=args.guidance_scale, num_images=args.num_images, seed=seed,
                randomize_seed=False)


# ---- the users --------------------------------------------------------------------------------


def run_users(url: str, args: argparse.Namespace, results: Results, server_pid: int) -> None:
    lock, done = threading.Lock(), threading.Event()
    deadline = time.monotonic() + args.seconds
    start = time.monotonic()

    def user(index: int) -> None:
        rng = random.Random(index)
        downloads = Path(tempfile.mkdtemp(prefix=f"user-{index}-"))
        client = Client(url, download_files=str(downloads), analytics_enabled=False, verbose=False)
        repeat = False
        while time.monotonic() < deadline:
            context, seed = ("hero", 0) if args.same_request else (rng.choice(CONTEXTS), rng.randint(0, 2**31 - 1))
            began = time.perf_counter()
            job = client.submit(**default_request(args, context, seed), api_name="/generate")
            try:
                first, give_up = None, time.monotonic() + args.seconds + 300
                # Polled every 20 ms: iterating a Job spins every 1 ms in each of the users' threads, on the cores
                # the server runs on, and never ends for a refused request.
                while not job.done():
                    if first is None and job.outputs():
                        first = time.perf_counter() - began
                    if time.monotonic() > give_up:
                        raise TimeoutError("no answer after the run's end plus 300 s")
                    time.sleep(0.02)
                outputs = job.result()
                broken = [f"{Path(p).name}: {reason}" for p in outputs[2:5] if (reason := incomplete(p))]
                with lock:
                    results.files_checked += 3
                    results.files_incomplete.extend(broken)
                    results.completed.append(time.perf_counter() - began)
                    results.first_frame.append(first or results.completed[-1])
                    results.repeat.append(repeat)
                    results.sampling.append(float(re.search(r"in ([\d.]+) s", outputs[5]).group(1)))
                repeat = True
            except QueueError:
                with lock:
                    results.rejected.append(time.perf_counter() - began)
                time.sleep(rng.uniform(2, 8))  # a person waits a moment before pressing again
            except Exception as err:  # noqa: BLE001 - every other outcome is a failure to report
                job.cancel()
                with lock:
                    results.failed.append(f"{type(err).__name__}: {str(err)[:200]}")
            finally:
                for child in downloads.iterdir():  # this request's files, checked
                    shutil.rmtree(child, ignore_errors=True) if child.is_dir() else child.unlink(missing_ok=True)

    def monitor() -> None:
        while not done.is_set():
            try:
                now, peak = rss_mb(server_pid)
            except (OSError, KeyError):
                return
            results.rss_mb.append((round(time.monotonic() - start, 1), round(now, 1), len(results.completed)))
            results.peak_rss_mb = peak
            done.wait(0.5)

    watcher = threading.Thread(target=monitor, daemon=True)
    watcher.start()
    users = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(args.users)]
    for t in users:
        t.start()
    for t in users:
        t.join()
    done.set()
    watcher.join()
    results.wall_s = round(time.monotonic() - start, 1)


def run_mode(args: argparse.Namespace, mode: str, label: str, work: Path) -> Results:
    """One fresh server in ``mode``, warmed up, then the users; then one cleanup period."""
    results = Results(mode=mode, machine=machine(), model=label, users=args.users,
                      request=f"/generate, {args.num_images} sprites, {args.steps} {args.sampler} steps, guidance "
                              f"{args.guidance_scale:g}, streamed",
                      sprite_steps=args.num_images * args.steps)
    port, temp = free_port(), work / re.sub(r"[ ,]+", "-", mode) / "gradio"
    model = args.baseline if mode == BASELINE else args.model
    if mode == BASELINE:
        results.model = label = args.baseline
    env = {**os.environ, "GRADIO_TEMP_DIR": str(temp)}
    # As a module from the repository root: the server imports app.py, which sits there, not in a package.
    command = [sys.executable, "-m", "benchmarks.load_test", "--serve", "--mode",
               "batched" if mode == BASELINE else mode, "--model", model,
               "--port", str(port), "--cleanup_age", str(args.cleanup_age),
               "--server_threads", str(args.server_threads)]
    log_path = temp.parent / "server.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log = open(log_path, "w")
    server = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(2400):  # the compile before the start takes minutes on 2 cores
            if server.poll() is not None:
                raise SystemExit(f"the app did not start:\n{log_path.read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        results.temp_files["page"] = count_files(temp)  # the page's own pictures (examples), kept by design
        warm = Client(url, download_files=False, analytics_enabled=False, verbose=False)
        warm.predict(**default_request(args, "hero", 0), api_name="/generate")
        results.temp_files["start"] = count_files(temp)
        print(f"{mode}: {args.users} users against {url} ({label}) for {args.seconds:.0f} s", file=sys.stderr)
        run_users(url, args, results, server.pid)
        results.temp_files["end"] = count_files(temp)
        time.sleep(args.cleanup_age * 1.5 + 5)  # one full cleanup period after the files have aged
        results.temp_files["cleaned"] = count_files(temp)
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    results.server_tracebacks = log_path.read_text().count("Traceback")
    return results


# ---- report -----------------------------------------------------------------------------------


def percentile(values: list[float], q: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else (values or [0])[0]


def rss_when(results: Results, fraction: float) -> float:
    """Server RSS when `fraction` of the completed requests had finished."""
    target = fraction * len(results.completed)
    return next((rss for _, rss, n in results.rss_mb if n >= target), results.rss_mb[-1][1])


def throughput(r: Results) -> float:
    """Sprites x steps per second over the run."""
    return len(r.completed) * r.sprite_steps / r.wall_s if r.wall_s else 0.0


def markdown(runs: list[Results]) -> str:
    def cells(r: Results) -> list[str]:
        done = r.completed
        later = [i for i, repeat in enumerate(r.repeat) if repeat]
        return [
            f"{len(done)} in {r.wall_s:.0f} s ({len(done) / r.wall_s:.2f} per second)",
            f"{throughput(r):.0f}",
            f"p50 {percentile(r.first_frame, 50):.2f} s, p95 {percentile(r.first_frame, 95):.2f} s",
            f"p50 {percentile([r.first_frame[i] for i in later], 50):.2f} s, "
            f"p95 {percentile([r.first_frame[i] for i in later], 95):.2f} s ({len(later)} requests)",
            f"p50 {percentile(done, 50):.1f} s, p95 {percentile(done, 95):.1f} s",
            f"p50 {percentile(r.sampling, 50):.2f} s, p95 {percentile(r.sampling, 95):.2f} s",
            f"{len(r.rejected)}" + (f", answered in a median {percentile(r.rejected, 50) * 1000:.0f} ms"
                                    if r.rejected else ""),
            str(len(r.failed)) + (f" ({'; '.join(sorted(set(r.failed))[:3])})" if r.failed else ""),
            f"{r.files_checked} / {len(r.files_incomplete)}"
            + (f" ({'; '.join(r.files_incomplete[:3])})" if r.files_incomplete else ""),
            f"{r.rss_mb[0][1]:.0f}, then {' / '.join(f'{rss_when(r, q):.0f}' for q in (0.25, 0.5, 0.75, 1))} MB"
            if r.rss_mb else "n/a",
            f"{r.peak_rss_mb:.0f} MB",
            f"{r.temp_files.get('page', 0)} / {r.temp_files.get('end', 0)} / {r.temp_files.get('cleaned', 0)}",
            str(r.server_tracebacks),
        ]
    names = ["Completed requests", "Throughput, sprites x steps per second", "Time to the first streamed frame",
             "The same, leaving out each user's first request (all users arrive at once)",
             "Time to the final sprites", "Sampling time per request (server side)", "Refused as busy",
             "Failed otherwise", "Final pictures downloaded / incomplete",
             "Server RSS after warm-up, then at 25 / 50 / 75 / 100% of completions",
             "Server peak RSS", "Temp files: the page's own / after the load / after cleanup",
             "Tracebacks in the server log"]
    columns = [cells(r) for r in runs]
    lines = [f"Machine: {runs[0].machine}. Model: {runs[0].model}. {runs[0].users} concurrent gradio_client users, "
             f"each sending {runs[0].request} requests back to back.", "",
             "| | " + " | ".join(r.mode for r in runs) + " |", "|---" * (len(runs) + 1) + "|"]
    lines += [f"| {name} | " + " | ".join(c[i] for c in columns) + " |" for i, name in enumerate(names)]
    if len(runs) == 2 and throughput(runs[1]):
        lines += ["", f"Throughput, {runs[0].mode} against {runs[1].mode}: "
                      f"{throughput(runs[0]) / throughput(runs[1]):.2f}x"]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder or Hub repo (default: model/default, else a random "
                                                 "--preset model)")
    p.add_argument("--preset", default="small", help="size of the random model used when there is no model")
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--seconds", type=float, default=180, help="each user sends requests for this long, per mode")
    p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="run these, in this order")
    p.add_argument("--no_batching", action="store_true", help="only the one-at-a-time path (--modes 'one at a time')")
    p.add_argument("--baseline", default=None, metavar="MODEL",
                   help="also run the batched app on this model (today's, say) after the modes, for a side-by-side")
    p.add_argument("--same_request", action="store_true",
                   help="every user sends the API's defaults (hero, seed 0), so every answer is the same pictures")
    p.add_argument("--num_images", type=int, default=16)
    p.add_argument("--steps", type=int, default=DEFAULT_STEPS)
    p.add_argument("--sampler", default=DEFAULT_SAMPLER)
    p.add_argument("--guidance_scale", type=float, default=DEFAULT_GUIDANCE)
    p.add_argument("--cleanup_age", type=int, default=20, help="server deletes its files after this many seconds")
    p.add_argument("--server_threads", type=int, default=0, help="torch threads in the server (0: torch's default)")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process
    p.add_argument("--mode", default="batched", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        return serve(args)

    work = Path(tempfile.mkdtemp(prefix="sprite-load-"))
    if args.model is None:
        args.model = str(DEFAULT_MODEL) if (DEFAULT_MODEL / "model_index.json").is_file() else \
            str(random_model(work / "model", args.preset))
        label = "the bundled model" if args.model == str(DEFAULT_MODEL) else f"random '{args.preset}' preset"
    else:
        label = args.model
    modes = (["one at a time"] if args.no_batching else args.modes) + ([BASELINE] if args.baseline else [])
    runs = [run_mode(args, mode, label, work) for mode in modes]
    print(markdown(runs))
    for r in runs:
        if r.failed:
            print(f"\nFailures ({r.mode}):\n" + "\n".join(sorted(set(r.failed))))
    if args.json:
        Path(args.json).write_text(json.dumps([asdict(r) for r in runs], indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
