"""Past one machine: query sets spread over Ray actors, each holding the target and running the batched engine.

``Workers`` runs Ray Data's ``map_batches`` with an actor class: N actors (one GPU each where the
target runs on CUDA), each loading the target (and the agent, on first use) once. A row is a chunk
of ``--batch-size`` whole requests (a request with all its windows is never split), the chunks one
process would decode, so a distributed run equals ``--workers 1`` exactly. Results come back in
query order (``preserve_order``) as chunks finish; an actor that dies is restarted by Ray Data and
its chunk retried. The driver writes the run after every chunk, so a driver killed with ``kill -9``
resumes with ``--resume``.

Ray is an optional extra (``rsd-rerank[ray]``); the core never imports it. On a small machine a
local cluster declares two logical CPUs per worker, and each actor takes one: Ray's own tasks then
never starve behind the actors (on 2 cores, two one-CPU actors would otherwise deadlock Ray).
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rsd_rerank.config import bounded, check_ranges
from rsd_rerank.methods import DecodingConfig
from rsd_rerank.prompt import PromptConfig
from rsd_rerank.runs import BatchConfig, WindowConfig, request_chunks
from rsd_rerank.targets import TargetConfig

__all__ = ["Chunk", "ScaleConfig", "Workers", "gpus_per_worker", "ray_cluster"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ScaleConfig:
    """How many machines' worth of workers, and where they run."""

    workers: int = bounded(1, 1)
    """Ray actors, each holding the target and the agent (1: this process, no Ray)."""
    ray_address: str | None = None
    """An existing Ray cluster to join (e.g. ray://head:10001 or auto); by default a local cluster is started and stopped."""
    connect_timeout: float = 30.0
    """Seconds to wait for the --ray-address host to answer before giving up (Ray alone would retry for minutes)."""

    def __post_init__(self):
        check_ranges(self)


def _check_reachable(address: str, timeout: float) -> None:
    """Fail at once where nothing listens at a ``host:port`` Ray address (Ray itself retries for minutes,
    deaf to SIGTERM). ``auto`` and ``ray://`` client addresses are left to Ray.

    Raises:
        ValueError: naming the address and how to start or join a cluster.
    """
    import socket

    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--ray-address {address!r} is not host:port (e.g. 10.0.0.5:6379), 'auto' or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ValueError(
            f"--ray-address {address}: no Ray cluster answers there within {timeout:g} s ({err.strerror or err}); "
            "start one with `ray start --head` and pass the address it prints, or leave --ray-address out to "
            "run a local cluster"
        ) from err


@contextlib.contextmanager
def ray_cluster(scale: ScaleConfig) -> Iterator[None]:
    """Ray connected for the block: the cluster at ``scale.ray_address``, or a local one started here."""
    try:
        import ray
    except ImportError as err:
        raise RuntimeError(
            "--workers needs Ray: pip install 'rsd-rerank[ray]' (bash scripts/setup.sh installs it)"
        ) from err
    if not log.isEnabledFor(logging.INFO):
        # Ray's C++ core logs notices to stderr (e.g. on actor restarts), and Ray Data says that its
        # progress bars are off (the commands draw their own); -v keeps both.
        os.environ.setdefault("RAY_BACKEND_LOG_LEVEL", "fatal")
        logging.getLogger("ray.data").setLevel(logging.ERROR)
    if scale.ray_address:
        _check_reachable(scale.ray_address, scale.connect_timeout)
        try:
            ray.init(address=scale.ray_address, log_to_driver=False)
        except ConnectionError as err:
            raise RuntimeError(
                f"cannot join the Ray cluster at {scale.ray_address} ({err}); a cluster started with `ray start` "
                "uses token authentication: set RAY_AUTH_MODE=token here (the token is read from "
                "~/.ray/auth_token or RAY_AUTH_TOKEN)"
            ) from err
    else:
        # Logical CPUs, not cores: an actor takes one, and Ray's own work needs room beside them.
        ray.init(num_cpus=2 * scale.workers, include_dashboard=False, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


def gpus_per_worker(device: str, workers: int) -> float:
    """1 where the target runs on CUDA (``--device cuda*``, or ``auto`` on a cluster with a GPU per worker), else 0.

    Raises:
        RuntimeError: ``--device cuda`` on a cluster with fewer GPUs than workers.
    """
    import ray

    if device == "cpu":
        return 0.0
    available = ray.cluster_resources().get("GPU", 0.0)
    if device.startswith("cuda") and available < workers:
        raise RuntimeError(
            f"--device {device} with --workers {workers} needs {workers} GPUs; the Ray cluster has {available:g}"
        )
    return 1.0 if available >= workers else 0.0


class _Worker:
    """A Ray Data actor: the target loaded once, then one chunk of requests per row, run by ``method``."""

    def __init__(self, target: TargetConfig, threads: int, method: str, args: tuple):
        import torch

        from rsd_rerank.targets import load_target

        torch.set_num_threads(threads)
        self.target = load_target(target.model, device=target.device, dtype=target.dtype, device_map=target.device_map)
        self.method, self.args = getattr(self, method), args

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, Any]:
        results = [pickle.dumps(self.method(pickle.loads(task), *self.args)) for task in batch["task"]]
        return {"index": batch["index"], "result": results, "pid": [os.getpid()] * len(results)}

    def rerank(self, requests, decoding, prompt, batching, windows) -> list:
        from rsd_rerank.integrations.rank_llm import rerank_windowed

        return [
            r for batch in rerank_windowed(self.target, requests, decoding, prompt, batching, windows) for r in batch
        ]

    def compare(self, requests, methods, budgets, prompt, companions, batching) -> list[dict]:
        from rsd_rerank.integrations.compare import compare

        return compare(self.target, requests, None, methods, budgets, prompt, companions, batching)

    def cache(self, requests, prompt, budget, batching, directory) -> int:
        from rsd_rerank.training.cache import cached_queries

        return len(cached_queries(self.target, requests, prompt, budget, directory, batching))


@dataclass(frozen=True)
class Chunk:
    """What one chunk of requests gave, and the process that computed it (a restarted actor's is new)."""

    index: int
    result: Any
    pid: int


class Workers:
    """Ray Data over chunks of requests: ``map_batches`` with ``scale.workers`` actors holding the target.

    Each chunk is ``--batch-size`` whole requests, the chunks one process would decode, so the results
    equal ``--workers 1``; they come back in chunk order (``preserve_order``) as they finish. Ray Data
    restarts an actor that dies and retries its chunk.

    Args:
        target: what each actor loads (``--model``, ``--device``, ``--dtype``, ``--device-map``).
        scale: how many actors (use inside ``ray_cluster``).
    """

    def __init__(self, target: TargetConfig, scale: ScaleConfig):
        self.target, self.scale = target, scale
        self.gpus = gpus_per_worker(target.device, scale.workers)
        cores = os.cpu_count() or 1
        # A local cluster shares this machine's cores among the actors; a cluster's actors own theirs.
        self.threads = max(1, cores // scale.workers) if not scale.ray_address else cores

    def chunks(self, method: str, tasks: Sequence[list], *args: Any) -> Iterator[Chunk]:
        """``_Worker.<method>(task, *args)`` for every task, over the actors; yields in task order."""
        import ray
        from ray.data import DataContext

        context = DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False  # the commands draw their own
        rows = [{"index": i, "task": pickle.dumps(task)} for i, task in enumerate(tasks)]
        if not rows:
            return
        data = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            _Worker,
            fn_constructor_args=(self.target, self.threads, method, args),
            batch_size=1,  # a row is a chunk: never split, never merged, so chunks are the same as in one process
            batch_format="numpy",
            concurrency=self.scale.workers,
            num_cpus=1,
            num_gpus=self.gpus,
        )
        for row in data.iter_rows():
            yield Chunk(int(row["index"]), pickle.loads(row["result"]), int(row["pid"]))

    def rerank(
        self,
        requests: Sequence,
        decoding: DecodingConfig,
        prompt: PromptConfig,
        batching: BatchConfig = BatchConfig(),
        windows: WindowConfig = WindowConfig(),
    ) -> Iterator[list[Any]]:
        """``rerank_windowed`` spread over the actors: the same batches, in request order."""
        for chunk in self.chunks("rerank", request_chunks(requests, batching), decoding, prompt, batching, windows):
            yield chunk.result

    def compare(
        self,
        requests: Sequence,
        methods: Sequence[str],
        budgets: Sequence[int],
        prompt: PromptConfig,
        companions: dict[str, str],
        batching: BatchConfig,
    ) -> list[dict]:
        """``compare``'s records of ``requests``, chunk by chunk over the actors, in request order."""
        tasks = request_chunks(requests, batching)
        chunks = self.chunks("compare", tasks, list(methods), list(budgets), prompt, companions, batching)
        return [record for chunk in chunks for record in chunk.result]

    def cache(
        self,
        requests: Sequence,
        prompt: PromptConfig,
        budget: int,
        batching: BatchConfig = BatchConfig(),
        directory: str | None = None,
    ) -> None:
        """The training target cache of ``requests`` written by the actors (``directory``: the cache's
        root, shared by every node; default ``RSD_RERANK_CACHE``), then read back by the caller."""
        for _ in self.chunks("cache", request_chunks(requests, batching), prompt, budget, batching, directory):
            pass
