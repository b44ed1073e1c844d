"""``semseg fit``: segments of every image, their features clustered over the dataset,
label maps, all written to a run folder (:mod:`.rundir`).

Stages of :func:`fit`::

    segments     per image (:func:`.segments.image_segments`), cached in run/segments/
                 (an interrupted fit resumes; a failed image is listed in errors.json)
    clustering   all segment features, streamed from the cache -> K centroids
    labels       label 0 = background, label c + 1 = cluster c -> run/labels/<name>.png
    figure       sample crops per cluster -> run/clusters.jpg
"""

from __future__ import annotations

import functools
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from ... import defaults
from ...data.images import is_url
from .clustering import assign_clusters, cluster_features
from .rundir import (
    CENTROIDS_FILE,
    FIGURE_FILE,
    FORMAT_VERSION,
    IMAGES_FILE,
    PALETTE,
    PARTIAL_FILE,
    RUN_FILE,
    labels_path,
    save_label_png,
    segments_path,
    weights_record,
)
from .segments import FeatureSource, ImageSegments, StageTimer, label_grid, segments_of
from .settings import SemanticSettings

__all__ = ["FitResult", "fit", "cluster_figure"]

#: Stages timed per computed image (the others are dataset stages).
_PER_IMAGE_STAGES = ("load", "features", "eigenvectors", "segments", "crop_features", "save")


@dataclass
class FitResult:
    """What :func:`fit` did.

    Attributes
    ----------
    run_dir : pathlib.Path
    done, failed : int
        Images labelled / that failed (listed in ``run_dir/errors.json``).
    n_features : int
        Segment features clustered.
    seconds : dict
        Wall-clock seconds per stage (``features``, ``eigenvectors``, ``segments``,
        ``crop_features``, ``clustering``, ``labels``, ``figure``).
    peak_rss_mb : float
        Peak resident memory of the process (MiB) at the end of the fit.
    """

    run_dir: Path
    done: int = 0
    failed: int = 0
    n_features: int = 0
    seconds: dict = field(default_factory=dict)
    peak_rss_mb: float = 0.0


def _peak_rss_mb() -> float:
    """Peak resident memory of this process in MiB (NaN where unknown)."""
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return float("nan")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024.0 * 1024.0) if sys.platform == "darwin" else peak / 1024.0


def _source_weights(source: FeatureSource, settings: SemanticSettings) -> SemanticSettings:
    """``settings`` with the weights file the source was loaded from (what ``predict`` must
    load again), however the source was given.

    A :class:`deepspectral.Backbone` has a ``weights`` attribute: its file (or ``None``
    for the pretrained weights of the hub). When ``settings.weights`` is unset it takes
    that file; when set, it must name the same file (``ValueError`` otherwise). Sources
    without the attribute (oracles) keep ``settings`` as given.
    """
    if not hasattr(source, "weights"):
        return settings
    loaded = source.weights
    if settings.weights is None:
        return settings if loaded is None else replace(settings, weights=str(Path(loaded).expanduser().resolve()))
    if loaded is None or Path(loaded).expanduser().resolve() != Path(settings.weights).expanduser().resolve():
        where = "the pretrained (hub) weights" if loaded is None else f"'{loaded}'"
        raise ValueError(
            f"settings: weights '{settings.weights}' is recorded, but the source was loaded from {where}; "
            "leave SemanticSettings(weights=None) to record the source's own file"
        )
    return settings


def _check_source(source: FeatureSource, settings: SemanticSettings) -> None:
    """The run records ``settings.precision`` for ``predict``; a backbone that computes in
    another precision would make the record wrong."""
    precision = getattr(source, "precision", None)
    if precision is not None and precision != settings.precision:
        raise ValueError(
            f"settings: precision {settings.precision!r} is recorded, but the source computes in "
            f"{precision!r}; pass SemanticSettings(precision={precision!r})"
        )


def fit(
    inputs: Sequence,
    run_dir,
    *,
    source: FeatureSource,
    settings: SemanticSettings | None = None,
    store=None,
    batch_size: int = 1,
    workers: int = 1,
    verbose: bool = True,
    figure: bool = True,
    eigen_backend: str = defaults.EIGEN_BACKEND,
    runner=None,
) -> FitResult:
    """Fit the semantic segmentation of a dataset and write the run folder.

    Parameters
    ----------
    inputs : sequence of InputImage
        From :func:`deepspectral.data.images.collect_inputs` (``path`` + output name).
    run_dir : str or os.PathLike
        Output folder (see :mod:`.rundir`). Per-image segments already there with the same
        settings are reused, so an interrupted fit resumes.
    source : FeatureSource
        The backbone (or an oracle). A source with a ``precision`` attribute (a
        :class:`deepspectral.Backbone`) must compute in ``settings.precision``.
    settings : SemanticSettings, optional
        ``settings.weights`` unset: the weights file of a :class:`deepspectral.Backbone`
        source is recorded (with its SHA-256, so that ``load_run`` rebuilds the same
        backbone and notices a moved or changed file).
    store : deepspectral.store.Store, optional
        Cache of features and decompositions shared with the other commands (see
        :class:`deepspectral.engine.Engine`).
    batch_size, workers : int
        As in :class:`deepspectral.engine.Engine`.
    verbose : bool
        Progress bars and a summary line.
    figure : bool
        Write ``clusters.jpg``.
    eigen_backend : {"auto", "cpu", "torch"}
        As in :class:`deepspectral.engine.Engine`.
    runner : callable, optional
        Called with the :class:`deepspectral.engine.Engine` of the per-image stage, returns
        what runs it (same outputs), e.g. ``lambda engine: RayEngine(engine, address="auto")``
        for a Ray cluster (:mod:`deepspectral.engine_ray`; the run folder must be on a file
        system the cluster's nodes share). Default: the engine itself, on this process.

    Returns
    -------
    FitResult
    """
    from ...engine import Engine
    from ...files import atomic_write, atomic_write_json

    settings = _source_weights(source, settings if settings is not None else SemanticSettings())
    _check_source(source, settings)
    weights = weights_record(settings.weights) if hasattr(source, "weights") else None
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    timer = StageTimer()
    items = list(inputs)

    engine = Engine(
        source, max_size=settings.max_size, knn_lambda=settings.knn_lambda, n_eigenvectors=settings.eigenvectors + 1,
        decompose=settings.method == "spectral", store=store, batch_size=batch_size, workers=workers,
        eigen_backend=eigen_backend,
    )  # fmt: skip
    if runner is not None:
        engine = runner(engine)
    counts, failed, computed = _segment_images(items, run_dir, engine, settings, timer, verbose=verbose)
    done = [item for item in items if item.name in counts]
    total = sum(counts.values())

    def chunks() -> Iterable[np.ndarray]:
        for item in done:
            if counts[item.name]:
                yield ImageSegments.load(segments_path(run_dir, item.relative)).features

    start = time.perf_counter()
    centroids = cluster_features(chunks, n_clusters=settings.clusters, seed=settings.seed, total=total, verbose=verbose)
    start = timer.add("clustering", start)
    atomic_write(run_dir / CENTROIDS_FILE, lambda handle: np.save(handle, centroids))
    records = _write_labels(done, run_dir, centroids, counts, verbose=verbose)
    start = timer.add("labels", start)
    if figure and done:
        from ...files import save_image_atomic

        picture = cluster_figure(run_dir, done, centroids, settings)
        save_image_atomic(run_dir / FIGURE_FILE, picture, quality=90)
        timer.add("figure", start)

    result = FitResult(
        run_dir=run_dir, done=len(done), failed=failed, n_features=total,
        seconds={k: round(v, 3) for k, v in timer.seconds.items()}, peak_rss_mb=round(_peak_rss_mb(), 1),
    )
    atomic_write_json(run_dir / IMAGES_FILE, records)
    atomic_write_json(run_dir / RUN_FILE, {
        "format": FORMAT_VERSION,
        "settings": asdict(settings),
        "weights": weights,
        "n_labels": settings.n_labels,
        "background_label": 0,
        "images": len(done),
        "failed": failed,
        "n_features": total,
        "images_computed": computed,
        "feature_dim": int(centroids.shape[1]),
        "seconds": result.seconds,
        "peak_rss_mb": result.peak_rss_mb,
    })
    if verbose:
        _print_summary(result, settings, computed)
    return result


def _segment_images(items: list, run_dir: Path, engine, settings: SemanticSettings,
                    timer: StageTimer, *, verbose: bool) -> tuple[dict[str, int], int, int]:
    """Stage 1: the segments of every image, read from the run folder or computed on the
    engine (decode, features, decomposition: cached and batched as in every command).

    Returns
    -------
    counts : dict
        Segment features of every image that has segments, by output name.
    failed : int
        Images that failed (in ``errors.json``).
    computed : int
        Images computed (not found in the run folder) by this call.

    On Ctrl-C, what was measured is written to ``PARTIAL_FILE`` and the interrupt re-raised.
    """
    from ...files import atomic_write_json

    key = settings.segment_key()
    counts: dict[str, int] = {}
    todo = []
    for item in items:
        try:
            cached = ImageSegments.load(segments_path(run_dir, item.relative), key=key)
        except (OSError, ValueError, KeyError):  # missing, unreadable or of an older format
            cached = None
        if cached is None:
            todo.append(item)
        else:
            counts[item.name] = int(cached.segment_ids.size)

    def collect(item, record: dict) -> None:
        for stage, seconds in record["seconds"].items():
            timer.seconds[stage] = timer.seconds.get(stage, 0.0) + seconds
        counts[item.name] = record["segments"]

    work = functools.partial(_segment_work, run_dir=run_dir, settings=settings, key=key)
    try:
        summary = engine.process(todo, work, out_dir=run_dir, desc="semseg fit: segments", verbose=verbose,
                                 collect=collect, uses_backbone=settings.method == "spectral")  # fmt: skip
    except KeyboardInterrupt:  # keep what the interrupted run measured; the segments are saved
        atomic_write_json(run_dir / PARTIAL_FILE, {
            "images_computed": len(counts) - (len(items) - len(todo)),
            "seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
            "peak_rss_mb": round(_peak_rss_mb(), 1),
        })
        raise
    return counts, summary.failed, summary.done


def _segment_work(result, *, run_dir: Path, settings: SemanticSettings, key: str) -> dict:
    """Stage 1 for one image (on this process, or in a Ray task with ``--engine ray``):
    its segments, saved in the run folder. Returns its record: the number of segments and
    the seconds per stage (the engine's, then those of :func:`.segments.segments_of`)."""
    timer = StageTimer(dict(result.seconds))
    segments = segments_of(
        result.image, features=result.features, decomposition=result.decomposition, source=result.backbone,
        settings=settings, timer=timer,
    )  # fmt: skip
    start = time.perf_counter()
    segments.save(segments_path(run_dir, result.item.relative), key=key)
    timer.add("save", start)
    return {"segments": int(segments.segment_ids.size), "seconds": timer.seconds}


def _write_labels(done: list, run_dir: Path, centroids: np.ndarray, counts: dict[str, int], *,
                  verbose: bool) -> list[dict]:
    """Stage 3: the label PNG of every image; returns the records of ``images.json``."""
    from tqdm.auto import tqdm

    records = []
    for item in tqdm(done, desc="semseg fit: labels", unit="img", disable=(not verbose) or None, file=sys.stderr):
        segments = ImageSegments.load(segments_path(run_dir, item.relative))
        grid = label_grid(segments, assign_clusters(segments.features, centroids))
        labels = segments.geometry.grid_to_image(grid)
        label_path = labels_path(run_dir, item.relative)
        save_label_png(label_path, labels.astype(np.uint8))
        records.append({
            "image": item.name,
            "file": item.path if is_url(item.path) else str(Path(item.path).resolve()),
            "labels": label_path.relative_to(run_dir).as_posix(),
            "segments": counts[item.name],
        })
    return records


def _print_summary(result: FitResult, settings: SemanticSettings, computed: int) -> None:
    per_image = {k: round(v / max(1, computed), 4) for k, v in result.seconds.items() if k in _PER_IMAGE_STAGES}
    dataset = {k: v for k, v in result.seconds.items() if k not in per_image}
    print(f"semseg fit: {result.done} images ({computed} computed, the rest cached), {result.n_features} segment "
          f"features, K={settings.clusters}; seconds per computed image by stage {per_image}; "
          f"dataset stages (s) {dataset}; peak memory {result.peak_rss_mb:.0f} MiB", flush=True)


def cluster_figure(run_dir, items: Sequence, centroids: np.ndarray, settings: SemanticSettings, *,
                   per_cluster: int = 8, tile: int = 80) -> np.ndarray:
    """A picture like the paper's Fig. 10: one row per cluster (its palette colour on the
    left), up to ``per_cluster`` crops of segments assigned to it (seeded choice).

    Parameters
    ----------
    run_dir : str or os.PathLike
        A run folder with the segments of ``items``.
    items : sequence of InputImage
    centroids : (K, C) float32
    settings : SemanticSettings
        Its ``seed`` seeds the choice of crops.
    per_cluster : int
        Crops per row.
    tile : int
        Side of each square tile (pixels).

    Returns
    -------
    (K * tile, (per_cluster + 1) * tile, 3) uint8
    """
    from PIL import Image

    run_dir = Path(run_dir)
    rng = np.random.default_rng(settings.seed)
    members: dict[int, list[tuple[int, np.ndarray]]] = {c: [] for c in range(centroids.shape[0])}
    seen = np.zeros(centroids.shape[0], dtype=np.int64)
    for index, item in enumerate(items):  # reservoir sampling per cluster
        segments = ImageSegments.load(segments_path(run_dir, item.relative))
        for cluster, box in zip(assign_clusters(segments.features, centroids), segments.boxes_xyxy):
            seen[cluster] += 1
            bucket = members[int(cluster)]
            if len(bucket) < per_cluster:
                bucket.append((index, box))
            else:
                slot = int(rng.integers(seen[cluster]))
                if slot < per_cluster:
                    bucket[slot] = (index, box)
    canvas = np.full((centroids.shape[0] * tile, (per_cluster + 1) * tile, 3), 255, dtype=np.uint8)
    cache: dict[int, np.ndarray] = {}
    for cluster, bucket in members.items():
        top = cluster * tile
        canvas[top + 4:top + tile - 4, 4:tile - 4] = PALETTE[cluster + 1]
        for column, (index, box) in enumerate(sorted(bucket, key=lambda entry: entry[0])):
            try:
                if index not in cache:
                    cache = {index: items[index].load_image()}
                x1, y1, x2, y2 = (int(v) for v in box)
                crop = cache[index][y1:max(y2, y1 + 1), x1:max(x2, x1 + 1)]
                thumb = np.asarray(Image.fromarray(crop).resize((tile - 4, tile - 4), Image.Resampling.BILINEAR))
            except (OSError, ValueError):
                continue
            left = (column + 1) * tile
            canvas[top + 2:top + tile - 2, left + 2:left + tile - 2] = thumb
    return canvas
