"""Load test: many gradio_client users at once against the app on loopback.

    python benchmarks/load_test.py                          # 32 users, 600 requests, 5 minutes at most
    python benchmarks/load_test.py --model user/repo --users 64 --requests 1000 --json load.json

The app runs in a child process, so its memory can be read from /proc, with a temp folder of its own, so its
files can be counted. Each user sends small, realistic /generate requests (16 sprites, 25 DDIM steps); a full
queue answers "busy" at once, and that user tries again a few seconds later, as a person would. The report:
completed, rejected and failed requests, latency, the server's memory across the run, and the temp files left once
gradio's cleanup has run (the app keeps files for 30 minutes; here the cleanup is shortened to --cleanup_age s).
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

DEFAULT_MODEL = ROOT / "model" / "default"


@dataclass
class Results:
    machine: str = ""
    model: str = ""
    users: int = 0
    request: str = ""
    wall_s: float = 0.0
    completed: list[float] = field(default_factory=list)  # latency of each completed request, seconds
    sampling: list[float] = field(default_factory=list)  # the server's sampling time for each, as it reports it
    rejected: list[float] = field(default_factory=list)  # time to the "busy" answer
    failed: list[str] = field(default_factory=list)
    rss_mb: list[tuple[float, float, int]] = field(default_factory=list)  # (seconds, RSS, completed so far)
    peak_rss_mb: float = 0.0
    temp_files: dict[str, int] = field(default_factory=dict)
    server_tracebacks: int = 0


# ---- the server, in a child process ----------------------------------------------------------


def serve(args: argparse.Namespace) -> None:
    """Child process: the app as `python app.py` builds it (U-Net compiled for 16 sprites), shorter file cleanup."""
    import torch

    import app
    from model import load_pipeline

    if args.server_threads:
        torch.set_num_threads(args.server_threads)
    pipe = load_pipeline(args.model)
    compiling = pipe.compile_in_background()  # as app.main does; waited for, so the load meets the steady state
    if compiling is not None:
        compiling.join()
    demo = app.build_demo(pipe, "load test")
    demo.delete_cache = (max(1, args.cleanup_age // 2), args.cleanup_age)
    app.launch(demo, server_name="127.0.0.1", server_port=args.port, quiet=True)


def random_model(folder: Path, preset: str) -> Path:
    """A pipeline of the given size with random weights: the same compute as a trained one."""
    import torch

    from model import SpritePipeline, build_unet, make_scheduler

    torch.manual_seed(0)
    names = ["hero", "non-hero", "food", "spell", "item"]
    SpritePipeline(build_unet(len(names), preset), make_scheduler(), names).save_pretrained(folder)
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


# ---- the users --------------------------------------------------------------------------------


def run_users(url: str, args: argparse.Namespace, results: Results, server_pid: int) -> None:
    lock, done = threading.Lock(), threading.Event()
    sent = 0
    deadline = time.monotonic() + args.max_seconds
    start = time.monotonic()

    def user(index: int) -> None:
        nonlocal sent
        rng = random.Random(index)
        client = Client(url, download_files=False, analytics_enabled=False, verbose=False)
        while True:
            with lock:
                if sent >= args.requests or time.monotonic() > deadline:
                    return
                sent += 1
            request = dict(context=rng.choice(["hero", "non-hero", "food", "spell", "item"]), weights="",
                           num_inference_steps=args.steps, sampler="DDIM", add_noise=True, noise_scale=1.0,
                           guidance_scale=1.0, num_images=args.num_images, seed=rng.randint(0, 2**31 - 1),
                           randomize_seed=False)
            began = time.perf_counter()
            job = client.submit(**request, api_name="/generate")
            try:
                outputs = job.result(timeout=max(1.0, deadline - time.monotonic()) + 120)
                with lock:
                    results.completed.append(time.perf_counter() - began)
                    results.sampling.append(float(re.search(r"in ([\d.]+) s", outputs[5]).group(1)))
            except QueueError:
                with lock:
                    results.rejected.append(time.perf_counter() - began)
                time.sleep(rng.uniform(2, 8))  # a person waits a moment before pressing again
            except Exception as err:  # noqa: BLE001 - every other outcome is a failure to report
                job.cancel()
                with lock:
                    results.failed.append(f"{type(err).__name__}: {str(err)[:200]}")

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


# ---- report -----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[q - 1] if len(values) > 1 else (values or [0])[0]


def rss_when(results: Results, fraction: float) -> float:
    """Server RSS when `fraction` of the completed requests had finished."""
    target = fraction * len(results.completed)
    return next((rss for _, rss, n in results.rss_mb if n >= target), results.rss_mb[-1][1])


def markdown(r: Results) -> str:
    done = r.completed
    rows = [
        ("Machine", r.machine),
        ("Model", r.model),
        ("Users / requests", f"{r.users} concurrent gradio_client users; {r.request}"),
        ("Requests sent", f"{len(done) + len(r.rejected) + len(r.failed)} in {r.wall_s:.0f} s"),
        ("Completed", f"{len(done)} ({len(done) / r.wall_s:.2f} per second)"),
        ("Rejected as busy (queue full)", f"{len(r.rejected)}, answered in a median "
                                          f"{percentile(r.rejected, 50) * 1000:.0f} ms" if r.rejected else "0"),
        ("Failed otherwise", f"{len(r.failed)}"),
        ("Latency of completed requests (queue wait included)",
         f"p50 {percentile(done, 50):.1f} s, p95 {percentile(done, 95):.1f} s, max {max(done, default=0):.1f} s"),
        ("Sampling time per request (server side)",
         f"p50 {percentile(r.sampling, 50):.2f} s, p95 {percentile(r.sampling, 95):.2f} s"),
        ("Server RSS after warm-up, then at 25 / 50 / 75 / 100% of completions",
         f"{r.rss_mb[0][1]:.0f}, then {' / '.join(f'{rss_when(r, q):.0f}' for q in (0.25, 0.5, 0.75, 1))} MB"
         if r.rss_mb else "n/a"),
        ("Server peak RSS", f"{r.peak_rss_mb:.0f} MB"),
        ("Temp files: the page's own / after the load / after cleanup",
         f"{r.temp_files.get('page', 0)} / {r.temp_files.get('end', 0)} / {r.temp_files.get('cleaned', 0)}"),
        ("Tracebacks in the server log", str(r.server_tracebacks)),
    ]
    return "\n".join(["| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows]])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help="model folder or Hub repo (default: model/default, else a random "
                                                 "--preset model)")
    p.add_argument("--preset", default="small", help="size of the random model used when there is no model")
    p.add_argument("--users", type=int, default=32)
    p.add_argument("--requests", type=int, default=600, help="stop sending after this many requests")
    p.add_argument("--max_seconds", type=float, default=300, help="stop sending after this long")
    p.add_argument("--num_images", type=int, default=16)
    p.add_argument("--steps", type=int, default=25, help="DDIM steps per request")
    p.add_argument("--cleanup_age", type=int, default=20, help="server deletes its files after this many seconds")
    p.add_argument("--server_threads", type=int, default=0, help="torch threads in the server (0: torch's default)")
    p.add_argument("--json", default=None, help="also write the raw results here")
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)  # the child process
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
    results = Results(machine=machine(), model=label, users=args.users,
                      request=f"each /generate with {args.num_images} sprites, {args.steps} DDIM steps, streamed")
    port, temp = free_port(), work / "gradio"
    env = {**os.environ, "GRADIO_TEMP_DIR": str(temp)}
    command = [sys.executable, __file__, "--serve", "--model", args.model, "--port", str(port),
               "--cleanup_age", str(args.cleanup_age), "--server_threads", str(args.server_threads)]
    log = open(work / "server.log", "w")
    server = subprocess.Popen(command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(600):
            if server.poll() is not None:
                raise SystemExit(f"the app did not start:\n{(work / 'server.log').read_text()[-3000:]}")
            try:
                if httpx.get(url, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        results.temp_files["page"] = count_files(temp)  # the page's own pictures (examples), kept by design
        warm = Client(url, download_files=False, analytics_enabled=False, verbose=False)
        warm.predict("hero", "", args.steps, "DDIM", True, 1.0, 1.0, args.num_images, 0, False, api_name="/generate")
        results.temp_files["start"] = count_files(temp)
        print(f"{args.users} users against {url} ({label}); up to {args.requests} requests or {args.max_seconds:.0f} s",
              file=sys.stderr)
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
    results.server_tracebacks = (work / "server.log").read_text().count("Traceback")
    print(markdown(results))
    if results.failed:
        print("\nFailures:\n" + "\n".join(sorted(set(results.failed))))
    if args.json:
        Path(args.json).write_text(json.dumps(asdict(results), indent=1))
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
