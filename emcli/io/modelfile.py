"""The model file: a fit as JSON (``model_document``, ``dumps_model``) and back.

``load_model`` checks everything a model file must hold and reports any
problem as one ``ModelFileError`` line.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from emcli import __version__
from emcli.covariance import get_model, model_name
from emcli.errors import ModelFileError
from emcli.model import FitResult, GMMParams, Scaling

MODEL_FORMAT = "emcli.gmm"
MODEL_FORMAT_VERSION = 2  # the newest this emcli writes; it reads every version up to it
MODEL_MAX_BYTES = 256 << 20
MODEL_FIELDS = frozenset(
    "format format_version emcli_version columns covariance_type n_components n_features "
    "weights means covariances standardization units fit".split()
)
# "units": "z-scores" (format_version 2): the parameters are those of the standardised
# columns, for the models that scaling does not preserve (docs/modelfile.md §1)
UNITS = ("data", "z-scores")
MODEL_MAX_FIT_VALUES = 10_000  # numbers, strings and containers in the "fit" block
# Means and standard deviations must square without overflow (as fitting.MAX_SPREAD).
MODEL_MAX_VALUE = 1e150


def _finite_or_none(x: float) -> float | None:
    x = float(x)
    return x if math.isfinite(x) else None


def model_document(
    result: FitResult,
    columns: Sequence[str],
    input_sha256: str,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The model file's content: parameters in original units and the fit's record.

    Nothing in it depends on the clock, so the same data and seed give the same bytes.
    """
    p = result.params
    s = result.settings
    fit = {
        "log_likelihood": _finite_or_none(result.log_likelihood),
        "mean_log_likelihood": _finite_or_none(result.mean_log_likelihood),
        "n_rows": int(result.n_rows),
        "n": float(result.n),
        "n_empty_rows": int(result.n_empty_rows),
        "n_params": int(result.n_params),
        "bic": _finite_or_none(result.bic),
        "aic": _finite_or_none(result.aic),
        "icl": _finite_or_none(result.icl),
        "converged": bool(result.converged),
        "n_iter": int(result.n_iter),
        "best_restart": int(result.best_restart),
        "covariance_type": s.get("covariance_type", p.covariance_type),
        "tol": s.get("tol"),
        "max_iter": s.get("max_iter"),
        "init": s.get("init"),
        "n_init": s.get("n_init"),
        "seed": s.get("seed"),
        "reg_covar": s.get("reg_covar"),
        "standardize": s.get("standardize", result.standardization is not None),
        "dtype": s.get("dtype", "float64"),
        "missing_fraction": float(result.missing_fraction),
        "input_sha256": input_sha256,
        "n_restarts": int(result.n_restarts),
        "failed_restarts": list(result.failed_restarts),
        "warnings": list(result.warnings),
    }
    if result.kmeans_comparison is not None:
        fit["kmeans_comparison"] = {
            k: v if not isinstance(v, float) else _finite_or_none(v)
            for k, v in result.kmeans_comparison.items()
        }
    if extra:
        fit.update(extra)
    doc = {
        "format": MODEL_FORMAT,
        # version 2 only where it is needed, so that older emcli keep reading the rest
        "format_version": 1 if p.scaling is None else 2,
        "emcli_version": __version__,
        "columns": list(columns),
        "covariance_type": p.covariance_type,
        "n_components": p.n_components,
        "n_features": p.n_features,
        "weights": np.asarray(p.weights, dtype=float).tolist(),
        "means": np.asarray(p.means, dtype=float).tolist(),
        "covariances": np.asarray(p.covariances, dtype=float).tolist(),
        "standardization": result.standardization,
        "fit": fit,
    }
    if p.scaling is not None:
        doc["units"] = "z-scores"
    return doc


def dumps_model(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2, allow_nan=False) + "\n").encode("utf-8")


@dataclass(frozen=True)
class LoadedModel:
    params: GMMParams
    columns: list[str]
    standardization: dict | None
    fit: dict
    document: dict


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-finite number {name}")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (json would keep the last one silently)."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"the key {key[:40]!r} appears twice in one object")
        out[key] = value
    return out


_NUMBER: tuple[type, ...] = (int, float)
# The fit block's known fields and their JSON types (docs/modelfile.md §1.1); None is
# allowed for every one (a statistic that was not finite, a setting not given).
FIT_FIELDS: dict[str, tuple[type, ...]] = {
    **dict.fromkeys(
        ("log_likelihood", "mean_log_likelihood", "n", "bic", "aic", "icl", "tol",
         "reg_covar", "missing_fraction"), _NUMBER),
    **dict.fromkeys(
        ("n_rows", "n_empty_rows", "n_params", "n_iter", "best_restart", "n_init", "seed",
         "max_iter", "n_restarts"), (int,)),
    **dict.fromkeys(("converged", "standardize"), (bool,)),
    **dict.fromkeys(
        ("covariance_type", "init", "dtype", "input_sha256", "id_column", "weights_column",
         "init_means_file"), (str,)),
    **dict.fromkeys(("warnings", "failed_restarts"), (list,)),
    "selected_by": (dict,),
}


def _check_fit_block(fit: dict, where: str) -> None:
    for key, types in FIT_FIELDS.items():
        value = fit.get(key)
        if value is None:
            continue
        wrong = not isinstance(value, types) or (isinstance(value, bool) and bool not in types)
        if not wrong and types == (list,):
            wrong = not all(isinstance(x, str) for x in value)
        if wrong:
            kinds: dict[tuple[type, ...], str] = {
                _NUMBER: "a number", (int,): "an integer", (bool,): "true or false",
                (str,): "a string", (list,): "a list of strings", (dict,): "an object",
            }
            kind = kinds[types]
            raise ModelFileError(
                f'{where}: "fit" field {key!r} must be {kind}, got {json.dumps(value)[:40]}; '
                "re-fit or restore the file"
            )


def _num_array(doc: dict, key: str, shape: tuple[int, ...], where: str) -> np.ndarray:
    v = doc.get(key)

    def well_formed(x: Any) -> bool:
        # walk level by level to the expected depth (no recursion: nesting cannot crash it)
        level = [x]
        for _ in shape:
            if not all(isinstance(y, list) for y in level):
                return False
            level = [z for y in level for z in y]
        return all(isinstance(y, (int, float)) and not isinstance(y, bool) for y in level)

    if not isinstance(v, list) or not well_formed(v):
        raise ModelFileError(
            f"{where}: {key!r} must be an array of numbers with {len(shape)} dimension"
            f"{'s' if len(shape) != 1 else ''}; re-fit or restore the file"
        )
    try:
        a = np.array(v, dtype=float)
    except (ValueError, OverflowError) as exc:
        raise ModelFileError(f"{where}: {key!r} is not a regular array of numbers") from exc
    if a.shape != shape:
        raise ModelFileError(f"{where}: {key!r} has shape {a.shape}, expected {shape}")
    if not np.all(np.isfinite(a)):
        raise ModelFileError(f"{where}: {key!r} holds a non-finite number")
    return a


def load_model(path: str) -> LoadedModel:
    """Read and validate a model file; any problem is one ``ModelFileError`` line."""
    where = path
    try:
        size = os.path.getsize(path)
        if size > MODEL_MAX_BYTES:
            raise ModelFileError(f"{where}: {size} bytes is too large for a model file")
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ModelFileError(f"{where}: cannot read the model file ({exc.strerror})") from exc
    try:
        doc = json.loads(
            raw.decode("utf-8"), parse_constant=_reject_constant, object_pairs_hook=_unique_keys
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        detail = str(exc).splitlines()[0][:120] if str(exc) else type(exc).__name__
        raise ModelFileError(f"{where}: not a valid emcli model file (bad JSON: {detail})") from exc
    if not isinstance(doc, dict) or doc.get("format") != MODEL_FORMAT:
        raise ModelFileError(f'{where}: not an emcli model file (no "format": "{MODEL_FORMAT}")')
    version = doc.get("format_version")
    if version not in range(1, MODEL_FORMAT_VERSION + 1) or isinstance(version, bool):
        raise ModelFileError(
            f"{where}: model format_version {version!r} is not supported "
            f"(this emcli reads versions 1 to {MODEL_FORMAT_VERSION}); re-fit with this version"
        )
    unknown = sorted(set(doc) - MODEL_FIELDS)
    if unknown:
        raise ModelFileError(
            f"{where}: unexpected field {unknown[0][:40]!r} in the model file; "
            "re-fit or restore the file"
        )
    cols = doc.get("columns")
    if (
        not isinstance(cols, list)
        or not cols
        or not all(isinstance(c, str) for c in cols)
        or len(set(cols)) != len(cols)
    ):
        raise ModelFileError(f'{where}: "columns" must be a non-empty list of distinct names')
    t = doc.get("covariance_type")
    if not isinstance(t, str) or model_name(t) != t:
        raise ModelFileError(f"{where}: unknown covariance_type {t!r}")
    weights = doc.get("weights")
    if not isinstance(weights, list) or not weights:
        raise ModelFileError(f'{where}: "weights" must be a non-empty array of numbers')
    K, d = len(weights), len(cols)
    w = _num_array(doc, "weights", (K,), where)
    if np.any(w < 0) or abs(float(w.sum()) - 1.0) > 1e-6:
        raise ModelFileError(f"{where}: weights must be non-negative and sum to 1")
    means = _num_array(doc, "means", (K, d), where)
    model = get_model(t)
    cov = _num_array(doc, "covariances", model.shape(K, d), where)
    problem = model.problem(cov)
    if problem:
        raise ModelFileError(f"{where}: {problem}")
    variances = np.diagonal(model.to_full(cov, K, d), axis1=1, axis2=2)
    if not (np.abs(means).max() < MODEL_MAX_VALUE and variances.max() < MODEL_MAX_VALUE**2):
        raise ModelFileError(
            f"{where}: means or standard deviations beyond {MODEL_MAX_VALUE:.0e} cannot be "
            "evaluated in double precision (their squares overflow); re-fit on rescaled data"
        )
    std = doc.get("standardization")
    if std is not None:
        if not isinstance(std, dict):
            raise ModelFileError(f'{where}: "standardization" must be null or an object')
        c = _num_array(std, "center", (d,), where)
        sc = _num_array(std, "scale", (d,), where)
        if not (np.abs(c).max() < MODEL_MAX_VALUE and sc.max() < MODEL_MAX_VALUE):
            raise ModelFileError(
                f"{where}: standardization values beyond {MODEL_MAX_VALUE:.0e}; re-fit"
            )
        if np.any(sc <= 0):
            raise ModelFileError(f"{where}: standardization scales must be positive")
    units = doc.get("units", "data")
    if units not in UNITS or (units == "z-scores" and (std is None or version == 1)):
        raise ModelFileError(
            f'{where}: "units" must be "data", or "z-scores" with a standardization in a '
            "format_version 2 file; re-fit or restore the file"
        )
    scaling = None
    if units == "z-scores":
        assert std is not None
        scaling = Scaling(
            _num_array(std, "center", (d,), where), _num_array(std, "scale", (d,), where)
        )
    for key, size in (("n_components", K), ("n_features", d)):
        given = doc.get(key, size)
        if isinstance(given, bool) or given != size:
            raise ModelFileError(
                f"{where}: {key} is {given!r} but the parameters have {size}; "
                "re-fit or restore the file"
            )
    fit = doc.get("fit", {})
    if not isinstance(fit, dict):
        raise ModelFileError(f'{where}: "fit" must be an object')
    todo: list[Any] = [fit]
    seen = 0
    while todo and seen <= MODEL_MAX_FIT_VALUES:
        x = todo.pop()
        seen += 1
        todo.extend(x.values() if isinstance(x, dict) else x if isinstance(x, list) else ())
    if seen > MODEL_MAX_FIT_VALUES:
        raise ModelFileError(
            f'{where}: the "fit" block holds more than {MODEL_MAX_FIT_VALUES} values; '
            "a model's fit record is small: re-fit or restore the file"
        )
    _check_fit_block(fit, where)
    return LoadedModel(GMMParams(t, w, means, cov, scaling), list(cols), std, fit, doc)
