"""emcli segment on generated images (known regions), Pillow's modes, the colour maths,
and k-means against EM."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import one_error_line, run_emcli
from helpers import blobs
from PIL import Image
from sklearn.metrics import adjusted_rand_score

from emcli.compare import adjusted_rand_index
from emcli.estimator import GaussianMixture
from emcli.io.image import read_image
from emcli.segmentation import fitted_pixels, lab_to_srgb, srgb_to_lab

COLOURS = np.array([(200, 30, 30), (30, 180, 40), (20, 40, 200)])


def regions_image(path: Path, H: int = 60, W: int = 90, seed: int = 0) -> np.ndarray:
    """Three vertical bands of noisy colour; the top-left 10×10 corner transparent."""
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(W) * 3 // W, 1)[None, :].repeat(H, axis=0)
    rgba = np.zeros((H, W, 4), np.uint8)
    rgba[..., :3] = np.clip(COLOURS[truth] + rng.normal(0, 8, (H, W, 3)), 0, 255)
    rgba[..., 3] = 255
    rgba[:10, :10, 3] = 0
    Image.fromarray(rgba, "RGBA").save(path)
    return truth


def read(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


@pytest.mark.parametrize("space", ["rgb", "lab"])
def test_segment_recovers_known_regions_and_keeps_transparent_pixels(
    tmp_path: Path, space: str
) -> None:
    truth = regions_image(tmp_path / "bands.png")
    r = run_emcli(["segment", tmp_path / "bands.png", "-k", "3", "-o", tmp_path / "out",
                   "--color-space", space, "-q"], tmp_path)
    assert r.returncode == 0, r.stderr
    labels = read(tmp_path / "out" / "bands.labels.png")
    seg = read(tmp_path / "out" / "bands.segmented.png")
    assert labels.shape == truth.shape and seg.shape == (*truth.shape, 4)
    hidden = np.zeros(truth.shape, bool)
    hidden[:10, :10] = True
    assert (labels[hidden] == 255).all() and (seg[hidden][:, 3] == 0).all()
    assert (seg[~hidden][:, 3] == 255).all()
    assert adjusted_rand_score(truth[~hidden], labels[~hidden]) == 1.0
    for k in range(3):  # each region painted with (about) its true colour
        painted = seg[~hidden & (truth == k)][:, :3].astype(int)
        assert np.abs(painted - COLOURS[k]).max() <= 3
    model = json.loads((tmp_path / "out" / "bands.model.json").read_text())
    assert model["columns"] == (["red", "green", "blue"] if space == "rgb" else ["L", "a", "b"])
    assert model["fit"]["image"]["pixels_visible"] == 60 * 90 - 100
    assert (tmp_path / "out" / "bands.convergence.csv").read_text().startswith("init,iter")


def test_segment_k_range_picks_three_by_bic_and_spatial_adds_coordinates(tmp_path: Path) -> None:
    regions_image(tmp_path / "bands.png")
    r = run_emcli(["segment", tmp_path / "bands.png", "--k", "2:5", "-o", tmp_path,
                   "--plot", tmp_path / "pics", "-q"], tmp_path)
    assert r.returncode == 0, r.stderr
    model = json.loads((tmp_path / "bands.model.json").read_text())
    assert model["n_components"] == 3 and model["fit"]["selected_by"]["k_values"] == [2, 3, 4, 5]
    assert (tmp_path / "pics" / "bands.criterion.png").exists()
    r = run_emcli(["segment", tmp_path / "bands.png", "-k", "3", "--spatial", "0.5",
                   "-o", tmp_path, "-q"], tmp_path)
    assert r.returncode == 0, r.stderr
    model = json.loads((tmp_path / "bands.model.json").read_text())
    assert model["columns"] == ["red", "green", "blue", "x", "y"]
    # coordinates: the longest side (90 px) spans 100 × 0.5
    xs = np.array(model["means"])[:, 3]
    assert sorted(np.round(xs / 50 * 89 / 15) * 15) == [15, 45, 75]


def test_segment_is_deterministic(tmp_path: Path) -> None:
    regions_image(tmp_path / "bands.png", H=120, W=150)
    outs = []
    for name in ("a", "b"):
        r = run_emcli(["segment", tmp_path / "bands.png", "-k", "3", "-o", tmp_path / name, "-q",
                       "--seed", "3"], tmp_path)
        assert r.returncode == 0, r.stderr
        outs.append({p.name: p.read_bytes() for p in (tmp_path / name).iterdir()
                     if p.suffix != ".csv"})  # the log's seconds are the clock's
    assert len(outs[0]) == 3 and outs[0] == outs[1]


def test_fitted_pixels_are_a_seeded_sample_of_visible_ones() -> None:
    visible = np.random.default_rng(0).random((300, 400)) > 0.3
    picked = fitted_pixels(visible, seed=1, limit=5000)
    assert picked.size == 5000 and (np.diff(picked) > 0).all()
    assert visible.reshape(-1)[picked].all()
    assert np.array_equal(picked, fitted_pixels(visible, seed=1, limit=5000))
    assert not np.array_equal(picked, fitted_pixels(visible, seed=2, limit=5000))
    assert fitted_pixels(visible, seed=1, limit=10**6).size == visible.sum()


def test_decompression_bomb_limit_is_one_line_and_max_pixels_lifts_it(tmp_path: Path) -> None:
    regions_image(tmp_path / "bands.png")
    r = run_emcli(["segment", tmp_path / "bands.png", "-k", "2", "--max-pixels", "1000",
                   "-o", tmp_path / "out"], tmp_path)
    assert r.returncode == 1
    line = one_error_line(r.stderr)
    assert "5,400 pixels" in line and "--max-pixels 5400" in line
    assert not (tmp_path / "out").exists()
    r = run_emcli(["segment", tmp_path / "bands.png", "-k", "2", "--max-pixels", "5400",
                   "-o", tmp_path / "out", "-q"], tmp_path)
    assert r.returncode == 0, r.stderr


def test_not_an_image_or_nothing_visible_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_text("not a png")
    r = run_emcli(["segment", tmp_path / "x.png", "-k", "2"], tmp_path)
    assert r.returncode == 1 and "not an image" in one_error_line(r.stderr)
    Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(tmp_path / "clear.png")
    r = run_emcli(["segment", tmp_path / "clear.png", "-k", "2", "-o", tmp_path / "o"], tmp_path)
    assert r.returncode == 1 and "0 visible pixels" in one_error_line(r.stderr)
    assert not (tmp_path / "o").exists()
    r = run_emcli(["segment", tmp_path / "nope.png", "-k", "2"], tmp_path)
    assert r.returncode == 2 and "no such image" in one_error_line(r.stderr)


def test_image_modes_are_converted(tmp_path: Path) -> None:
    grey16 = (np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000)
    Image.fromarray(grey16).save(tmp_path / "g16.png")
    img = read_image(str(tmp_path / "g16.png"))
    np.testing.assert_allclose(img.rgb[..., 0], grey16 / 65535, atol=1e-6)
    assert img.visible.all() and any("converted" in n for n in img.notices)

    pal = Image.new("P", (5, 4))
    pal.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    pal.putpixel((1, 1), 1)
    pal.save(tmp_path / "pal.png", transparency=1)
    img = read_image(str(tmp_path / "pal.png"))
    assert tuple(img.rgb[0, 0]) == (1.0, 0.0, 0.0) and not img.visible[1, 1]
    assert img.visible.sum() == 19

    Image.new("CMYK", (6, 3), (0, 255, 255, 0)).save(tmp_path / "c.jpg")  # red in CMYK
    img = read_image(str(tmp_path / "c.jpg"))
    assert img.rgb.shape == (3, 6, 3) and img.rgb[..., 0].min() > 0.9

    frames = [Image.new("RGB", (4, 4), c) for c in ("red", "blue")]
    frames[0].save(tmp_path / "two.tif", save_all=True, append_images=frames[1:])
    img = read_image(str(tmp_path / "two.tif"))
    assert any("2 frames" in n for n in img.notices) and img.rgb[0, 0, 0] == 1.0

    tall = Image.new("RGB", (4, 2), "white")
    exif = tall.getexif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    tall.save(tmp_path / "o.jpg", exif=exif)
    assert read_image(str(tmp_path / "o.jpg")).shape == (4, 2)


def test_lab_known_values_and_round_trip() -> None:
    lab = srgb_to_lab(np.array([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))
    # CIE L*a*b* (D65) of sRGB white, red and black, as published
    np.testing.assert_allclose(lab[0], [100.0, 0.0, 0.0], atol=0.01)
    np.testing.assert_allclose(lab[1], [53.24, 80.09, 67.20], atol=0.02)
    np.testing.assert_allclose(lab[2], [0.0, 0.0, 0.0], atol=1e-9)
    rgb = np.random.default_rng(0).random((1000, 3))
    np.testing.assert_allclose(lab_to_srgb(srgb_to_lab(rgb)), rgb, atol=1e-6)


def test_adjusted_rand_index_matches_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    for _ in range(5):
        a, b = rng.integers(0, 4, 300), rng.integers(0, 3, 300)
        b[:150] = a[:150] % 3
        table = np.zeros((4, 3))
        np.add.at(table, (a, b), 1)
        assert adjusted_rand_index(table) == pytest.approx(adjusted_rand_score(a, b), abs=1e-12)


def test_compare_kmeans_in_the_python_api() -> None:
    X, y = blobs(600, 3, 3, seed=2, sep=8.0)
    gm = GaussianMixture(3, random_state=0, compare_kmeans=True).fit(X)
    c = gm.kmeans_comparison_
    # EM starts from k-means' one M-step and never lowers the likelihood (to rounding:
    # on blobs this far apart EM's first step barely moves, by rounding either way)
    km = c["kmeans_log_likelihood"]
    assert c["em_log_likelihood"] >= km - 1e-12 * abs(km)
    assert c["rows_compared"] == 600 and c["adjusted_rand_index"] > 0.9
    # overlapping clusters: hard and soft disagree on some rows, and those are uncertain ones
    X, _ = blobs(2000, 2, 3, seed=5, sep=1.5)
    c = GaussianMixture(3, random_state=0, compare_kmeans=True, n_init=1).fit(X).kmeans_comparison_
    assert c["rows_changed"] > 0
    resp = GaussianMixture(3, random_state=0).fit(X).predict_proba(X)
    assert c["changed_mean_uncertainty"] > float(np.mean(1 - resp.max(axis=1)))


def test_pillow_decompression_warning_never_escapes(tmp_path: Path, monkeypatch) -> None:
    """Pillow's own limit below the image would warn (an error under pytest); emcli's check
    replaces it."""
    import PIL.Image

    from emcli.errors import DataError

    regions_image(tmp_path / "bands.png")
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)
    assert read_image(str(tmp_path / "bands.png"), max_pixels=10**6).shape == (60, 90)
    with pytest.raises(DataError, match="--max-pixels 5400"):
        read_image(str(tmp_path / "bands.png"), max_pixels=5000)
    assert PIL.Image.MAX_IMAGE_PIXELS == 1000  # put back as it was
