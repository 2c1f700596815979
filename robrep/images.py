"""Result images as PNG bytes (what the store keeps), and back."""

from __future__ import annotations

import io

import numpy as np
import torch
from PIL import Image


def encode_png(image: torch.Tensor) -> bytes:
    """(3, H, W) or (1, H, W) float in [0,1] -> 8-bit RGB or grey PNG bytes."""
    array = (image.detach().clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    buffer = io.BytesIO()
    if array.shape[2] == 1:
        Image.fromarray(array[..., 0], mode="L").save(buffer, format="PNG")
    else:
        Image.fromarray(array, mode="RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes (RGB or grey) -> (H, W, 3) uint8."""
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
