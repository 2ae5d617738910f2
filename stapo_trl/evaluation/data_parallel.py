"""`DataParallelGenerator`: copies of a generator in worker processes, one per GPU group (vLLM data parallelism)."""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Mapping, Sequence

from .generators import Completion, Generator, SamplingParams


def _dp_worker(factory, connection, environment: Mapping[str, str]) -> None:
    """Body of a `DataParallelGenerator` worker process: build the generator, then serve `generate` calls."""
    import traceback

    os.environ.update(environment)
    try:
        generator = factory()
    except BaseException:  # noqa: BLE001 - reported to the parent, which raises
        connection.send(("error", traceback.format_exc()))
        return
    connection.send(("ready", None))
    while True:
        try:
            request = connection.recv()
        except EOFError:  # the parent is gone
            break
        if request is None:
            break
        try:
            connection.send(("ok", generator.generate(*request)))
        except BaseException:  # noqa: BLE001
            connection.send(("error", traceback.format_exc()))
    close = getattr(generator, "close", None)
    if close is not None:
        close()


class DataParallelGenerator:
    """`num_workers` copies of a generator, each in its own (spawned) process, each prompt batch split between
    them in contiguous shards; results come back in prompt order.

    `factory` is a picklable callable that builds the generator in the worker (e.g.
    `functools.partial(VLLMGenerator, model, tensor_parallel_size=2)`). With `devices_per_worker > 0`, worker `r`
    sees only GPUs `[r * devices_per_worker, (r + 1) * devices_per_worker)` of `devices` (default: the visible ones)
    through `CUDA_VISIBLE_DEVICES`. Shard `s` of a call gets the seed `params.seed + <index of its first prompt>`,
    matching the per-prompt seeds of `VLLMGenerator`. `start_method`: "spawn" (default; required with CUDA, as a
    forked process cannot initialise it) or "fork" (CPU-only uses, where it saves the workers' imports).
    """

    def __init__(
        self,
        factory: Callable[[], Generator],
        num_workers: int,
        *,
        devices_per_worker: int = 0,
        devices: Sequence[str] | None = None,
        start_method: str = "spawn",
    ):
        import multiprocessing

        if num_workers <= 0:
            raise ValueError(f"num_workers must be positive, got {num_workers}")
        if devices_per_worker > 0:
            devices = list(devices) if devices is not None else _visible_cuda_devices()
            needed = num_workers * devices_per_worker
            if len(devices) < needed:
                raise ValueError(
                    f"data parallel size {num_workers} x tensor parallel size {devices_per_worker} needs {needed} GPUs,"
                    f" {len(devices)} visible"
                )
        context = multiprocessing.get_context(start_method)
        self._connections = []
        self._processes = []
        for rank in range(num_workers):
            environment = {}
            if devices_per_worker > 0:
                shard = devices[rank * devices_per_worker : (rank + 1) * devices_per_worker]
                environment["CUDA_VISIBLE_DEVICES"] = ",".join(str(d) for d in shard)
            parent_end, child_end = context.Pipe()
            # Not a daemon: vLLM starts processes of its own, which daemonic processes may not do. A worker exits when
            # told to (`close`) or when the parent's end of its pipe closes.
            process = context.Process(target=_dp_worker, args=(factory, child_end, environment), daemon=False)
            process.start()
            child_end.close()
            self._connections.append(parent_end)
            self._processes.append(process)
        try:
            for rank, connection in enumerate(self._connections):
                self._receive(rank, connection)
        except BaseException:
            self.close()
            raise

    @property
    def num_workers(self) -> int:
        return len(self._processes)

    def _receive(self, rank: int, connection):
        try:
            status, payload = connection.recv()
        except EOFError as error:
            raise RuntimeError(f"data-parallel worker {rank} died") from error
        if status == "error":
            raise RuntimeError(f"data-parallel worker {rank} failed:\n{payload}")
        return payload

    def generate(self, prompts: list[str], n: int, params: SamplingParams) -> list[list[Completion]]:
        if not prompts:
            return []
        size = math.ceil(len(prompts) / self.num_workers)
        busy = []
        for rank, connection in enumerate(self._connections):
            start = rank * size
            shard = prompts[start : start + size]
            if not shard:
                break
            seed = None if params.seed is None else params.seed + start
            connection.send((shard, n, dataclasses.replace(params, seed=seed)))
            busy.append((rank, connection))
        results: list[list[Completion]] = []
        errors = []
        for rank, connection in busy:  # receive from every busy worker, even after an error, to stay in sync
            try:
                results.extend(self._receive(rank, connection))
            except RuntimeError as error:
                errors.append(str(error))
        if errors:
            raise RuntimeError("\n".join(errors))
        return results

    def close(self) -> None:
        for connection in self._connections:
            try:
                connection.send(None)
            except (OSError, BrokenPipeError):
                pass
        for process in self._processes:
            process.join(timeout=30)
            if process.is_alive():
                process.terminate()
        for connection in self._connections:
            connection.close()
        self._connections, self._processes = [], []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _visible_cuda_devices() -> list[str]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [d.strip() for d in visible.split(",") if d.strip()]
    import torch

    return [str(i) for i in range(torch.cuda.device_count())]
