"""Peak memory and time of ``emcli segment`` on a large image, against Pillow + scikit-learn.

A generated W×H RGBA PNG (default 4000×4000, 16 megapixels: four noisy colour
regions and a transparent corner) is segmented by ``emcli segment -k 4`` in its
own process; its peak RSS (``ru_maxrss``) is reported in MB above that of a
process that only imported the same modules. The reference job does the same
work with Pillow and scikit-learn: the pixels as a float64 array, a
``GaussianMixture(4)`` fitted on 250 000 of them, every pixel predicted, the
painted image written. Reported, never asserted.

    .venv/bin/python benchmarks/bench_segment.py              # 16 megapixels
    .venv/bin/python benchmarks/bench_segment.py --side 2000  # 4 megapixels, quicker

Unset OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE together for this command.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
from bench_memory import peak_rss

EMCLI = str(Path(sys.executable).with_name("emcli"))
SKLEARN_JOB = """
import sys, numpy as np
from PIL import Image
from sklearn.mixture import GaussianMixture
Image.MAX_IMAGE_PIXELS = None
rgba = np.asarray(Image.open(sys.argv[1]).convert("RGBA"))
seen = rgba[..., 3].reshape(-1) > 0
X = rgba[..., :3].reshape(-1, 3).astype(np.float64)
rng = np.random.default_rng(0)
idx = np.sort(rng.choice(np.flatnonzero(seen), size=min(250_000, seen.sum()), replace=False))
gm = GaussianMixture(4, random_state=0).fit(X[idx])
labels = np.full(X.shape[0], -1)
labels[seen] = gm.predict(X[seen])
colours = np.vstack([np.round(gm.means_).clip(0, 255), [0, 0, 0]]).astype(np.uint8)
alpha = np.where(labels >= 0, 255, 0).astype(np.uint8)
out = np.dstack([colours[labels].reshape(rgba.shape[0], rgba.shape[1], 3),
                 alpha.reshape(rgba.shape[:2])])
Image.fromarray(out, "RGBA").save(sys.argv[2])
"""
BASELINE = {
    "emcli": "import numpy, scipy.linalg, typer, rich, PIL.Image, matplotlib; "
             "import emcli.cli, emcli.fitting, emcli.io, emcli.segmentation",
    "sklearn": "import numpy, PIL.Image, sklearn.mixture",
}


def make_image(path: Path, side: int) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    colours = np.array([(200, 40, 40), (40, 170, 60), (30, 50, 190), (230, 220, 90)], np.uint8)
    rgba = np.empty((side, side, 4), np.uint8)
    half = side // 2
    for k, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        block = rgba[r * half:(r + 1) * half, c * half:(c + 1) * half]
        noise = rng.normal(0, 10, (*block.shape[:2], 3))
        block[..., :3] = np.clip(colours[k] + noise, 0, 255)
        block[..., 3] = 255
    rgba[: side // 10, : side // 10, 3] = 0
    Image.fromarray(rgba, "RGBA").save(path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--side", type=int, default=4000, help="image side in pixels")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "big.png"
        make_image(image, a.side)
        mp = a.side * a.side / 1e6
        print(f"image: {a.side}×{a.side} = {mp:.1f} megapixels, {image.stat().st_size / 1e6:.1f} "
              "MB PNG; machine shared with other jobs: times are noisy")
        base = {k: peak_rss([sys.executable, "-c", v])[0] for k, v in BASELINE.items()}
        em, em_s = peak_rss([EMCLI, "segment", str(image), "-k", "4", "-o", tmp, "-q",
                            "--max-pixels", str(a.side * a.side)])
        sk, sk_s = peak_rss([sys.executable, "-c", SKLEARN_JOB, str(image),
                            str(Path(tmp) / "sk.png")])
    for name, peak, below, seconds in (("emcli segment -k 4", em, base["emcli"], em_s),
                                       ("Pillow + scikit-learn", sk, base["sklearn"], sk_s)):
        print(f"{name:22s} peak {peak:7.0f} MB, {peak - below:7.0f} MB above imports "
              f"({(peak - below) / mp:.0f} MB per megapixel), {seconds:6.1f} s")
    print(f"ratios (scikit-learn / emcli): memory above imports "
          f"{(sk - base['sklearn']) / (em - base['emcli']):.2f}×, time {sk_s / em_s:.2f}×")


if __name__ == "__main__":
    main()
