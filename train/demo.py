"""Offline demo data: scikit-learn's handwritten digits (1,797 8x8 grayscale images of 0-9, shipped
inside the scikit-learn package, no download) written as an image folder that ``attnzoo train``
reads like any other::

    python -m attnzoo.train.demo data/digits            # data/digits/{train,val}/<digit>/<n>.png
    attnzoo train --data-dir data/digits --model nat_mini ...

Each image is upsampled (bilinear) to ``--size`` pixels and saved as RGB PNG; the split is stratified
and seeded (``--val-fraction`` of each class goes to val/).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Dict, Optional, Sequence

__all__ = ["write_digits", "main"]


def write_digits(root, size: int = 32, val_fraction: float = 0.2, seed: int = 0, limit: Optional[int] = None) -> Dict[str, int]:
    """Write the digits as ``root/{train,val}/<digit>/<index>.png``; returns the image count per split.
    ``limit``: keep the first ``limit`` images of the (shuffled) set, for quick tests."""
    import numpy as np
    from PIL import Image

    try:
        from sklearn.datasets import load_digits
    except ImportError:
        raise ImportError("the demo data is scikit-learn's digits: pip install 'attnzoo[train]' (or scikit-learn)") from None
    if not 8 <= size <= 512:
        raise ValueError(f"size must be in [8, 512] pixels, got {size}")
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    digits = load_digits()
    images, labels = digits.images, digits.target  # float 0..16, [N, 8, 8]
    order = np.random.default_rng(seed).permutation(len(labels))
    if limit is not None:
        if limit < 20:
            raise ValueError(f"limit must be >= 20 images (two per class), got {limit}")
        order = order[:limit]
    root = Path(root)
    counts = {"train": 0, "val": 0}
    for digit in range(10):
        idx = [i for i in order if labels[i] == digit]
        n_val = max(1, int(round(len(idx) * val_fraction)))
        for split, chosen in (("val", idx[:n_val]), ("train", idx[n_val:])):
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for i in chosen:
                pixels = np.clip(images[i] * (255.0 / 16.0), 0, 255).astype(np.uint8)
                img = Image.fromarray(pixels, mode="L").resize((size, size), Image.BILINEAR).convert("RGB")
                img.save(folder / f"{i:04d}.png")
                counts[split] += 1
    return counts


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m attnzoo.train.demo", description=(__doc__ or "").strip().splitlines()[0])
    parser.add_argument("root", help="folder to write (train/ and val/ are created inside)")
    parser.add_argument("--size", type=int, default=32, help="image side in pixels, 8-512 (default: 32)")
    parser.add_argument("--val-fraction", type=float, default=0.2, help="share of each class in val/ (default: 0.2)")
    parser.add_argument("--seed", type=int, default=0, help="split seed (default: 0)")
    args = parser.parse_args(argv)
    try:
        counts = write_digits(args.root, args.size, args.val_fraction, args.seed)
    except ValueError as e:
        parser.error(str(e))
    print(f"wrote {counts['train']} train / {counts['val']} val images of 10 classes ({args.size}x{args.size} px) to {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
