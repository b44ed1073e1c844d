"""The engine on a Ray cluster: the same runs as :class:`deepspectral.engine.Engine`, spread
over the cluster's machines, with the same outputs.

:class:`RayEngine` wraps a configured :class:`~deepspectral.engine.Engine` and has the same
:meth:`~RayEngine.process` (``pip install "deepspectral[ray]"``; ``--engine ray`` on the
command line)::

    driver (this process)                       the cluster
    ---------------------                       -----------
    items, in batches of batch_size  ───────►  backbone actors (one per GPU, or N on CPUs):
                                               decode, cached decomposition, features
                                               (cached or one forward pass), cache writes
                                      ───────►  one task per image (1 CPU): the eigen-step,
                                               its cache write, then ``work(result)``
    results in input order  ◄──────────────────  ``work``'s record, or the image's error
    progress bar, collect(item, record),
    summary, OUT/errors.json (run_batch)

  The eigen-step's backend is decided on each actor for its own backbone
  (:meth:`Engine.with_backbone`). In torch (``--eigen-backend auto``, the default, on a GPU
  actor, or ``torch`` asked for) the actor runs it, each batch's images of one size
  together, and the image task only runs ``work``; otherwise it stays in the image task.

  Work that runs the backbone again (``uses_backbone``: ``semseg fit``'s segment crops,
  through ``result.backbone``) runs on the actors instead, the eigen-step too (on the GPU
  with the torch eigen-step, batched as in a local run): no image task then, and on CPUs
  ``--ray-actors`` is the number of images processed at once.

- **Same outputs.** A batch is the same ``batch_size`` slice of the items as in a local run
  and goes through :meth:`Engine._prepare` and :meth:`Engine._decompose`, the local engine's
  own steps. The eigen-step's BLAS runs with the thread count a local run would use
  (``workers == 1``: every core of the node; more: one thread), since a different number of
  BLAS threads changes the eigenvectors in the last bits; so on the same machine a Ray run
  writes byte-identical files.
- **Resumable.** Actors and tasks read and write the engine's :class:`~deepspectral.store.Store`
  under the same keys (the cache folder must be on a file system every node sees), so a
  re-run after the driver died recomputes nothing that was finished.
- **Fault-tolerant.** Actors restart and retry their calls, tasks are retried
  (:data:`ACTOR_MAX_RESTARTS`, :data:`TASK_MAX_RETRIES`) when their worker process or node
  dies; outputs are written atomically, so a retried image leaves the same files once.
  An image whose retries are used up counts as failed (``errors.json``), like any other
  per-image error.
- **Records on the driver.** ``work`` runs in a Ray task: it must not rely on changing the
  driver's state. It returns a small record instead, which ``collect(item, record)`` gets
  on the driver in input order (see :meth:`Engine.process`). A new dataset command
  (e.g. ``discover``) that follows this protocol runs on both engines unchanged.
"""

from __future__ import annotations

import itertools
import os
from collections import deque
from typing import Callable, Iterable

from . import defaults
from .engine import Engine, ImageResult, RunSummary, run_batch
from .errors import FATAL_ERRORS, PER_IMAGE_ERRORS, SetupError

__all__ = ["RayEngine", "RayWorkerLost", "require_ray", "ENGINES", "ACTOR_MAX_RESTARTS", "TASK_MAX_RETRIES"]

#: The ``--engine`` choices (written once, in :mod:`deepspectral.defaults`).
ENGINES = defaults.ENGINES
#: Restarts of a backbone actor whose process died (its pending batches are retried on the
#: new one); finite, so a batch that kills every actor ends the run instead of looping.
ACTOR_MAX_RESTARTS = 3
#: Retries of an image's task whose worker process or node died (Ray's default is 3).
TASK_MAX_RETRIES = 3
#: Logical CPUs a backbone actor on the CPU reserves (the eigen tasks reserve one each).
ACTOR_CPUS = 1
#: Batches queued per actor beyond the one it works on (keeps the backbone busy).
ACTOR_QUEUE = 1

_INSTALL_HINT = 'the Ray engine needs Ray: pip install "deepspectral[ray]"'


class RayWorkerLost(RuntimeError):
    """An image's Ray worker (or node) died more often than the retries allow; a per-image
    error (:data:`deepspectral.errors.PER_IMAGE_ERRORS`)."""


def require_ray():
    """Return the ``ray`` module, or raise ``ImportError`` naming the pip extra."""
    try:
        import ray
    except ImportError:
        raise ImportError(_INSTALL_HINT) from None
    return ray


class RayEngine:
    """Run an :class:`~deepspectral.engine.Engine`'s work on a Ray cluster.

    Parameters
    ----------
    engine : Engine
        The settings, cache and backbone; the backbone is rebuilt in each actor (a
        :class:`deepspectral.Backbone`, from its name, weights file and settings: the file
        must be readable at the same path on every node) or, for any other source of
        features, sent to the actors as it is (pickled).
    address : str or None
        Ray cluster to join (``"auto"``: the one started on this machine by
        ``ray start``; ``"ray://host:10001"``: Ray Client); None starts a local Ray for
        this run and stops it afterwards. Ignored when Ray is already initialised.
    actors : int or None
        Backbone actors; None: one per GPU of the cluster when the backbone runs on a
        GPU, else 1. CPU actors reserve :data:`ACTOR_CPUS` each and need a CPU left for the
        eigen-step.
    device : str
        ``--device`` as given (``auto``, ``cpu``, ``cuda``...): where the actors' backbone
        runs; ``auto`` uses a GPU when the cluster has one.
    init_options : dict, optional
        Extra ``ray.init`` arguments for a local Ray (e.g. ``num_cpus``).
    """

    def __init__(
        self,
        engine: Engine,
        *,
        address: str | None = None,
        actors: int | None = None,
        device: str = "auto",
        init_options: dict | None = None,
    ) -> None:
        if not isinstance(engine, Engine):
            raise ValueError(f"engine: expected a deepspectral.engine.Engine, got {type(engine).__name__}")
        if actors is not None and actors < 1:
            raise ValueError(f"actors: expected an integer >= 1 or None, got {actors!r}")
        require_ray()
        self.engine = engine
        self.address = address
        self.actors = actors
        self.device = device
        self.init_options = dict(init_options or {})
        self._actors: list = []
        self._pids: list[int] = []

    def __getattr__(self, name):  # settings, store, backbone...: those of the wrapped engine
        if name == "engine":
            raise AttributeError(name)
        return getattr(self.engine, name)

    # ------------------------------------------------------------------ running
    def process(
        self,
        items: Iterable,
        work: Callable[[ImageResult], object],
        *,
        out_dir=None,
        desc: str,
        verbose: bool = True,
        skip: Callable[[object], bool] | None = None,
        collect: Callable[[object, object], None] | None = None,
        uses_backbone: bool = False,
    ) -> RunSummary:
        """As :meth:`Engine.process`, with ``work`` run in Ray tasks (it must be picklable
        and write its outputs where the driver can read them: a shared file system), or,
        with ``uses_backbone``, on the backbone actors (``result.backbone`` is theirs)."""
        ray = require_ray()
        everything = list(items)
        items = [item for item in everything if not skip(item)] if skip is not None else everything
        started = not ray.is_initialized()
        if started:
            import logging

            options = {"logging_level": logging.WARNING}
            if self.address is None:  # a local Ray for this run: no dashboard
                options["include_dashboard"] = False
            try:
                ray.init(address=self.address, **{**options, **self.init_options})
            except (ConnectionError, TimeoutError, ValueError, RuntimeError) as error:
                where = "start a local Ray" if self.address is None else f"join the Ray cluster at {self.address!r}"
                raise SetupError(f"cannot {where}: {error}") from None
        try:
            pipeline = _Pipeline(ray, self, items, work, on_actors=uses_backbone)
            try:

                def step(item) -> None:
                    record = pipeline.next_record()
                    if collect is not None:
                        collect(item, record)

                return run_batch(items, step, out_dir=out_dir, desc=desc, verbose=verbose, skipped=len(everything) - len(items))
            finally:
                pipeline.close()
        finally:
            if started:
                ray.shutdown()

    def worker_pids(self) -> list[int]:
        """Process ids of the backbone actors when the run in progress started (for
        monitoring and the fault-tolerance test); empty between runs."""
        return list(self._pids)

    # ------------------------------------------------------------------ set-up
    def _uses_gpu(self, ray) -> bool:
        if self.device == "cpu" or self.device == "mps":
            return False
        gpus = int(ray.cluster_resources().get("GPU", 0))
        if self.device.startswith("cuda") and gpus == 0:
            raise SetupError(f"device: {self.device!r} asked for, but the Ray cluster has no GPU")
        return gpus > 0

    def _start_actors(self, ray, *, on_actors: bool = False) -> tuple[list, int]:
        """The backbone actors, and the number of eigen tasks that can run at once (none
        needed when the work runs ``on_actors``)."""
        gpu = self._uses_gpu(ray)
        cpus = int(ray.cluster_resources().get("CPU", 0))
        count = self.actors or (int(ray.cluster_resources().get("GPU", 0)) if gpu else 1)
        if gpu and count > int(ray.cluster_resources().get("GPU", 0)):
            raise SetupError(f"actors: {count} backbone actors asked for on GPUs, the Ray cluster has fewer GPUs")
        if not gpu and not on_actors and cpus - count * ACTOR_CPUS < 1:
            raise SetupError(
                f"actors: {count} backbone actor(s) on the CPU take {count * ACTOR_CPUS} of the cluster's "
                f"{cpus} CPUs and leave none for the eigen-step; use fewer actors or more CPUs"
            )
        if not gpu and on_actors and count * ACTOR_CPUS > cpus:
            raise SetupError(
                f"actors: {count} backbone actor(s) on the CPU need {count * ACTOR_CPUS} CPUs, the Ray "
                f"cluster has {cpus}; use fewer actors or more CPUs"
            )
        factory = _backbone_factory(self.engine.backbone, "cuda" if gpu else "cpu")
        shell = _engine_shell(self.engine)
        resources = {"num_gpus": 1, "num_cpus": 0} if gpu else {"num_cpus": ACTOR_CPUS}
        actor_class = ray.remote(_BackboneActor).options(
            max_restarts=ACTOR_MAX_RESTARTS, max_task_retries=-1, **resources
        )
        self._actors = [actor_class.remote(shell, factory) for _ in range(count)]
        try:  # waits for the backbones to load
            self._pids = ray.get([actor.pid.remote() for actor in self._actors])
        except ray.exceptions.RayActorError as error:  # e.g. the weights file is not on that machine
            for actor in self._actors:
                ray.kill(actor)
            self._actors = []
            raise SetupError(f"the backbone actors could not start: {error}") from None
        return self._actors, max(1, cpus - (0 if gpu else count * ACTOR_CPUS))


class _Pipeline:
    """Submits batches to the actors and image tasks ahead of the driver, at most a
    window of images in flight, and hands back each image's record in input order."""

    def __init__(self, ray, owner: RayEngine, items: list, work, *, on_actors: bool = False) -> None:
        self.ray = ray
        self.owner = owner
        self.items = items
        self.on_actors = on_actors
        engine = owner.engine
        actors, slots = owner._start_actors(ray, on_actors=on_actors)
        self.actors = itertools.cycle(actors)
        shell = ray.put(_engine_shell(engine))
        work_ref = ray.put(work)
        blas_threads = 0 if engine.workers == 1 else 1  # 0: every core of the node (as a local run)
        self.finish = ray.remote(_finish_image).options(num_cpus=1, max_retries=TASK_MAX_RETRIES)
        self.task_args = (shell, work_ref, blas_threads)
        self.batch_size = engine.batch_size
        self.window = engine.batch_size * len(actors) * (1 + ACTOR_QUEUE) + (0 if on_actors else 2 * slots)
        self.starts = iter(range(0, len(items), engine.batch_size))
        self.pending: deque = deque()  # one ObjectRef per submitted image, in input order

    def _submit_batch(self) -> bool:
        start = next(self.starts, None)
        if start is None:
            return False
        batch = self.items[start : start + self.batch_size]
        actor = next(self.actors)
        if self.on_actors:  # (ok, record or error) per image, from the actor itself
            done = actor.process.options(num_returns=len(batch)).remote(batch, *self.task_args[1:])
            self.pending.extend([done] if len(batch) == 1 else done)
            return True
        prepared = actor.prepare.options(num_returns=len(batch)).remote(batch)
        if len(batch) == 1:
            prepared = [prepared]
        self.pending.extend(self.finish.remote(ref, *self.task_args) for ref in prepared)
        return True

    def next_record(self):
        """The record of the next image in input order; raises its per-image error."""
        while len(self.pending) < self.window and self._submit_batch():
            pass
        ref = self.pending.popleft()
        ray = self.ray
        try:
            ok, value = ray.get(ref)
        except ray.exceptions.RayTaskError as error:  # a fatal error or a bug in the task
            cause = getattr(error, "cause", None)
            raise (cause if isinstance(cause, BaseException) else error) from None
        except (ray.exceptions.WorkerCrashedError, ray.exceptions.RayActorError, ray.exceptions.ObjectLostError,
                ray.exceptions.OutOfMemoryError, ray.exceptions.NodeDiedError) as error:  # fmt: skip
            raise RayWorkerLost(f"the Ray worker died and the retries were used up: {error}") from None
        if not ok:
            raise value
        return value

    def close(self) -> None:
        for ref in self.pending:
            self.ray.cancel(ref, force=True)
        self.pending.clear()
        for actor in self.owner._actors:
            self.ray.kill(actor)
        self.owner._actors = []
        self.owner._pids = []


# ---------------------------------------------------------------------------------------
# What runs on the workers
# ---------------------------------------------------------------------------------------


def _engine_shell(engine: Engine) -> Engine:
    """A copy of ``engine`` without its backbone (its weights digest computed here once)."""
    import copy

    engine.feature_settings()  # caches the weights' digest: the actors need not read the file
    shell = copy.copy(engine)
    shell.backbone = None
    return shell


def _backbone_factory(backbone, device: str):
    """A picklable callable that rebuilds ``backbone`` on a worker."""
    import functools

    from .backbones import Backbone

    if isinstance(backbone, Backbone):
        return functools.partial(
            Backbone, backbone.name, backbone.weights, device=device, block=backbone.block,
            feature=backbone.feature, precision=backbone.precision,
        )  # fmt: skip
    return functools.partial(_identity, backbone)


def _identity(value):
    return value


class _BackboneActor:
    """Holds one backbone; prepares batches (:meth:`Engine._prepare`) for the image tasks,
    with the eigen-step done here when it runs on the backbone's device (torch)."""

    def __init__(self, shell: Engine, factory) -> None:
        self.engine = shell.with_backbone(factory())  # "auto": torch when this actor has a GPU

    def _prepared(self, items: list) -> list:
        """``(result, decomposition key, eigen-step still needed)`` per item; the torch
        eigen-step runs here, the batch's images of one size together (as Engine.run)."""
        engine = self.engine
        prepared = [(result, key, result.error is None and engine._needs_decomposition(result))
                    for result, key in engine._prepare(items)]  # fmt: skip
        if engine.eigen_backend == "torch":
            together = [(result, key) for result, key, needed in prepared if needed]
            if together:
                engine._decompose_together(together)
            prepared = [(result, key, False) for result, key, _ in prepared]
        return prepared

    def prepare(self, items: list):
        """:meth:`_prepared`, one Ray return per item."""
        out = self._prepared(items)
        return out if len(out) != 1 else out[0]

    def process(self, items: list, work, blas_threads: int):
        """``(ok, record or error)`` per item: :meth:`_prepared`, the eigen-step and ``work``
        on this actor (``result.backbone`` is its backbone), as in a local run."""
        engine = self.engine
        out = [_finish_image(entry, engine, work, blas_threads, backbone=engine.backbone) for entry in self._prepared(items)]
        return out if len(out) != 1 else out[0]

    def pid(self) -> int:
        return os.getpid()


_BLAS_THREADS = {"current": None, "limiter": None}


def _set_blas_threads(threads: int) -> None:
    """BLAS threads of this worker process, changed only when it differs (switching is slow)."""
    if _BLAS_THREADS["current"] == threads:
        return
    from threadpoolctl import threadpool_limits

    _BLAS_THREADS["limiter"] = threadpool_limits(limits=threads, user_api="blas")
    _BLAS_THREADS["current"] = threads


def _finish_image(prepared, shell: Engine, work, blas_threads: int, *, backbone=None):
    """The eigen-step (when needed) and ``work`` of one image: ``(True, record)``, or
    ``(False, error)`` for a per-image error; a fatal error raises. ``work`` sees
    ``backbone`` as ``result.backbone``."""
    from .files import recording_writes, remove_files

    result, eig_key, needed = prepared
    with recording_writes() as written:
        try:
            result.check()
            if needed:
                _set_blas_threads(blas_threads or os.cpu_count() or 1)
                shell._decompose(result, eig_key)
                result.check()
            result.backbone = backbone
            return True, work(result)
        except FATAL_ERRORS:
            raise
        except PER_IMAGE_ERRORS as error:
            remove_files(written)  # an image that failed halfway leaves no outputs
            return False, error
