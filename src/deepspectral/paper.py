"""The paper's numbers as data, to print next to ours.

Melas-Kyriazi, Rupprecht, Laina, Vedaldi, "Deep Spectral Methods: A Surprisingly Strong
Baseline for Unsupervised Semantic Segmentation and Localization", CVPR 2022 (main text
and supplement). Values are stored as fractions in [0, 1] (the paper prints CorLoc and
semantic mIoU in percent, single-object mIoU as fractions).

Where the paper leaves a setting implicit it is said in ``note``: Table 1 and Table 3 use
"DINO-ViT-Base" without the patch size (both ViT-B/8 and ViT-B/16 are matched), and do not
state λ_knn; Table 2 uses λ_knn = 0 on VOC07; Table 7 varies λ_knn on VOC12.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = ["PaperNumber", "TABLES", "paper_number"]

_VIT_B = ("dino_vitb8", "dino_vitb16")
#: Rows of Table 4 for the baselines, by their ``deepspectral semseg fit --method`` name
#: (the paper's own method is ``spectral``).
_TABLE4_BASELINES = {"cluster-patch": "Cluster-Patch", "cluster-seg": "Cluster-Seg"}
_SEMANTIC_METHODS = ("spectral", *_TABLE4_BASELINES)


@dataclass(frozen=True)
class PaperNumber:
    """One number of the paper.

    Attributes
    ----------
    value : float
        Fraction in [0, 1].
    table : str
        E.g. ``"Table 7"``.
    metric : str
        ``corloc``, ``miou``.
    note : str
        The setting it was measured in.
    std : float or None
        Standard deviation over seeds where the paper gives one.
    """

    value: float
    table: str
    metric: str
    note: str = ""
    std: float | None = None


#: Every stored table: name -> {"caption": str, "rows": {row: {column: value or None}}}.
TABLES: dict = {
    "Table 1": {
        "caption": "Single-object localization, CorLoc (%), trainval sets; Ours = DINO ViT-B",
        "rows": {
            "Selective Search": {"voc07": 18.8, "voc12": 20.9, "coco20k": 16.0},
            "EdgeBoxes": {"voc07": 31.1, "voc12": 31.6, "coco20k": 28.8},
            "Kim et al.": {"voc07": 43.9, "voc12": 46.4, "coco20k": 35.1},
            "Zhang et al.": {"voc07": 46.2, "voc12": 50.5, "coco20k": 34.8},
            "DDT+": {"voc07": 50.2, "voc12": 53.1, "coco20k": 38.2},
            "rOSD": {"voc07": 54.5, "voc12": 55.3, "coco20k": 48.5},
            "LOD": {"voc07": 53.6, "voc12": 55.1, "coco20k": 48.5},
            "DINO-[CLS]": {"voc07": 45.8, "voc12": 46.2, "coco20k": 42.1},
            "LOST": {"voc07": 61.9, "voc12": 64.0, "coco20k": 50.7},
            "Ours": {"voc07": 62.7, "voc12": 66.4, "coco20k": 52.2},
        },
    },
    "Table 2": {
        "caption": "Architecture and pretraining, CorLoc (%) on VOC07, lambda_knn = 0",
        "rows": {
            "resnet50 (DINO)": {"LOST": 36.8, "Ours": 26.9},
            "vit_s16 (MoCo-v3)": {"LOST": 32.5, "Ours": 37.3},
            "dino_vits16": {"LOST": 61.9, "Ours": 61.6},
            "vit_b16 (MoCo-v3)": {"LOST": 53.3, "Ours": 61.1},
            "dino_vitb16": {"LOST": 60.1, "Ours": 61.6},
            "dino_vits8": {"LOST": 55.5, "Ours": 62.6},
            "dino_vitb8": {"LOST": 46.6, "Ours": 62.7},
        },
    },
    "Table 3": {
        "caption": "Single-object segmentation, mIoU (mean per-image IoU); Ours = DINO ViT-B",
        "rows": {
            "PertGAN": {"cub": 0.380, "duts-te": None, "dut-omron": None, "ecssd": None},
            "ReDO": {"cub": 0.426, "duts-te": None, "dut-omron": None, "ecssd": None},
            "UISB": {"cub": 0.442, "duts-te": None, "dut-omron": None, "ecssd": None},
            "IIC-seg": {"cub": 0.365, "duts-te": None, "dut-omron": None, "ecssd": None},
            "OneGAN": {"cub": 0.555, "duts-te": None, "dut-omron": None, "ecssd": None},
            "Voynov et al.": {"cub": 0.683, "duts-te": 0.498, "dut-omron": 0.453, "ecssd": 0.672},
            "Melas-Kyriazi et al.": {"cub": 0.664, "duts-te": 0.528, "dut-omron": 0.509, "ecssd": 0.713},
            "Ours": {"cub": 0.769, "duts-te": 0.514, "dut-omron": 0.567, "ecssd": 0.733},
        },
    },
    "Table 4": {
        "caption": "Semantic segmentation on VOC12 val, mIoU (%), mean +- std over 4 seeds",
        "rows": {
            "Cluster-Patch": {"miou": 5.3},
            "Cluster-Seg": {"miou": 12.1},
            "Ours w/o self-training": {"miou": 30.8, "std": 2.7},
            "Ours": {"miou": 37.2, "std": 3.8},
        },
    },
    "Table 6": {
        "caption": "Feature type, CorLoc (%) on VOC07, DINO ViT-S/16",
        "rows": {"k": {"corloc": 61.6}, "q": {"corloc": 33.1}, "v": {"corloc": 49.9}, "tokens": {"corloc": 37.3}},
    },
    "Table 7": {
        "caption": "Colour information, CorLoc (%) on VOC12 for lambda_knn",
        "rows": {
            "dino_vits16": {0.0: 58.0, 1.0: 60.1, 8.0: 61.9, 10.0: 61.5, math.inf: None},
            "dino_vitb16": {0.0: 57.7, 1.0: 59.5, 8.0: 61.1, 10.0: 61.2, math.inf: 24.2},
            "dino_vits8": {0.0: 59.4, 1.0: 60.0, 8.0: 62.6, 10.0: 62.5, math.inf: None},
            "dino_vitb8": {0.0: 60.5, 1.0: 61.2, 8.0: 62.7, 10.0: 62.5, math.inf: None},
        },
    },
    "Table 8": {
        "caption": "ViT block, CorLoc (%) on VOC07, DINO ViT-S/16 (block 12 = the last)",
        "rows": {"12": {"corloc": 61.6}, "11": {"corloc": 61.4}, "8": {"corloc": 50.5}, "4": {"corloc": 28.2}},
    },
    "Table 10": {
        "caption": "Eigenvectors for semantic segmentation, mIoU (%) on VOC12",
        "rows": {"3": {"miou": 29.7, "st": 32.7}, "5": {"miou": 33.3, "st": 36.3}, "10": {"miou": 31.4, "st": 37.5},
                 "15": {"miou": 31.8, "st": 36.0}},
    },
    "Table 11": {
        "caption": "Clusters K for semantic segmentation, mIoU (%) on VOC12, no self-training",
        "rows": {"20": {"miou": 33.3}, "30": {"miou": 38.5}, "40": {"miou": 42.8}},
    },
}


def _pct(value: float | None, table: str, metric: str, note: str, std: float | None = None) -> PaperNumber | None:
    if value is None:
        return None
    return PaperNumber(value=value / 100.0, table=table, metric=metric, note=note, std=None if std is None else std / 100.0)


def paper_number(
    task: str,
    dataset: str,
    *,
    backbone: str,
    knn_lambda: float | None = None,
    feature: str = "k",
    block: int = -1,
    n_clusters: int | None = None,
    self_training: bool = False,
    method: str = "spectral",
) -> PaperNumber | None:
    """The paper's number for the same task, dataset, backbone and setting, or ``None``.

    Parameters
    ----------
    task : {"localization", "segmentation", "semantic"}
    dataset : str
        ``voc07``, ``voc12``, ``coco20k``, ``ecssd``, ``duts-te``, ``dut-omron``, ``cub``.
    backbone : str
        Registry name (``dino_vits16``, ``dino_vitb8``, ...).
    knn_lambda : float, optional
    feature : str
    block : int
        -1 or 11 are the last block of a 12-block ViT.
    n_clusters : int, optional
        K of semantic segmentation (Table 11).
    self_training : bool
        Semantic segmentation after the self-training step (Table 4, "Ours").
    method : {"spectral", "cluster-patch", "cluster-seg"}
        Semantic segmentation method: the paper's, or a baseline of Table 4 (which the
        paper reports without self-training and for one K).

    Returns
    -------
    PaperNumber or None
        ``None`` where the paper has no number for this setting.

    Notes
    -----
    Lookup order for localization: Table 6 (feature kind) and Table 8 (block) for
    ViT-S/16 on VOC07; Table 2 for λ_knn = 0 on VOC07; Table 7 for the λ_knn it lists on
    VOC12; otherwise Table 1 for a DINO ViT-B backbone.
    """
    if task not in ("localization", "segmentation", "semantic"):
        raise ValueError(f"task: expected 'localization', 'segmentation' or 'semantic', got {task!r}")
    if method not in _SEMANTIC_METHODS:
        raise ValueError(f"method: expected one of {', '.join(_SEMANTIC_METHODS)}, got {method!r}")
    if task == "localization":
        last_block = block in (-1, 11)
        if dataset == "voc07" and backbone == "dino_vits16" and feature != "k" and last_block:
            row = TABLES["Table 6"]["rows"].get(feature)
            return _pct(row and row["corloc"], "Table 6", "corloc", f"feature={feature}, VOC07, ViT-S/16")
        if dataset == "voc07" and backbone == "dino_vits16" and feature == "k" and not last_block:
            row = TABLES["Table 8"]["rows"].get(str(block + 1 if block >= 0 else 12))
            return _pct(row and row["corloc"], "Table 8", "corloc", f"block={block}, VOC07, ViT-S/16")
        if feature != "k" or not last_block:
            return None
        if dataset == "voc07" and knn_lambda == 0:
            row = TABLES["Table 2"]["rows"].get(backbone)
            return _pct(row and row["Ours"], "Table 2", "corloc", "lambda_knn=0, VOC07")
        if dataset == "voc12" and knn_lambda is not None and backbone in TABLES["Table 7"]["rows"]:
            row = TABLES["Table 7"]["rows"][backbone]
            if float(knn_lambda) in row:
                return _pct(row[float(knn_lambda)], "Table 7", "corloc", f"lambda_knn={knn_lambda:g}, VOC12")
        if backbone in _VIT_B and dataset in ("voc07", "voc12", "coco20k"):
            return _pct(
                TABLES["Table 1"]["rows"]["Ours"][dataset],
                "Table 1",
                "corloc",
                "DINO ViT-B (patch size and lambda_knn not stated)",
            )
        return None
    if task == "segmentation":
        if backbone in _VIT_B and feature == "k" and block in (-1, 11):
            value = TABLES["Table 3"]["rows"]["Ours"].get(dataset)
            if value is not None:
                return PaperNumber(value=value, table="Table 3", metric="miou", note="DINO ViT-B (patch size not stated)")
        return None
    if dataset != "voc12":
        return None
    if method in _TABLE4_BASELINES:
        if self_training:  # the paper self-trains its own method only
            return None
        row = _TABLE4_BASELINES[method]
        return _pct(TABLES["Table 4"]["rows"][row]["miou"], "Table 4", "miou", f"{row} baseline")
    if self_training:
        row = TABLES["Table 4"]["rows"]["Ours"]
        return _pct(row["miou"], "Table 4", "miou", "with self-training, mean of 4 seeds", std=row["std"])
    if n_clusters is not None and str(n_clusters) in TABLES["Table 11"]["rows"] and n_clusters != 20:
        return _pct(TABLES["Table 11"]["rows"][str(n_clusters)]["miou"], "Table 11", "miou", f"K={n_clusters}, no self-training")
    row = TABLES["Table 4"]["rows"]["Ours w/o self-training"]
    return _pct(row["miou"], "Table 4", "miou", "no self-training, mean of 4 seeds", std=row["std"])

