"""The joblib backend: `import lucidity.joblib` registers "lucidity".

    import lucidity.joblib
    with joblib.parallel_backend("lucidity"):
        GridSearchCV(model, grid, n_jobs=-1).fit(X, y)

Each of joblib's batches (a `BatchedCalls`) runs as one job through
`lucidity.Executor`, so on any engine. joblib's auto-batching sizes the
batches (`AutoBatchingMixin`); `n_jobs=-1` is every worker slot of the live
nodes. A batch that calls joblib again (a nested `Parallel`) runs its inner
calls on the cluster too, and while it waits for them its worker's slot is
lent to them (`retrieval_context`), so nesting cannot deadlock a node.
`abort_everything` (after a failure) cancels what is queued and stops what
runs. The batch's own functions must import where the nodes run: their
package is shipped as a job's is, or installed there.

joblib is not a dependency of lucidity: this module needs it installed.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import sys
import sysconfig
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

from joblib import register_parallel_backend
from joblib.parallel import AutoBatchingMixin, ParallelBackendBase

from lucidity._options import JobOptions
from lucidity.engine import Engine, get_engine
from lucidity.executor import Executor
from lucidity.handle import blocking

__all__ = ["LucidityBackend"]

# How long n_jobs=-1 waits for a first live node.
NODES_WAIT_S = 10.0


def _installed(module: str) -> bool:
    """Whether `module`'s top-level package comes with Python or from
    site-packages (the nodes have those; the client ships only the others)."""
    top = sys.modules.get(module.partition(".")[0])
    path = getattr(top, "__file__", None)
    if not isinstance(path, str):
        return True  # built in, or a namespace package: nothing to ship
    return path.startswith(_INSTALLED) or "site-packages" in path


_INSTALLED = tuple(
    sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")
)


def _modules(value: Any) -> Iterator[str]:
    """The modules `value` refers to at a glance: a callable's own, or its
    type's; a partial's or a scikit-learn wrapper's function; a dict's values."""
    if isinstance(value, dict):
        for item in value.values():
            yield from _modules(item)
        return
    value = getattr(value, "function", value)  # scikit-learn's _FuncWrapper
    while isinstance(value, functools.partial):
        value = value.func
    module = getattr(value, "__module__", None) if callable(value) else None
    if not isinstance(module, str):
        module = type(value).__module__
    yield module


class _Batch:
    """A joblib batch as a job's callable.

    Its `__module__` (an instance attribute, pickled with it) names the
    first package of the batch's calls that is not installed: the function,
    or else what its arguments are (an estimator's class, a scorer). The
    client ships that package, as it would a job's; one package per batch.
    """

    def __init__(self, calls: Callable[[], Any]) -> None:
        self.calls = calls
        module = "builtins"
        for func, args, kwargs in getattr(calls, "items", [])[:1]:
            for candidate in itertools.chain(
                _modules(func), *map(_modules, args), *map(_modules, kwargs.values())
            ):
                if not _installed(candidate):
                    module = candidate
                    break
        self.__module__ = module

    def __call__(self) -> Any:
        return self.calls()


class LucidityBackend(AutoBatchingMixin, ParallelBackendBase):  # type: ignore[misc]
    """joblib's `ParallelBackendBase` on lucidity jobs."""

    supports_retrieve_callback = True
    supports_timeout = True
    supports_return_generator = True
    uses_threads = False
    supports_sharedmem = False
    default_n_jobs = -1

    def __init__(
        self,
        nesting_level: int | None = None,
        inner_max_num_threads: int | None = None,
        *,
        engine: Engine | None = None,
        options: JobOptions | None = None,
        **backend_kwargs: Any,
    ) -> None:
        super().__init__(
            nesting_level=nesting_level,
            inner_max_num_threads=inner_max_num_threads,
            **backend_kwargs,
        )
        self._engine = engine
        self._options = options
        self._executor: Executor | None = None
        self._futures: set[Future[Any]] = set()

    def __getstate__(self) -> dict[str, Any]:
        # A nested backend travels inside its batch: without this process's
        # engine, executor or futures (the worker has its own engine).
        state = dict(self.__dict__)
        state.update(_engine=None, _executor=None, _futures=set(), parallel=None)
        return state

    def _get_engine(self) -> Engine:
        return self._engine if self._engine is not None else get_engine()

    def effective_n_jobs(self, n_jobs: int | None) -> int:
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is not None and n_jobs > 0:
            return n_jobs
        nodes = self._get_engine().nodes(timeout=NODES_WAIT_S)
        slots = sum(n.slots for n in nodes) or 1
        if n_jobs is None:
            return slots
        return max(slots + 1 + n_jobs, 1)

    def configure(
        self,
        n_jobs: int | None = 1,
        parallel: Any = None,
        prefer: str | None = None,
        require: str | None = None,
        **backend_kwargs: Any,
    ) -> int:
        self.parallel = parallel
        count = self.effective_n_jobs(n_jobs)
        self._executor = Executor(
            max_workers=count, engine=self._get_engine(), options=self._options
        )
        return count

    def submit(
        self, func: Callable[[], Any], callback: Callable[[Any], None] | None = None
    ) -> Future[Any]:
        if self._executor is None:
            self.configure(getattr(self.parallel, "n_jobs", None), self.parallel)
        assert self._executor is not None
        future = self._executor.submit(_Batch(func))
        self._futures.add(future)
        future.add_done_callback(self._futures.discard)
        if callback is not None:
            future.add_done_callback(callback)
        return future

    def retrieve_result_callback(self, future: Future[Any]) -> Any:
        return future.result()

    def terminate(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None
        self.reset_batch_stats()

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """Cancel every batch of this call: queued ones never run, running
        ones are stopped where they run."""
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=False, cancel_futures=True)
        for future in list(self._futures):
            future.cancel()
        self._futures.clear()
        if ensure_ready and self.parallel is not None:
            self.configure(n_jobs=self.parallel.n_jobs, parallel=self.parallel)

    def get_nested_backend(self) -> tuple[LucidityBackend, int | None]:
        level = (self.nesting_level or 0) + 1
        return LucidityBackend(nesting_level=level, options=self._options), None

    @contextlib.contextmanager
    def retrieval_context(self) -> Iterator[None]:
        # Inside a job, joblib's wait for its inner batches gives the
        # worker's slot to them (outside one, this does nothing).
        with blocking():
            yield


register_parallel_backend("lucidity", LucidityBackend)
