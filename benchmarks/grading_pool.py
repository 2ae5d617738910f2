"""The grading worker pool (`stapo_trl.rewards.pool`) against pebble's `ProcessPool` on the guarantees the grader needs.

Both run the same math-verify call (`stapo_trl.rewards.verify`) in worker processes, one worker, from a caller that
has torch loaded as a trainer has. Measured:

- start-up: from an empty pool to the first graded answer (the worker's start and its import of math-verify);
- per-task overhead: median time of one trivial answer through the pool minus the same call in process;
- time bound from a thread: a pathological answer (`9^{9^{9^{9}}}`) with a 1 s budget, graded from a non-main thread;
- memory limit: the worker's address-space limit (`/proc/<pid>/limits`) and a 6 GiB allocation in it;
- stuck C code: a worker that stops answering mid-task (SIGSTOP, as a worker stuck in C code does: its own timer
  cannot help) and, for pebble, a task looping in C (`sum(range(10**11))`); the pool must kill it at the deadline;
- frozen idle worker: a worker stopped while idle, then given a task with a deadline;
- no fork of the trainer: whether the worker maps the caller's torch libraries (a fork does) or re-runs the caller's
  `__main__` (multiprocessing's spawn does).

pebble runs with the multiprocessing start methods "fork" (Linux's default) and "spawn", an initializer that installs
the same time budget handler and memory limit as our worker's, and per-task `timeout`s of budget + grace as ours.

    python benchmarks/grading_pool.py                 # prints the figures, writes benchmarks/results/grading_pool.json
    python benchmarks/grading_pool.py --tasks 50      # fewer per-task samples

Needs `pip install pebble` (not a dependency of stapo-trl).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402, F401 - the caller has torch loaded, as a trainer does
from _common import write_result  # noqa: E402

from stapo_trl.rewards import (  # noqa: E402
    configure_grader,
    grade_with_status,
    shutdown_grader,
    verify,  # noqa: E402
)
from stapo_trl.rewards import pool as grading_pool  # noqa: E402

BUDGET_S = 1.0
# Our hard deadline for one answer (`stapo_trl.rewards.pool._Worker.grade`); pebble gets the same per-task timeout.
DEADLINE_S = BUDGET_S + 1.0 + 0.5 * BUDGET_S
TRIVIAL = ("1", "\\boxed{1}")
TOWER = "9^{9^{9^{9}}}"
ALLOCATION_BYTES = 6 << 30
# Set in the environment of this script; a spawned worker re-running `__main__` counts itself in this file.
MAIN_RUNS_FILE_ENV = "GRADING_POOL_BENCH_MAIN_RUNS"

if os.environ.get(MAIN_RUNS_FILE_ENV) and __name__ != "__main__":
    with open(os.environ[MAIN_RUNS_FILE_ENV], "a") as runs:
        runs.write(f"{os.getpid()}\n")


# --------------------------------------------------------------------------------------------------------------------
# What runs in a pebble worker (module level, so that a spawned worker finds it)
# --------------------------------------------------------------------------------------------------------------------


def pebble_worker_init(memory_limit_bytes: int) -> None:
    """What our worker does at start (`verify._worker_main`): the budget's SIGALRM handler and the memory limit."""
    import resource

    signal.signal(signal.SIGALRM, verify._on_budget_alarm)
    resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    verify._silence_math_verify_logs()


def pebble_grade(answer: str, gold_latex: str, timeout_s: float) -> str:
    return verify._grade_in_worker(answer, gold_latex, timeout_s)


def worker_pid() -> int:
    return os.getpid()


def allocate(num_bytes: int) -> str:
    try:
        bytearray(num_bytes)
    except MemoryError:
        return "MemoryError"
    return "allocated"


def loop_in_c() -> int:
    return sum(range(10**11))  # one C call: no Python-level signal handler runs until it returns


# --------------------------------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------------------------------


def address_space_limit(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as limits:
        return next(line for line in limits if line.startswith("Max address space")).split()[3]


def maps_torch(pid: int) -> bool:
    with open(f"/proc/{pid}/maps") as maps:
        return "libtorch" in maps.read()


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def in_thread(function):
    """`function()` run on a new (non-main) thread: (its result, seconds)."""
    box = {}

    def run():
        start = time.monotonic()
        box["result"] = function()
        box["seconds"] = time.monotonic() - start

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    return box["result"], box["seconds"]


def outcome_of(case: dict) -> str:
    """Our pool answers with a grading status, pebble with a result or an exception name."""
    return case.get("status", case.get("outcome"))


def overhead(samples: list[float], inline: list[float]) -> dict:
    return {
        "median_ms": 1e3 * statistics.median(samples),
        "inline_median_ms": 1e3 * statistics.median(inline),
        "overhead_ms": 1e3 * (statistics.median(samples) - statistics.median(inline)),
    }


def inline_samples(tasks: int) -> list[float]:
    """The same call in this process (measured after the pools: a fork would otherwise inherit math-verify)."""
    verify._mute_timeout_disabled_warning()
    verify._grade_core(*TRIVIAL, None)  # import math-verify and cache the gold first
    samples = []
    for _ in range(tasks):
        start = time.perf_counter()
        verify._grade_core(*TRIVIAL, None)
        samples.append(time.perf_counter() - start)
    return samples


# --------------------------------------------------------------------------------------------------------------------
# Ours
# --------------------------------------------------------------------------------------------------------------------


def measure_ours(tasks: int) -> dict:
    configure_grader(backend="process", max_workers=1)
    shutdown_grader()
    start = time.monotonic()
    assert grade_with_status("\\boxed{1}", "1") == (True, "correct")
    startup = time.monotonic() - start
    samples = []
    for _ in range(tasks):
        start = time.perf_counter()
        grade_with_status("\\boxed{1}", "1")
        samples.append(time.perf_counter() - start)
    worker = grading_pool.get_pool()._idle[-1]
    pid = worker.proc.pid
    result = {
        "startup_s": startup,
        "per_task_s": samples,
        "address_space_limit": address_space_limit(pid),
        "worker_maps_torch": maps_torch(pid),
        "main_reruns": 0,  # a `python -c` process loading verify.py by its path
    }
    status, seconds = in_thread(lambda: grade_with_status(f"\\boxed{{{TOWER}}}", "1", timeout_s=BUDGET_S))
    result["thread_pathological"] = {"status": status[1], "seconds": seconds}

    # Frozen idle worker: stopped between tasks, then given one.
    worker = grading_pool.get_pool()._idle[-1]
    os.kill(worker.proc.pid, signal.SIGSTOP)
    start = time.monotonic()
    status = grade_with_status("\\boxed{1}", "1", timeout_s=BUDGET_S)
    result["frozen_idle"] = {
        "status": status[1],
        "seconds": time.monotonic() - start,
        "worker_killed": not alive(worker.proc.pid),
    }

    # Stuck mid-task: stopped while grading (its own timer cannot fire), from a thread.
    grade_with_status("\\boxed{1}", "1")  # a fresh worker
    worker = grading_pool.get_pool()._idle[-1]
    threading.Timer(0.2, os.kill, (worker.proc.pid, signal.SIGSTOP)).start()
    status, seconds = in_thread(lambda: grade_with_status(f"\\boxed{{{TOWER}}}", "1", timeout_s=BUDGET_S))
    result["stuck_mid_task"] = {"status": status[1], "seconds": seconds, "worker_killed": not alive(worker.proc.pid)}
    shutdown_grader()
    return result


# --------------------------------------------------------------------------------------------------------------------
# pebble
# --------------------------------------------------------------------------------------------------------------------


def measure_pebble(start_method: str, tasks: int, frozen_wait_s: float) -> dict:
    import multiprocessing
    from concurrent.futures import TimeoutError as FutureTimeout

    import pebble

    main_runs = Path(os.environ[MAIN_RUNS_FILE_ENV])
    main_runs.write_text("")
    context = multiprocessing.get_context(start_method)
    start = time.monotonic()
    limit = grading_pool.WORKER_MEMORY_LIMIT_BYTES
    pool = pebble.ProcessPool(max_workers=1, initializer=pebble_worker_init, initargs=(limit,), context=context)
    try:
        assert pool.schedule(pebble_grade, args=(*TRIVIAL, BUDGET_S), timeout=DEADLINE_S).result() == "correct"
        startup = time.monotonic() - start
        samples = []
        for _ in range(tasks):
            begin = time.perf_counter()
            pool.schedule(pebble_grade, args=(*TRIVIAL, BUDGET_S), timeout=DEADLINE_S).result()
            samples.append(time.perf_counter() - begin)
        pid = pool.schedule(worker_pid).result()
        result = {
            "startup_s": startup,
            "per_task_s": samples,
            "address_space_limit": address_space_limit(pid),
            "allocation_6GiB": pool.schedule(allocate, args=(ALLOCATION_BYTES,)).result(),
            "worker_maps_torch": maps_torch(pid),
            "main_reruns": len(main_runs.read_text().split()),
        }

        def thread_grade():
            future = pool.schedule(pebble_grade, args=(TOWER, "\\boxed{1}", BUDGET_S), timeout=DEADLINE_S)
            return future.result()

        status, seconds = in_thread(thread_grade)
        result["thread_pathological"] = {"status": status, "seconds": seconds}

        # A task looping in C: only a kill from outside ends it.
        pid = pool.schedule(worker_pid).result()
        begin = time.monotonic()
        try:
            outcome = str(pool.schedule(loop_in_c, timeout=DEADLINE_S).result(60))
        except FutureTimeout:
            outcome = "TimeoutError"
        seconds = time.monotonic() - begin
        result["stuck_in_c"] = {"outcome": outcome, "seconds": seconds, "worker_killed": not alive(pid)}

        # Stuck mid-task (SIGSTOP while grading), from a thread.
        pid = pool.schedule(worker_pid).result()
        threading.Timer(0.2, os.kill, (pid, signal.SIGSTOP)).start()

        def stuck():
            try:
                return pool.schedule(pebble_grade, args=(TOWER, "\\boxed{1}", BUDGET_S), timeout=DEADLINE_S).result(60)
            except FutureTimeout:
                return "TimeoutError"

        outcome, seconds = in_thread(stuck)
        result["stuck_mid_task"] = {"outcome": outcome, "seconds": seconds, "worker_killed": not alive(pid)}

        # Frozen idle worker: stopped between tasks, then given a task with a deadline.
        pid = pool.schedule(worker_pid).result()
        time.sleep(0.2)
        os.kill(pid, signal.SIGSTOP)
        begin = time.monotonic()
        future = pool.schedule(pebble_grade, args=(*TRIVIAL, BUDGET_S), timeout=DEADLINE_S)
        try:
            outcome = future.result(timeout=frozen_wait_s)
        except FutureTimeout:
            outcome = "no answer"
        except Exception as error:  # noqa: BLE001 - what pebble raised is the finding
            outcome = type(error).__name__
        result["frozen_idle"] = {"outcome": outcome, "seconds": time.monotonic() - begin}
        os.kill(pid, signal.SIGKILL)
    finally:
        pool.stop()
        pool.join(timeout=10)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", type=int, default=200, help="trivial answers timed per pool")
    parser.add_argument("--frozen-wait", type=float, default=15.0, help="seconds to wait on a frozen idle worker")
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    os.environ[MAIN_RUNS_FILE_ENV] = str(Path(os.environ.get("TMPDIR", "/tmp")) / f"grading-pool-{os.getpid()}.runs")

    results = {"ours": measure_ours(args.tasks)}
    for method in ("fork", "spawn"):
        results[f"pebble_{method}"] = measure_pebble(method, args.tasks, args.frozen_wait)
    Path(os.environ[MAIN_RUNS_FILE_ENV]).unlink(missing_ok=True)
    inline = inline_samples(args.tasks)
    for result in results.values():
        result["per_task"] = overhead(result.pop("per_task_s"), inline)

    print(f"budget {BUDGET_S:g} s, deadline {DEADLINE_S:g} s, one worker; {args.tasks} trivial answers per pool")
    header = f"{'':32s}" + "".join(f"{name:>24s}" for name in results)
    print(header)
    rows = {
        "start-up (s)": lambda r: f"{r['startup_s']:.2f}",
        "per task, median (ms)": lambda r: f"{r['per_task']['median_ms']:.2f}",
        "  minus in-process (ms)": lambda r: f"{r['per_task']['overhead_ms']:.2f}",
        "pathological from a thread": lambda r: f"{r['thread_pathological']['status']} "
        f"{r['thread_pathological']['seconds']:.2f}s",
        "address-space limit": lambda r: r["address_space_limit"],
        "6 GiB allocation in the worker": lambda r: r.get("allocation_6GiB", "(grading only)"),
        "stuck mid-task (SIGSTOP)": lambda r: f"{outcome_of(r['stuck_mid_task'])} "
        f"{r['stuck_mid_task']['seconds']:.2f}s",
        "  worker killed": lambda r: str(r["stuck_mid_task"]["worker_killed"]),
        "task looping in C": lambda r: f"{r['stuck_in_c']['outcome']} {r['stuck_in_c']['seconds']:.2f}s"
        if "stuck_in_c" in r
        else "(grading only)",
        "frozen idle worker": lambda r: f"{outcome_of(r['frozen_idle'])} {r['frozen_idle']['seconds']:.2f}s",
        "worker maps the caller's torch": lambda r: str(r["worker_maps_torch"]),
        "caller's __main__ re-run": lambda r: str(r["main_reruns"]),
    }
    for label, cell in rows.items():
        print(f"{label:32s}" + "".join(f"{cell(r):>24s}" for r in results.values()))
    write_result("grading_pool", {"command": " ".join(sys.argv), "budget_s": BUDGET_S, "results": results}, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
