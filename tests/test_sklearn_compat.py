"""scikit-learn compatibility of ``emcli.GaussianMixture`` (issue 14), against the
scikit-learn that the test extras install."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from sklearn.base import clone, is_clusterer, is_outlier_detector
from sklearn.exceptions import ConvergenceWarning as SkConvergenceWarning
from sklearn.exceptions import NotFittedError as SkNotFittedError
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import check_estimator
from sklearn.utils.validation import check_is_fitted

import emcli
from emcli import GaussianMixture

ROOT = Path(__file__).resolve().parents[1]
IRIS = np.genfromtxt(ROOT / "sample_data" / "iris.csv", delimiter=",", skip_header=1)[:, :4]


# emcli does not import scikit-learn, so it cannot inherit BaseEstimator: it implements
# the protocol instead, and check_estimator says so in a UserWarning.
@pytest.mark.filterwarnings("ignore:Estimator GaussianMixture does not inherit:UserWarning")
# the array API check needs SCIPY_ARRAY_API; scikit-learn skips it for its own mixture too
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.SkipTestWarning")
# the sample-weight checks give one toy row half the weight: a spike by definition
@pytest.mark.filterwarnings("ignore::emcli.errors.FitWarning")
def test_check_estimator_passes():
    results = check_estimator(GaussianMixture(), on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results
              if r["status"] == "failed"]
    assert failed == []
    assert sum(r["status"] == "passed" for r in results) >= 45


def test_pipeline_predicts_and_scores():
    pipe = make_pipeline(StandardScaler(), GaussianMixture(3, random_state=0)).fit(IRIS)
    labels = pipe.predict(IRIS)
    assert labels.shape == (150,) and set(labels) == {0, 1, 2}
    proba = pipe.predict_proba(IRIS)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    ld = pipe.score_samples(IRIS)
    assert pipe.score(IRIS) == pytest.approx(ld.mean())


def test_grid_search_and_clone():
    folds = KFold(3, shuffle=True, random_state=0)  # the file is sorted by species
    search = GridSearchCV(GaussianMixture(random_state=0), {"n_components": [1, 2, 3]}, cv=folds)
    search.fit(IRIS)
    assert search.best_params_["n_components"] in (2, 3)
    gm = GaussianMixture(4, covariance_type="diag", tol=1e-4, random_state=3)
    twin = clone(gm)
    assert twin is not gm and twin.get_params() == gm.get_params()


def test_is_not_a_clusterer_like_scikit_learns_mixture():
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    assert is_clusterer(GaussianMixture()) is False
    assert is_clusterer(SkGaussianMixture()) is False
    assert is_outlier_detector(GaussianMixture()) is False


@pytest.mark.parametrize("state", [np.random.RandomState(0), np.random.default_rng(0), 7])
def test_random_state_kinds(state):
    gm = GaussianMixture(3, random_state=state).fit(IRIS)
    assert gm.converged_
    with pytest.raises(ValueError, match="random_state"):
        GaussianMixture(2, random_state="zero").fit(IRIS)


def test_not_fitted_error_is_scikit_learns_and_emclis():
    gm = GaussianMixture(2)
    with pytest.raises(SkNotFittedError):
        gm.predict(IRIS)
    with pytest.raises(emcli.NotFittedError):
        gm.score_samples(IRIS)
    with pytest.raises(SkNotFittedError):
        check_is_fitted(gm)
    check_is_fitted(gm.fit(IRIS))


def test_feature_names_in():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame(IRIS, columns=["sl", "sw", "pl", "pw"])
    gm = GaussianMixture(2, random_state=0).fit(df)
    assert list(gm.feature_names_in_) == ["sl", "sw", "pl", "pw"]
    with pytest.raises(ValueError, match="Feature names must be in the same order"):
        gm.predict(df[["sw", "sl", "pl", "pw"]])
    with pytest.warns(UserWarning, match="fitted with feature names"):
        gm.predict(IRIS)
    assert not hasattr(GaussianMixture(2).fit(IRIS), "feature_names_in_")


def test_convergence_warning():
    for category in (SkConvergenceWarning, emcli.ConvergenceWarning):
        with pytest.warns(category, match="did not converge in 1 iterations"):
            GaussianMixture(3, max_iter=1, random_state=0).fit(IRIS)


def test_fit_warning_for_a_spike_component():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(size=(200, 2)), np.tile([[0.5, 0.5]], (50, 1))])
    with pytest.warns(emcli.FitWarning, match="spike: component 1"):
        GaussianMixture(2, random_state=0).fit(X)


@pytest.mark.filterwarnings("ignore::emcli.ConvergenceWarning")
def test_warm_start_continues_from_the_last_fit():
    """Two warm fits of 3 iterations reach what one fit of 6 reaches from the same start."""
    gm = GaussianMixture(3, max_iter=3, warm_start=True, random_state=0, tol=0.0)
    gm.fit(IRIS)
    first = gm.lower_bound_
    gm.fit(IRIS)
    assert gm.lower_bound_ > first
    assert gm.n_iter_ == 3 and gm.result_.n_restarts == 1
    six = GaussianMixture(3, max_iter=6, random_state=0, tol=0.0).fit(IRIS)
    assert gm.lower_bound_ == pytest.approx(six.lower_bound_, rel=1e-9)
    np.testing.assert_allclose(gm.means_, six.means_, rtol=1e-7)
    cold = GaussianMixture(3, max_iter=3, random_state=0, tol=0.0).fit(IRIS)
    cold.fit(IRIS)
    assert cold.lower_bound_ == pytest.approx(first, rel=1e-12)


def test_verbose_prints_restarts_and_iterations(capsys):
    GaussianMixture(2, verbose=2, verbose_interval=1, n_init=2, random_state=0).fit(IRIS)
    out = capsys.readouterr().out
    assert "Initialization 0" in out and "Initialization 1" in out
    assert "Iteration 1" in out and "ll change" in out
    GaussianMixture(2, random_state=0).fit(IRIS)
    assert capsys.readouterr().out == ""


def test_one_max_iter_default_for_python_and_the_command_line():
    from emcli.cli.options import FitOptions

    assert GaussianMixture().max_iter == FitOptions().max_iter == 200


def test_the_package_does_not_import_scikit_learn():
    code = (
        "import sys, numpy as np, warnings\n"
        "import emcli\n"
        "X = np.random.default_rng(0).normal(size=(200, 2))\n"
        "gm = emcli.GaussianMixture(2, random_state=0, max_iter=1)\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    warnings.simplefilter('always')\n"
        "    gm.fit(X)\n"
        "assert issubclass(w[0].category, emcli.ConvergenceWarning), w\n"
        "try:\n"
        "    emcli.GaussianMixture().predict(X)\n"
        "except emcli.NotFittedError:\n"
        "    pass\n"
        "assert not [m for m in sys.modules if m.startswith('sklearn')]\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        GaussianMixture(2, random_state=0).fit(IRIS)
