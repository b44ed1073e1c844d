"""Unsupervised semantic segmentation over a dataset (paper Sec. 3.5 + supplement).

The pipeline (``method="spectral"``, the paper's)::

    per image      eigenvectors -> k-means segments -> background + the CLS feature of
                   every other segment's crop                        (segments.py)
    dataset        all segment features L2-normalised -> k-means, K = 20 clusters (seeded;
                   exact k-means on a sample, refined by streamed mini-batch k-means)
                                                                     (clustering.py)
    labelling      label 0 = background, label c + 1 = cluster c (never shared); adjacent
                   segments with the same label merge (the label map is per cell)
                                                                     (fit.py)

Baselines of the paper's Table 4: ``method="cluster-patch"`` (every patch feature of the
dataset clustered directly) and ``method="cluster-seg"`` (k-means on each image's patch
features, the mean feature of each segment clustered over the dataset). Both follow the
paper and have no background rule: pass ``clusters=21`` for VOC.

Modules: :mod:`.settings` (:class:`SemanticSettings` and the defaults), :mod:`.segments`
(per image), :mod:`.clustering` (k-means), :mod:`.rundir` (the run folder's files, the
palette), :mod:`.fit` (``semseg fit``), :mod:`.predict` (:func:`load_run`).
``load_run(run_dir).predict(image)`` labels a new image consistently with the run (or with
the self-trained model when ``semseg train`` has been run).

scikit-learn (``pip install "deepspectral[semseg]"``) is imported where it is used.
"""

from __future__ import annotations

from .clustering import assign_clusters, cluster_features
from .fit import FitResult, cluster_figure, fit
from .predict import SemanticRun, load_run
from .rundir import PALETTE, read_images, save_label_png, voc_palette
from .segments import (
    FeatureSource,
    ImageSegments,
    background_segment,
    eigengap_segments,
    image_segments,
    label_grid,
    segment_boxes,
    segments_of,
    spectral_segments,
)
from .settings import (
    BACKGROUND_RULES,
    BOX_EXPANSION_PATCHES,
    CLUSTERS,
    CROP_SIZE,
    EIGENVECTORS,
    METHODS,
    SEGMENTS,
    SemanticSettings,
)

__all__ = [
    "FeatureSource",
    "SemanticSettings",
    "ImageSegments",
    "SemanticRun",
    "FitResult",
    "METHODS",
    "BACKGROUND_RULES",
    "SEGMENTS",
    "EIGENVECTORS",
    "CLUSTERS",
    "BOX_EXPANSION_PATCHES",
    "CROP_SIZE",
    "PALETTE",
    "fit",
    "load_run",
    "image_segments",
    "segments_of",
    "spectral_segments",
    "background_segment",
    "eigengap_segments",
    "segment_boxes",
    "cluster_features",
    "assign_clusters",
    "label_grid",
    "save_label_png",
    "read_images",
    "voc_palette",
    "cluster_figure",
]
