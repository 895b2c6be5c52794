"""`python -m hpo.search --workers N`: N worker processes on one study, one GPU each when there are GPUs.

Worker i is `python -m hpo.search` with the parent's arguments (less --workers),
DEEPLAB_HPO_WORKER=i (which keeps its sampler's seed apart from the others') and,
with GPUs, CUDA_VISIBLE_DEVICES set to GPU i mod their count; without GPUs the CPU
threads are shared out instead. Each line a worker writes reaches the parent's
stderr prefixed "[worker i] ".

The workers run in sessions of their own, so the terminal's Ctrl-C reaches only the
parent, which passes it on to each worker exactly once (as SIGINT): each then marks
its running trial failed and queues it to resume, as a single process does. A
second Ctrl-C, or STOP_SECONDS without stopping, kills a worker; the heartbeat of an
RDB storage then retries its trial.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from typing import IO

import torch

WORKER_ENV = "DEEPLAB_HPO_WORKER"  # index of a worker, for its sampler seed


def visible_gpus() -> list[str]:
    """The ids a child process can put in CUDA_VISIBLE_DEVICES: those this process may use."""
    count = torch.cuda.device_count()
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [part.strip() for part in visible.split(",")] if visible else [str(k) for k in range(count)]
    return ids[:count]


def worker_env(index: int, count: int) -> dict[str, str]:
    """The environment of worker `index` of `count`: its index, and its GPU or its share of the CPU."""
    env = {**os.environ, WORKER_ENV: str(index), "PYTHONUNBUFFERED": "1"}
    gpus = visible_gpus()
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    elif "OMP_NUM_THREADS" not in os.environ:  # torch would start one thread per core in every worker
        env["OMP_NUM_THREADS"] = str(max(1, len(os.sched_getaffinity(0)) // count))
    return env


def run_workers(argv: Sequence[str], count: int) -> list[int]:
    """Run `count` workers of `python -m hpo.search *argv` to their end; their exit codes.

    KeyboardInterrupt (Ctrl-C, or SIGTERM here) is passed on to the workers, and
    raised again once they have stopped.
    """
    workers = [subprocess.Popen([sys.executable, "-m", "hpo.search", *argv], env=worker_env(index, count),
                                stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, errors="replace", start_new_session=True)
               for index in range(count)]
    relays = [threading.Thread(target=relay, args=(worker.stdout, f"[worker {index}] "), daemon=True)
              for index, worker in enumerate(workers)]
    for thread in relays:
        thread.start()
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)  # a scheduler's stop = Ctrl-C
    try:
        return wait_all(workers)
    except KeyboardInterrupt:
        stop(workers)
        raise
    finally:
        signal.signal(signal.SIGTERM, previous)
        for thread in relays:
            thread.join()


STOP_SECONDS = 60  # a worker stops in seconds on SIGINT (it only marks and requeues its trial)


def stop(workers: Sequence[subprocess.Popen]) -> None:
    """SIGINT to each worker still running, then wait; SIGKILL on a second interrupt, or for a
    worker not gone within STOP_SECONDS (the heartbeat of an RDB storage then retries its trial)."""
    send(workers, signal.SIGINT)
    try:
        for index, worker in enumerate(workers):
            try:
                worker.wait(timeout=STOP_SECONDS)
            except subprocess.TimeoutExpired:
                print(f"worker {index} did not stop within {STOP_SECONDS} s: killed", file=sys.stderr)
                worker.kill()
    except KeyboardInterrupt:
        send(workers, signal.SIGKILL)
    wait_all(workers)


def send(workers: Sequence[subprocess.Popen], signum: int) -> None:
    for worker in workers:
        if worker.poll() is None:
            worker.send_signal(signum)


def wait_all(workers: Sequence[subprocess.Popen]) -> list[int]:
    return [worker.wait() for worker in workers]


def relay(stream: IO[str], prefix: str) -> None:
    for line in stream:
        sys.stderr.write(prefix + line)
        sys.stderr.flush()
    stream.close()
