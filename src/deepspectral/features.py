"""The patch features a backbone produces for one image (torch-free container)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .geometry import ImageGeometry

__all__ = ["PatchFeatures"]


@dataclass(frozen=True)
class PatchFeatures:
    """Dense features of one image on the backbone's patch grid.

    Attributes
    ----------
    features : (h, w, C) float32
        One feature vector per patch of the cropped input image (not normalised).
    patch_size : int
        Patch size P of the backbone; the cropped input is ``(h * P, w * P)`` pixels.
    image_size : (H, W)
        Size of the original image.
    input_size : (H_in, W_in)
        Size of the image given to the backbone after the ``max_size`` resize (equal to
        ``image_size`` when no resize happened), before the crop to a multiple of P.
    backbone, block, feature : str, int, str
        Where the features come from (registry name, block index, ``k``/``q``/``v``/``tokens``).
    cls : (C_cls,) float32 or None
        The class-token output of the backbone, when it was requested.
    """

    features: np.ndarray
    patch_size: int
    image_size: tuple[int, int]
    input_size: tuple[int, int]
    backbone: str = "unknown"
    block: int = -1
    feature: str = "k"
    cls: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.features.ndim != 3:
            raise ValueError(f"features: expected shape (h, w, C), got {self.features.shape}")
        expected = self.geometry.patch_grid
        if self.grid_size != expected:
            raise ValueError(
                f"features: a {self.grid_size[0]}x{self.grid_size[1]} patch grid does not fit an input image of "
                f"{self.input_size} with {self.patch_size}-pixel patches (expected {expected[0]}x{expected[1]})"
            )

    @property
    def grid_size(self) -> tuple[int, int]:
        """Patch grid ``(h, w)``."""
        return (int(self.features.shape[0]), int(self.features.shape[1]))

    @property
    def crop_size(self) -> tuple[int, int]:
        """Size ``(h * P, w * P)`` of the cropped input image the features cover."""
        h, w = self.grid_size
        return (h * self.patch_size, w * self.patch_size)

    @property
    def fit(self) -> str:
        """``"pad"`` when the grid covers more than the input (the input was zero-padded to
        a multiple of the patch size, TokenCut's boxes), else ``"crop"``."""
        h, w = self.grid_size
        padded = h * self.patch_size > self.input_size[0] or w * self.patch_size > self.input_size[1]
        return "pad" if padded else "crop"

    @property
    def geometry(self) -> ImageGeometry:
        """The sizes of the image and the maps between them (see :mod:`deepspectral.geometry`)."""
        return ImageGeometry(self.image_size, self.input_size, self.patch_size, self.fit)
