"""How far is a set of generated images from the real data, and how varied is it?

* pca_features + frechet_distance: an FID-like distance computed in a PCA space fitted on real images (no
  Inception network needed at 16-32 px);
* mean_pairwise_distance: diversity, to catch a model that draws one image for every seed.
"""
import numpy as np
import torch

from .images import numpy_images


class PCAFeatures:
    """Projection onto the top principal components of a set of real images."""

    def __init__(self, mean: np.ndarray, components: np.ndarray):
        self.mean, self.components = mean, components  # [D], [K, D]

    def __call__(self, images) -> np.ndarray:
        flat = numpy_images(images).reshape(len(images), -1)
        if flat.shape[1] != self.mean.shape[0]:
            raise ValueError(f"images have {flat.shape[1]} values each but the PCA was fitted on {self.mean.shape[0]}; "
                             f"use images of the same resolution")
        return (flat - self.mean) @ self.components.T


def pca_features(real_images, n_components: int = 32) -> PCAFeatures:
    """Fit a PCA on `real_images`; call the result on any images of that size to get [B, n_components]."""
    flat = numpy_images(real_images).reshape(len(real_images), -1)
    if not 1 <= n_components <= min(flat.shape):
        raise ValueError(f"n_components must be in 1..{min(flat.shape)} for {flat.shape[0]} images of "
                         f"{flat.shape[1]} values, got {n_components}")
    mean = flat.mean(axis=0)
    _, _, components = np.linalg.svd(flat - mean, full_matrices=False)
    return PCAFeatures(mean, components[:n_components])


def frechet_distance(feats_a, feats_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [N, K] (the FID formula).

    tr(sqrt(Sa Sb)) is computed as tr(sqrt(Sa^1/2 Sb Sa^1/2)), a symmetric
    matrix, so two eigendecompositions replace a general (unstable) sqrtm.
    """
    a, b = np.asarray(feats_a, dtype=np.float64), np.asarray(feats_b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"need two feature arrays [N, K] with the same K and N >= 2, got {a.shape} and {b.shape}")
    mean_a, mean_b = a.mean(axis=0), b.mean(axis=0)
    cov_a, cov_b = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    root_a = _psd_sqrt(cov_a)
    middle = root_a @ cov_b @ root_a
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh((middle + middle.T) / 2), 0, None)).sum()
    distance = ((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_sqrt
    return float(max(distance, 0.0))  # rounding can leave a tiny negative number for identical sets


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def mean_pairwise_distance(images) -> float:
    """Mean over all pairs of the root-mean-square per-value difference (0..1).

    Dividing the L2 distance by sqrt(values per image) makes it independent of
    resolution. Near 0 means the images are all alike (mode collapse).
    """
    flat = torch.from_numpy(numpy_images(images).reshape(len(images), -1))
    if len(flat) < 2:
        raise ValueError("mean_pairwise_distance needs at least 2 images")
    return float(torch.pdist(flat).mean() / flat.shape[1] ** 0.5)
