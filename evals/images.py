"""The image form every judge takes: [B, 3, H, W] floats in 0..1, as torch tensors or numpy arrays."""
import numpy as np
import torch


def numpy_images(images) -> np.ndarray:
    if isinstance(images, torch.Tensor):
        images = images.detach().float().cpu().numpy()
    images = np.asarray(images, dtype=np.float64)
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected images [B, 3, H, W] in 0..1, got shape {tuple(images.shape)}")
    return images
