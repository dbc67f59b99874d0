"""``emcli segment``: cluster an image's pixels by colour; write the segmented image,
the label map, the model file and the convergence log (and pictures with ``--plot``)."""

from __future__ import annotations

import os
import time
from enum import Enum
from typing import Annotated

import typer

from emcli.errors import UsageError

from .app import app, flagged, handled
from .options import (
    Covariance,
    CovarianceOpt,
    DebugOpt,
    MaxIterOpt,
    NInitOpt,
    PlotOpt,
    QuietOpt,
    SeedOpt,
    TolOpt,
)


class ColorSpace(str, Enum):
    rgb = "rgb"
    lab = "lab"


@app.command("segment")
def segment_command(
    image: Annotated[
        str,
        typer.Argument(metavar="IMAGE", help="A PNG, JPEG or TIFF image.", show_default=False),
    ],
    k: Annotated[
        str,
        typer.Option(
            "-k", "--k",
            help="Number of segments, or several (2:8, 2,4,6): the lowest BIC is kept.",
            show_default=False,
        ),
    ],
    out_dir: Annotated[
        str, typer.Option("-o", "--out-dir", help="Directory for the outputs (created if needed).")
    ] = ".",
    color_space: Annotated[
        ColorSpace,
        typer.Option("--color-space", case_sensitive=False,
                     help="Colour features: rgb (0-255) or lab (CIE L*a*b*, D65)."),
    ] = ColorSpace.rgb,
    spatial: Annotated[
        float,
        typer.Option("--spatial", min=0.0, metavar="W",
                     help="Add the pixel coordinates as features; the longest side spans 100·W "
                     "(0: colour only)."),
    ] = 0.0,
    covariance: CovarianceOpt = Covariance("full"),
    n_init: NInitOpt = 1,
    seed: SeedOpt = 0,
    tol: TolOpt = 1e-3,
    max_iter: MaxIterOpt = 200,
    max_pixels: Annotated[
        int | None,
        typer.Option("--max-pixels", min=1,
                     help="Read images up to this many pixels (default: Pillow's "
                     "decompression-bomb limit, 89,478,485).", show_default=False),
    ] = None,
    plot: PlotOpt = None,
    debug: DebugOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Segment an image by pixel colour with a Gaussian mixture (needs emcli[plot])."""
    with handled(debug):
        from emcli.plots import require_extra

        require_extra("emcli segment")
        run_segment(image, k, out_dir, color_space.value, spatial, covariance.value, n_init,
                    seed, tol, max_iter, max_pixels, plot, quiet)


def run_segment(
    image: str, k: str, out_dir: str, color_space: str, spatial: float, covariance: str,
    n_init: int, seed: int, tol: float, max_iter: int, max_pixels: int | None,
    plot: str | None, quiet: bool,
) -> None:
    from threadpoolctl import threadpool_limits

    from emcli import io
    from emcli.io.image import label_png, read_image, rgba_png
    from emcli.plots.figures import palette
    from emcli.plots.pictures import SWEEP_PICTURES, fit_pictures, picture_paths, sweep_picture
    from emcli.render import Reporter
    from emcli.segmentation import PixelFeatures, painted, segment
    from emcli.selection import parse_k
    from emcli.sources import ArraySource

    started = time.perf_counter()
    k_values = parse_k(k)
    features = PixelFeatures(color_space, spatial)
    stem = os.path.splitext(os.path.basename(image))[0] or "image"
    names = ["segmented.png", "labels.png", "model.json", "convergence.csv"]
    paths = [os.path.join(out_dir, f"{stem}.{name}") for name in names]
    pictures = picture_paths(plot, stem, SWEEP_PICTURES) if plot is not None else []
    if not os.path.isfile(image):
        raise UsageError(f"{image}: no such image file")
    io.check_output_paths([*paths, *pictures], [io.InputFile(image, "image")])
    reporter = Reporter(quiet)
    img = read_image(image, max_pixels)
    for notice in img.notices:
        reporter.notice(f"{image}: {notice}")
    H, W = img.shape
    with threadpool_limits(1, user_api="blas"):
        seg = segment(
            img.rgb, img.visible, k_values=k_values, features=features,
            covariance_type=covariance, seed=seed, n_init=n_init, tol=tol, max_iter=max_iter,
            n_threads=os.cpu_count() or 1,
        )
    result = seg.result
    params = result.params
    if seg.sweep is not None and seg.sweep.edge_warning:
        reporter.notice(f"{image}: {flagged(seg.sweep.edge_warning)}")
    extra = {
        "image": {
            "file": os.path.basename(image), "width": W, "height": H, "mode": img.mode,
            "color_space": color_space, "spatial": spatial, "pixels_visible": seg.n_visible,
            "pixels_fitted": int(seg.sample.shape[0]),
        },
    }
    if seg.sweep is not None:
        extra["selected_by"] = {"criterion": "bic", "k_values": list(seg.sweep.k_values),
                                "covariance_types": [covariance], "try_hc": False}
    model_bytes = io.dumps_model(io.model_document(result, features.columns, img.sha256, extra))
    more: list[tuple[str, bytes]] = []
    if plot is not None:
        more = fit_pictures(params, ArraySource(seg.sample), features.columns,
                            n_fit=seg.sample.shape[0], seed=seed, out_dir=plot, stem=stem,
                            name=os.path.basename(image), result=result)
        if seg.sweep is not None:
            more.append(sweep_picture(seg.sweep, out_dir=plot, stem=stem,
                                      name=os.path.basename(image)))
    segmented, labels_path, model_path, log_path = paths
    with io.AtomicOutputs() as out:
        out.add(segmented, rgba_png(painted(seg.labels, features.colours(params))))
        out.add(labels_path, label_png(seg.labels, palette(params.n_components)))
        out.add(model_path, model_bytes)
        out.add(log_path, io.render_table(io.convergence_columns(result), "csv"))
        for path, data in more:
            out.add(path, data)
        out.commit()
    reporter.fit_summary(
        result, source=f"{image} ({W}×{H}, {seg.n_visible:,} visible pixels, "
        f"{seg.sample.shape[0]:,} fitted)",
        columns=features.columns, written=[*paths, *(p for p, _ in more)],
        seconds=time.perf_counter() - started,
        counts=_counts(seg.labels, params.n_components),
    )


def _counts(labels, K: int):
    import numpy as np

    return np.bincount(labels[labels >= 0].ravel(), minlength=K)
