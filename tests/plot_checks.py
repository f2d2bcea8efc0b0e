"""What a figure test should check: the PNG decodes, has a real size, and has data drawn on it.
Axes, ticks and text are black (with a thin antialiased grey edge: about 1% of the pixels of an
empty figure with a title and labels); plotted series are coloured, or grey fills such as bars."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def assert_plot(path: Path, min_px: int = 200) -> np.ndarray:
    import matplotlib.image as mpimg
    assert Path(path).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    image = mpimg.imread(str(path))
    assert image.ndim == 3 and image.shape[0] >= min_px and image.shape[1] >= min_px, (path, image.shape)
    rgb = image[..., :3].astype(np.float64)
    chroma = rgb.max(axis=2) - rgb.min(axis=2)  # 0 for white, black and greys
    shade = rgb.mean(axis=2)
    coloured = float((chroma > 0.15).mean())
    drawn = float(((chroma > 0.15) | ((shade > 0.15) & (shade < 0.9))).mean())
    assert coloured >= 0.0005 or drawn >= 0.03, \
        f"{path}: {coloured:.2%} coloured and {drawn:.2%} drawn pixels; no data was plotted"
    return image
