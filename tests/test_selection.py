"""The k × covariance sweep: parsing, choice of k, criteria, jobs, failed cells, warnings."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from threadpoolctl import threadpool_limits

from emcli.errors import FitError, UsageError
from emcli.fitting import fit_mixture
from emcli.model import GMMParams
from emcli.scoring import sample_mixture
from emcli.selection import SWEEP_TOL, parse_covariances, parse_k, sweep

REFERENCE = json.loads(
    (Path(__file__).parent / "reference" / "mclust_bic.json").read_text())

FAITHFUL = Path(__file__).resolve().parents[1] / "sample_data" / "faithful.csv"


@pytest.fixture(autouse=True)
def _one_blas_thread():
    # tiny LAPACK calls slow down badly when BLAS threads compete for few cores
    with threadpool_limits(1):
        yield


def separated(seed: int = 0, n: int = 450) -> tuple[np.ndarray, np.ndarray]:
    means = np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 1.0], [0.0, 6.0, -1.0]])
    covs = np.stack([np.eye(3), np.diag([2.0, 0.5, 1.0]), 0.7 * np.eye(3)])
    params = GMMParams("full", np.array([0.4, 0.35, 0.25]), means, covs)
    return sample_mixture(params, n, np.random.default_rng(seed))


def elongated_overlapping(seed: int = 0, n: int = 600) -> tuple[np.ndarray, np.ndarray]:
    """Three long thin clusters that cross each other (they overlap at the centre)."""
    covs = []
    for th in (0.0, 1.0, 2.1):
        R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        covs.append(R @ np.diag([9.0, 0.15]) @ R.T)
    means = np.array([[0.0, 0.0], [1.0, 1.5], [-1.0, 1.0]])
    params = GMMParams("full", np.ones(3) / 3, means, np.stack(covs))
    return sample_mixture(params, n, np.random.default_rng(seed))


# -------------------------------------------------------------------- parsing


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("1:9", list(range(1, 10))),
        ("2,4,8", [2, 4, 8]),
        (" 3 ", [3]),
        ("1:7:3", [1, 4, 7]),
        ("8,2,2:3", [2, 3, 8]),
    ],
)
def test_parse_k(spec, expected):
    assert parse_k(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "empty"),
        ("a", "cannot read"),
        ("9:1", "empty"),
        ("0:3", "at least 1"),
        ("1:4:0", "step"),
        ("1:2:3:4", "cannot read"),
        ("2,,3", "cannot read"),
    ],
)
def test_parse_k_errors(spec, message):
    with pytest.raises(UsageError, match=message):
        parse_k(spec)


def test_parse_covariances():
    assert parse_covariances("full,diag") == ["full", "diag"]
    assert parse_covariances("all") == [
        "EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE",
        "VEE", "EVE", "VVE", "EEV", "VEV", "EVV", "VVV",
    ]
    assert parse_covariances(" Diag , full,diag") == ["diag", "full"]
    # one model under two spellings is fitted once, under the first
    assert parse_covariances("EII,vvv,full,VEV") == ["EII", "VVV", "VEV"]
    with pytest.raises(UsageError, match="unknown covariance model 'fool'"):
        parse_covariances("full,fool")


def test_sweep_argument_errors():
    X, _ = separated()
    with pytest.raises(UsageError, match="criterion"):
        sweep(X, k_values=[1], covariance_types=["full"], criterion="mdl")
    with pytest.raises(UsageError, match="covariance"):
        sweep(X, k_values=[1], covariance_types=["round"])
    with pytest.raises(UsageError, match="no k"):
        sweep(X, k_values=[], covariance_types=["full"])


# -------------------------------------------------------------- choosing k


def test_well_separated_selects_true_k_and_warns_at_the_edge():
    X, _ = separated()
    seen = []
    res = sweep(X, k_values=range(1, 6), covariance_types=["full", "diag"], on_cell=seen.append)
    assert len(res.cells) == 10 and len(seen) == 10
    assert [(c.k, c.covariance_type) for c in res.cells] == [
        (k, t) for k in range(1, 6) for t in ("full", "diag")
    ]
    assert res.best.k == 3
    assert res.criterion == "bic" and res.k_values == (1, 2, 3, 4, 5)
    assert res.edge_warning == ""
    bics = [c.result.bic for c in res.cells]
    assert res.best.result.bic == min(bics)
    # the same data swept only up to the true k: the best is at the edge
    edge = sweep(X, k_values=[1, 2, 3], covariance_types=["full"])
    assert edge.best.k == 3
    assert edge.edge_warning == "the best k (3) is the largest tried; extend k_values"


def test_edge_warning_at_the_smallest_k():
    X = np.random.default_rng(1).normal(size=(300, 2))
    res = sweep(X, k_values=[2, 3, 4], covariance_types=["full"])
    assert res.best.k == 2
    assert "smallest tried" in res.edge_warning


def test_well_separated_with_missing_values_selects_true_k():
    X, _ = separated(seed=1)
    rng = np.random.default_rng(2)
    holes = rng.random(X.shape) < 0.15
    holes[holes.all(axis=1), 0] = False
    X[holes] = np.nan
    res = sweep(X, k_values=range(1, 6), covariance_types=["full"])
    assert res.best.k == 3


def test_elongated_overlapping_selects_true_k():
    X, _ = elongated_overlapping()
    res = sweep(X, k_values=range(1, 7), covariance_types=["full"])
    assert res.best.k == 3
    # stopped at scikit-learn's tolerance, k-means starts alone (even 5 of them) miss the
    # crossing clusters (BIC at k=3: 5225.0 from k-means, 4602.1 with hc) ...
    from emcli.selection import fit_cell

    km = fit_cell(X, None, 3, "full", try_hc=False, n_init=5, tol=1e-3)
    assert res.cells[2].result.bic < km.result.bic - 100
    # ... which a sweep without hc recovers from its neighbours at k = 2 and 4
    # (docs/criteria.md §4: measured 4602.2)
    no_hc = sweep(
        X, k_values=range(1, 7), covariance_types=["full"], try_hc=False, n_init=5, tol=1e-3
    )
    assert no_hc.best.k == 3 and no_hc.cells[2].result.bic < km.result.bic - 100


def test_faithful_bic_picks_two_and_matches_sklearn():
    from sklearn.exceptions import ConvergenceWarning  # noqa: TID251
    from sklearn.mixture import GaussianMixture  # noqa: TID251

    X = np.genfromtxt(FAITHFUL, delimiter=",", skip_header=1)
    assert X.shape == (272, 2)
    # five restarts each, otherwise both at their defaults (the sweep's tol is 1e-5)
    res = sweep(X, k_values=range(1, 10), covariance_types=["full"], n_init=5)
    assert res.best.k == 2
    for cell in res.cells:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            sk = GaussianMixture(
                cell.k, n_init=5, covariance_type="full", random_state=0, reg_covar=1e-6
            ).fit(X)
        # measured (ours - sklearn): 0.0, -0.0, -1.1, -1.4, -2.7, -3.4, -16.8, -10.5, -21.6
        assert cell.result.bic <= sk.bic(X) + 0.1, cell.k


# ------------------------------------------------------- criteria, independently


def _criteria_by_scipy(X: np.ndarray, params: GMMParams) -> tuple[float, np.ndarray]:
    covs = params.full_covariances()
    logp = np.empty((X.shape[0], params.n_components))
    for i, row in enumerate(X):
        o = ~np.isnan(row)
        for k in range(params.n_components):
            logp[i, k] = np.log(params.weights[k]) + multivariate_normal(
                params.means[k, o], covs[k][np.ix_(o, o)]
            ).logpdf(row[o])
    lse = logsumexp(logp, axis=1)
    return float(lse.sum()), np.exp(logp - lse[:, None])


def _n_params(t: str, K: int, d: int) -> int:
    return {
        "full": (K - 1) + K * d + K * d * (d + 1) // 2,
        "diag": (K - 1) + 2 * K * d,
        "spherical": (K - 1) + K * d + K,
        "tied": (K - 1) + K * d + d * (d + 1) // 2,
    }[t]


def test_criteria_recomputed_with_scipy_match_the_table():
    X, _ = separated(seed=3, n=200)
    X[::9, 1] = np.nan
    X[::13, 2] = np.nan
    n, d = X.shape
    res = sweep(X, k_values=[1, 2, 3], covariance_types=["full", "diag", "spherical", "tied"])
    for cell in res.cells:
        fit = cell.result
        ll, resp = _criteria_by_scipy(X, fit.params)
        p = _n_params(cell.covariance_type, cell.k, d)
        bic = -2 * ll + p * np.log(n)
        aic = -2 * ll + 2 * p
        icl = bic - 2 * np.log(resp.max(axis=1)).sum()
        assert fit.n_params == p
        np.testing.assert_allclose(fit.log_likelihood, ll, rtol=1e-9)
        np.testing.assert_allclose([fit.bic, fit.aic, fit.icl], [bic, aic, icl], rtol=1e-9)


# ------------------------------------------------------------------ the machinery


def _table(res):
    return [
        (c.k, c.covariance_type, c.error, None if c.result is None else
         (c.result.log_likelihood, c.result.bic, c.result.icl, c.result.n_iter,
          c.result.settings["init"]))
        for c in res.cells
    ]


def test_jobs_two_gives_the_same_table_as_jobs_one():
    X, _ = separated(seed=4, n=300)
    X[::11, 0] = np.nan
    kw = {"k_values": range(1, 5), "covariance_types": ["full", "diag"], "n_init": 2, "seed": 7}
    one = sweep(X, jobs=1, **kw)
    seen = []
    two = sweep(X, jobs=2, on_cell=seen.append, **kw)
    assert len(seen) == len(two.cells)
    assert _table(one) == _table(two)
    assert one.best_index == two.best_index
    for a, b in zip(one.cells, two.cells, strict=True):
        np.testing.assert_array_equal(a.result.resp, b.result.resp)


def test_cells_do_not_depend_on_what_else_is_swept():
    X, _ = separated(seed=5, n=250)
    res = sweep(X, k_values=[2, 3], covariance_types=["diag", "full"], seed=3, try_hc=False)
    alone = fit_mixture(X, n_components=3, covariance_type="full", seed=3)
    cell = next(c for c in res.cells if c.k == 3 and c.covariance_type == "full")
    assert cell.result.log_likelihood == alone.log_likelihood
    np.testing.assert_array_equal(cell.result.resp, alone.resp)


def test_hc_is_tried_and_kept_when_better():
    from emcli.hc import MAX_ROWS

    X, _ = elongated_overlapping(seed=2)
    assert len(X) < MAX_ROWS
    km = sweep(X, k_values=[3], covariance_types=["full"], try_hc=False)
    both = sweep(X, k_values=[3], covariance_types=["full"], try_hc=True)
    hc = fit_mixture(X, n_components=3, init="hc", seed=0, tol=SWEEP_TOL)
    assert hc.log_likelihood > km.best.result.log_likelihood + 100  # measured -2294 vs -2597
    assert both.best.result.log_likelihood == hc.log_likelihood
    assert both.best.result.settings["init"] == "hc"


def test_failed_cells_are_reported_and_never_win():
    X = np.array([[0.0, 0.1], [0.2, 0.0], [5.0, 5.1], [5.2, 5.0], [np.nan, 2.0], [np.nan, np.nan]])
    res = sweep(X, k_values=range(1, 8), covariance_types=["diag"])
    assert len(res.cells) == 7
    failed = {c.k: c for c in res.cells if not c.ok}
    # 5 usable rows: k = 6, 7 are refused up front; k = 3..5 collapse beyond recovery
    assert {6, 7} <= failed.keys()
    assert all("usable rows" in failed[k].error for k in (6, 7))
    assert all(c.error and c.result is None for c in failed.values())
    assert res.best.ok and res.best.k not in failed
    assert res.best.result.bic == min(c.result.bic for c in res.cells if c.ok)
    with pytest.raises(FitError, match="every cell"):
        sweep(X, k_values=[6, 7], covariance_types=["diag"])


def test_same_seed_same_sweep():
    X, _ = elongated_overlapping(seed=3, n=300)
    kw = {"k_values": [2, 3], "covariance_types": ["full"], "seed": 11, "n_init": 2}
    assert _table(sweep(X, **kw)) == _table(sweep(X, **kw))


def test_standardize_and_weights_pass_through():
    X, _ = separated(seed=6, n=200)
    X[:, 0] *= 1000.0
    w = np.random.default_rng(0).integers(1, 3, size=len(X)).astype(float)
    res = sweep(X, k_values=[2, 3, 4], covariance_types=["full"], sample_weight=w,
                standardize=True)
    assert res.best.k == 3
    assert res.best.result.settings["standardize"] is True
    np.testing.assert_allclose(res.best.result.n, w.sum())


def test_a_fit_with_a_component_on_one_row_is_a_failed_cell():
    """Six rows: every k > 1 leaves a component on one or two rows, which must not win."""
    X = np.array([[1, 2], [3, 4], [5, 7], [2, 2], [9, 1], [3, 3]], dtype=float)
    res = sweep(X, k_values=[1, 2, 3, 4], covariance_types=["full"])
    by_k = {c.k: c for c in res.cells}
    assert by_k[1].ok and res.best.k == 1
    for k in (3, 4):
        assert not by_k[k].ok
        assert "degenerate" in by_k[k].error


def test_one_row_components_count_only_where_a_component_has_its_own_volume():
    """docs/criteria.md §5: with a shared volume (EII, EEI, EVI, EEE, EVE, EEV, EVV) the
    likelihood stays bounded when a component shrinks onto one row, so mclust reports a
    BIC for such fits and so does the sweep; with its own volume (VII, VVV, ...) the
    fit rests on regularisation and is rejected."""
    from emcli.diagnostics import degenerate_component

    means = np.array([[0.0, 0.0], [5.0, 5.0]])
    one_row = np.array([0.99, 0.01])  # of 100 rows: one row's weight
    for name, cov in [("EII", np.ones(2)), ("EEI", np.ones((2, 2))),
                      ("EVV", np.stack([np.eye(2)] * 2)), ("VII", np.ones(2)),
                      ("VVV", np.stack([np.eye(2)] * 2)), ("VEV", np.stack([np.eye(2)] * 2))]:
        reason = degenerate_component(GMMParams(name, one_row, means, cov), 100.0, 100)
        assert bool(reason) == name.startswith("V"), name
    empty = np.array([1.0 - 1e-12, 1e-12])
    assert "holds" in degenerate_component(GMMParams("EII", empty, means, np.ones(2)), 100.0, 100)

    # diabetes, EII at k = 8: the best fit gives one outlying row a component of its
    # own; mclust reports that cell (5153.69) and the sweep now fits it, no worse
    ref = REFERENCE["diabetes"]
    X = np.loadtxt(Path(__file__).parent / "reference" / "data" / "diabetes.csv",
                   delimiter=",", skiprows=1)
    res = sweep(X, k_values=[8], covariance_types=["EII", "VEE"])
    eii = res.cells[0]
    assert eii.ok, eii.error
    assert min(eii.result.params.weights) * len(X) < 2.0
    mclust = next(c["bic"] for c in ref["cells"] if c["k"] == 8 and c["model"] == "EII")
    assert eii.result.bic <= mclust + 0.1


@pytest.mark.parametrize(("name", "k", "model"), [
    ("thyroid", 3, "VII"), ("thyroid", 2, "VVI"), ("wdbc", 4, "VVV"), ("wdbc", 8, "VVI")])
def test_cells_from_mclusts_hc_start_reach_mclusts_bic(name, k, model):
    """Cells where emcli's earlier start (a Ward-based tree, raced) ended 50-360 BIC
    units above mclust: mclust's hc start, fitted to convergence, wins the cell and
    reaches mclust's BIC (tests/reference/mclust_bic.json) to 0.1."""
    from emcli.selection import fit_cell

    X = np.loadtxt(Path(__file__).parent / "reference" / "data" / f"{name}.csv",
                   delimiter=",", skiprows=1)
    cell = fit_cell(X, None, k, model, tol=SWEEP_TOL)
    mclust = next(c["bic"] for c in REFERENCE[name]["cells"]
                  if c["k"] == k and c["model"] == model)
    assert cell.ok and cell.result.settings["init"] == "hc"
    assert cell.result.bic <= mclust + 0.1


def test_third_round_starts_from_the_neighbouring_k():
    """docs/criteria.md §4: faithful's VII at k = 4 from its own starts ends at BIC
    3242.8; started from the k = 3 fit with a fourth component on the worst-explained
    row it reaches scikit-learn's best of five restarts (3222.9)."""
    from sklearn.mixture import GaussianMixture  # noqa: TID251

    from emcli.selection import fit_cell

    X = np.genfromtxt(FAITHFUL, delimiter=",", skip_header=1)
    alone = fit_cell(X, None, 4, "VII", tol=SWEEP_TOL)
    res = sweep(X, k_values=[3, 4], covariance_types=["VII"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sk = GaussianMixture(4, covariance_type="spherical", n_init=5, tol=1e-6,
                             max_iter=1000, random_state=0).fit(X)
    sk_bic = -2.0 * sk.score(X) * len(X) + res.cells[1].result.n_params * np.log(len(X))
    assert res.cells[1].result.bic <= sk_bic + 0.1
    assert alone.result.bic > sk_bic + 10.0
    # the same table whatever the number of jobs
    assert _table(sweep(X, k_values=[3, 4], covariance_types=["VII"], jobs=2)) == _table(res)


def test_second_round_from_the_best_model_at_each_k_only_helps_and_ignores_jobs():
    """Each cell also starts from the highest-likelihood fit at its k (docs/criteria.md §4)."""
    from emcli.selection import fit_cell

    X = np.loadtxt(Path(__file__).parent / "reference" / "data" / "iris.csv",
                   delimiter=",", skiprows=1)
    models = ["VEE", "EVI", "full"]
    one = sweep(X, k_values=[1, 4], covariance_types=models, jobs=1)
    two = sweep(X, k_values=[1, 4], covariance_types=models, jobs=2)
    assert [c.result.bic for c in one.cells if c.ok] == [c.result.bic for c in two.cells if c.ok]
    assert one.best_index == two.best_index
    better = 0
    for cell in one.cells:
        alone = fit_cell(X, None, cell.k, cell.covariance_type, tol=SWEEP_TOL, max_iter=200)
        if alone.result is None:
            continue
        assert cell.result is not None
        assert cell.result.log_likelihood >= alone.result.log_likelihood
        better += cell.result.log_likelihood > alone.result.log_likelihood + 1e-6
    assert better >= 1  # the round finds a better optimum somewhere on this data


def test_a_raced_start_goes_on_only_when_it_leads_and_then_as_if_never_stopped():
    """The hc start races the k-means restart for a few iterations (docs/loop.md §6)."""
    X, _ = elongated_overlapping(seed=1)  # hc leads from the first iteration on
    race = 4
    hc = fit_mixture(X, n_components=3, init="hc", tol=SWEEP_TOL)
    km = fit_mixture(X, n_components=3, init="kmeans", tol=SWEEP_TOL)
    both = fit_mixture(X, n_components=3, init="kmeans", extra_inits=("hc",), race_iter=race,
                       tol=SWEEP_TOL)
    runs = {r: [h for h in both.history if h.restart == r] for r in (0, 1)}
    lls = lambda hist: [h.log_likelihood for h in hist]  # noqa: E731
    assert lls(runs[0]) == lls(km.history)  # the k-means restart runs as on its own
    # hc leads after `race` iterations, goes on, and ends exactly where it ends alone
    assert runs[1][race].log_likelihood >= runs[0][race].log_likelihood
    assert lls(runs[1]) == lls(hc.history)
    assert both.log_likelihood == hc.log_likelihood and both.settings["init"] == "hc"
    # a floor above what the race reaches stops every start at `race` iterations
    floor = fit_mixture(X, n_components=3, init="kmeans", extra_inits=("hc",), race_iter=race,
                        tol=SWEEP_TOL, race_floor=hc.log_likelihood + 1.0)
    assert [h.iteration for h in floor.history] == [*range(race + 1)] * 2
    assert floor.log_likelihood == runs[1][race].log_likelihood
