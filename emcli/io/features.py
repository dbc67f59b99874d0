"""Feature columns: the table's columns a fit uses, or a model needs, as floats.

``select_features`` applies ``--columns``, ``--exclude`` and the id and weights
columns; ``model_features`` matches a model's columns by name for predict;
``read_means`` reads initial means from a file.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from emcli.errors import DataError, UsageError

from .modelfile import _reject_constant
from .readers import NA_TOKENS, InputTable


class Cells(Protocol):
    """Where cells come from, for messages: an ``InputTable`` or a ``TablePart``."""

    table: Any  # pyarrow.Table
    name: str

    def where(self, i: int) -> str: ...


@dataclass
class TablePart:
    """Some consecutive rows of one file (rows from ``first_row``, counted from 0)."""

    table: Any  # pyarrow.Table
    name: str  # the file, for messages
    first_row: int = 0

    def where(self, i: int) -> str:
        return f"row {self.first_row + i + 1}"


@dataclass(frozen=True)
class ColumnChoice:
    """The columns a fit reads, chosen from a schema: features, id, weights."""

    features: list[str]
    id_name: str | None
    weights_name: str | None
    notices: list[str] = field(default_factory=list)


@dataclass
class Features:
    """Feature matrix and the columns that travel beside it."""

    X: np.ndarray
    columns: list[str]
    ids: list[Any] | None
    id_name: str | None
    weights: np.ndarray | None
    notices: list[str] = field(default_factory=list)


def _parse_text_numbers(values: list[Any]) -> tuple[np.ndarray, int, list[int]]:
    """Floats of text cells (NA tokens → NaN): (array, cells not missing, bad row indices)."""
    out = np.full(len(values), np.nan)
    present = 0
    bad: list[int] = []
    for i, v in enumerate(values):
        if v is None or v in NA_TOKENS:
            continue
        present += 1
        s = v.strip()
        try:
            if "_" in s:
                raise ValueError(s)
            out[i] = float(s)
        except ValueError:
            bad.append(i)
    return out, present, bad


def _is_numeric_type(t: Any) -> bool:
    import pyarrow.types as pat

    return bool(pat.is_integer(t) or pat.is_floating(t) or pat.is_decimal(t))


def _reject_inf(data: Cells, name: str, v: np.ndarray) -> None:
    """One error naming the first infinite cell of column ``name``, if any."""
    inf = np.flatnonzero(np.isinf(v))
    if inf.size:
        i = int(inf[0])
        raise DataError(
            f"{data.name}: column {name!r}, {data.where(i)}: value {float(v[i])!r} is infinite; "
            "replace it with a finite number or leave the cell empty to mark it missing"
        )


def _float_values(col: Any) -> np.ndarray:
    """A float64 column (pyarrow) as numpy with nulls as NaN, read from its buffers.

    pyarrow's own ``to_numpy``/``fill_null`` paths import pandas (0.2 s), which a
    small fit does not need.
    """
    parts = []
    for chunk in col.chunks:
        n, off = len(chunk), chunk.offset
        validity, data = chunk.buffers()[:2]
        values = np.frombuffer(data, dtype=np.float64, count=n, offset=off * 8).copy()
        if chunk.null_count:
            bits = np.unpackbits(np.frombuffer(validity, dtype=np.uint8), bitorder="little")
            values[~bits[off : off + n].astype(bool)] = np.nan
        parts.append(values)
    return np.concatenate(parts) if parts else np.empty(0)


def _column_values(
    data: InputTable, name: str, *, requested: bool, role: str = "column"
) -> np.ndarray | str:
    """Float values of a column, or a reason (str) it is not numeric."""
    return _cell_values(data, name, data.table.column(name), role=role)


def _cell_values(
    data: Cells, name: str, col: Any, *, role: str = "column", whole: bool = True
) -> np.ndarray | str:
    """Float values of cells ``col`` of column ``name``, or a reason (str) they are not numeric.

    ``whole``: the cells are the whole column, so a column with nothing in it
    is an error here; a part of a column may be empty.
    """
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.types as pat

    t = col.type
    if pat.is_null(t):
        if not whole:
            return np.full(len(col), np.nan)
        raise _entirely_missing(data.name, role, name)
    if _is_numeric_type(t):  # integers beyond 2^53 round to the nearest float64
        return _float_values(pc.cast(col, pa.float64(), safe=False))
    if _is_text_type(t):
        try:
            fast = pc.cast(col, pa.float64())
            if not any(s in NA_TOKENS for s in pc.unique(col).to_pylist() if s is not None):
                return _float_values(fast)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        values = col.to_pylist()
        out, present, bad = _parse_text_numbers(values)
        if present == 0 and whole:
            raise DataError(
                f"{data.name}: {role} {name!r} is entirely missing (every cell empty or NA); "
                f"exclude it with --exclude {name}"
            )
        if not bad:
            return out
        if len(bad) * 2 <= present:
            i = bad[0]
            more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
            raise DataError(
                f"{data.name}: {role} {name!r}, {data.where(i)}: "
                f"{values[i]!r} is not a number{more}; "
                "fix the cell, or leave it empty to mark it missing"
            )
        return f"text such as {values[bad[0]]!r} in {data.where(bad[0])}"
    return _type_reason(t)


FLOAT_EXACT = 2**53  # integers up to this magnitude are exact in float64


def big_integers(col: Any) -> bool:
    """Whether an integer column (pyarrow) holds a value beyond ±2^53, which float64
    cannot hold exactly: such columns are most likely identifiers."""
    import pyarrow.compute as pc
    import pyarrow.types as pat

    if not pat.is_integer(col.type) or col.type.bit_width < 64 or col.null_count == len(col):
        return False
    lo_hi = pc.min_max(col)
    lo, hi = lo_hi["min"].as_py(), lo_hi["max"].as_py()
    return bool(hi > FLOAT_EXACT or lo < -FLOAT_EXACT)


def big_integer_notices(
    where: str, big: Sequence[str], asked: bool
) -> list[str]:
    """The notice (left out, when picked by default) or warning (named in --columns)."""
    if not big:
        return []
    names = ", ".join(map(repr, big))
    if asked:
        return [f"warning: {where}: column {names} holds integers beyond 2^53, which are "
                "rounded to the nearest float64"]
    return [f"left out integer column{'s' if len(big) > 1 else ''} {names} with values "
            "beyond 2^53 (likely identifiers; name them in --columns to fit on them)"]


def _is_text_type(t: Any) -> bool:
    import pyarrow.types as pat

    return bool(pat.is_string(t) or pat.is_large_string(t))


def _type_reason(t: Any) -> str:
    """Why a column of a type that is neither numbers nor text is not numeric."""
    import pyarrow.types as pat

    if pat.is_binary(t) or pat.is_large_binary(t):
        return "bytes that are not UTF-8 text"
    return f"type {t}"


def _split_names(values: Iterable[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out.extend(s.strip() for s in v.split(",") if s.strip())
    return out


def _missing_column(data: InputTable, name: str, option: str) -> DataError:
    return _no_such_column(data.name, data.table.column_names, name, option)


def _no_such_column(where: str, names: Sequence[str], name: str, option: str) -> DataError:
    import difflib

    close = difflib.get_close_matches(name, names, n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return DataError(
        f"{where}: no column {name!r} for {option}; {hint}"
        f"the columns are: {', '.join(names)}"
    )


def _asked_columns(
    where: str,
    names: Sequence[str],
    columns: Sequence[str] | None,
    exclude: Sequence[str] | None,
    id_column: str | None,
    weights_column: str | None,
) -> tuple[list[str], list[str]]:
    """The ``--columns`` and ``--exclude`` names, each checked to be a column, like the rest."""
    wanted = list(dict.fromkeys(_split_names(columns)))  # a column named twice is one feature
    dropped = _split_names(exclude)
    for n, opt in [(n, "--columns") for n in wanted] + [(n, "--exclude") for n in dropped]:
        if n not in names:
            raise _no_such_column(where, names, n, opt)
    for side_name, opt in ((id_column, "--id-column"), (weights_column, "--weights-column")):
        if side_name is not None and side_name not in names:
            raise _no_such_column(where, names, side_name, opt)
    return wanted, dropped


def _candidates(
    where: str, names: Sequence[str], wanted: list[str], dropped: list[str], side: set[Any]
) -> list[str]:
    """The columns that may be features: those asked for, or all but the id, weights, excluded."""
    if wanted:
        candidates = [n for n in wanted if n not in dropped]
        clash = [n for n in candidates if n in side]
        if clash:
            raise UsageError(
                f"column {clash[0]!r} cannot be both a feature and the id or weights column"
            )
    else:
        candidates = [n for n in names if n not in side and n not in dropped]
    if not candidates:
        raise DataError(f"{where}: no feature columns left to fit; check --columns and --exclude")
    return candidates


def _kept_notices(
    where: str, names: Sequence[str], kept: list[str], left_out: list[str]
) -> list[str]:
    """The notice for the non-numeric columns left out; an error if no column is left."""
    notices = []
    if left_out:
        notices.append(
            f"left out non-numeric column{'s' if len(left_out) > 1 else ''}: {', '.join(left_out)}"
        )
    if not kept:
        raise DataError(
            f"{where}: no numeric columns (found: {', '.join(names)}); "
            "check the delimiter or --format, or choose columns with --columns"
        )
    return notices


def _not_numeric_weights(where: str, name: str, reason: str) -> DataError:
    return DataError(
        f"{where}: weights column {name!r} is not numeric ({reason}); "
        "give a column of non-negative numbers"
    )


def _weight_values(data: Cells, name: str, col: Any, whole: bool = True) -> np.ndarray:
    """Row weights of cells ``col``, checked to be finite and non-negative."""
    w = _cell_values(data, name, col, role="weights column", whole=whole)
    if isinstance(w, str):
        raise _not_numeric_weights(data.name, name, w)
    bad = np.flatnonzero(~np.isfinite(w) | (w < 0))
    if bad.size:
        i = int(bad[0])
        what = "missing" if np.isnan(w[i]) else repr(float(w[i]))
        raise DataError(
            f"{data.name}: weights column {name!r}, {data.where(i)}: "
            f"weight is {what}; "
            "weights must be finite and non-negative"
        )
    return w


def select_features(
    data: InputTable,
    *,
    columns: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    id_column: str | None = None,
    weights_column: str | None = None,
) -> Features:
    """Choose the feature columns, convert them to floats and check them.

    Non-numeric columns that were not asked for are left out, with a notice.
    """
    names = data.table.column_names
    wanted, dropped = _asked_columns(data.name, names, columns, exclude, id_column, weights_column)

    ids = None
    if id_column is not None:
        ids = data.table.column(id_column).to_pylist()
    weights = None
    if weights_column is not None:
        w = _weight_values(data, weights_column, data.table.column(weights_column))
        if not w.sum() > 0:
            raise DataError(
                f"{data.name}: weights column {weights_column!r} sums to zero; "
                "give at least one row a positive weight"
            )
        weights = w

    side = {id_column, weights_column} - {None}
    candidates = _candidates(data.name, names, wanted, dropped, side)
    cols: list[np.ndarray] = []
    kept: list[str] = []
    left_out: list[str] = []
    big = [n for n in candidates if big_integers(data.table.column(n))]
    if not wanted:
        candidates = [n for n in candidates if n not in big]
    for n in candidates:
        v = _column_values(data, n, requested=bool(wanted))
        if isinstance(v, str):
            if wanted:
                raise _not_numeric(data.name, n, v)
            left_out.append(n)
            continue
        _reject_inf(data, n, v)
        if np.isnan(v).all():
            raise _entirely_missing(data.name, "column", n)
        cols.append(v)
        kept.append(n)
    notices = big_integer_notices(data.name, big, bool(wanted))
    notices += _kept_notices(data.name, names, kept, left_out)
    X = np.column_stack(cols) if cols else np.empty((data.n_rows, 0))
    return Features(X, kept, ids, id_column, weights, notices)


def _not_numeric(where: str, name: str, reason: str) -> DataError:
    return DataError(
        f"{where}: column {name!r} is not numeric ({reason}); "
        "choose numeric columns with --columns"
    )


def choose_columns(
    schema: Any,
    where: str,
    *,
    columns: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    id_column: str | None = None,
    weights_column: str | None = None,
    big: Callable[[str], bool] | None = None,
) -> ColumnChoice:
    """``select_features``'s choice of columns made from a pyarrow schema alone.

    ``big(name)`` says whether a 64-bit integer column holds values beyond 2^53
    (read from the file): left out when picked by default, a warning when asked for.

    The types decide: numbers are features; text is a feature when
    ``--columns`` names it (its cells are then read as numbers, as
    ``select_features`` reads them) and is left out with a notice otherwise,
    since a schema cannot tell text that holds numbers; other types are left
    out, or an error when asked for. ``where`` names the input in messages.
    """
    import pyarrow.types as pat

    names = list(schema.names)
    wanted, dropped = _asked_columns(where, names, columns, exclude, id_column, weights_column)
    if weights_column is not None:
        t = schema.field(weights_column).type
        if pat.is_null(t):
            raise _entirely_missing(where, "weights column", weights_column)
        if not (_is_numeric_type(t) or _is_text_type(t)):
            raise _not_numeric_weights(where, weights_column, _type_reason(t))
    kept: list[str] = []
    left_out: list[str] = []
    too_big: list[str] = []
    for n in _candidates(where, names, wanted, dropped, {id_column, weights_column} - {None}):
        t = schema.field(n).type
        if pat.is_null(t):
            raise _entirely_missing(where, "column", n)
        if big is not None and pat.is_integer(t) and t.bit_width == 64 and big(n):
            too_big.append(n)
            if not wanted:
                continue
        if _is_numeric_type(t) or (wanted and _is_text_type(t)):
            kept.append(n)
        elif wanted:
            raise _not_numeric(where, n, _type_reason(t))
        else:
            left_out.append(n)
    notices = big_integer_notices(where, too_big, bool(wanted))
    notices += _kept_notices(where, names, kept, left_out)
    return ColumnChoice(kept, id_column, weights_column, notices)


def _entirely_missing(where: str, role: str, name: str) -> DataError:
    return DataError(
        f"{where}: {role} {name!r} is entirely missing (every cell empty); "
        f"exclude it with --exclude {name}"
    )


def part_features(
    part: Cells, features: Sequence[str], weights: str | None = None, ids: str | None = None
) -> tuple[np.ndarray, np.ndarray | None, Any]:
    """Features (float64, NaN = missing), weights and ids of some rows of one file.

    The cells are converted and checked as ``select_features`` does each
    column; the checks that need a whole column (a column with nothing
    observed, weights that sum to zero) are the caller's.
    """
    t = part.table
    X = np.empty((t.num_rows, len(features)))
    for j, n in enumerate(features):
        v = _cell_values(part, n, t.column(n), whole=False)
        if isinstance(v, str):
            raise _not_numeric(part.name, n, v)
        _reject_inf(part, n, v)
        X[:, j] = v
    w = None if weights is None else _weight_values(part, weights, t.column(weights), whole=False)
    extra = None if ids is None else t.column(ids).combine_chunks()
    return X, w, extra


def read_means(path: str, columns: Sequence[str], n_components: int) -> np.ndarray:
    """Initial means from a JSON file (list of rows, {"means": …}, or a model) or a CSV file."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise DataError(f"{path}: cannot read initial means ({exc.strerror})") from exc
    name = path
    if path.lower().endswith(".json"):
        try:
            doc = json.loads(raw, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            raise DataError(f"{name}: not valid JSON ({exc}); give a list of mean vectors") from exc
        if isinstance(doc, dict):
            doc = doc.get("means")
        try:
            means = np.array(doc, dtype=float)
        except (TypeError, ValueError) as exc:
            raise DataError(f"{name}: initial means must be a list of lists of numbers") from exc
    else:
        import pyarrow.csv as pacsv

        try:
            t = pacsv.read_csv(io.BytesIO(raw))
        except Exception as exc:  # pyarrow raises several types here
            raise DataError(f"{name}: cannot read initial means as CSV ({exc})") from exc
        use = [c for c in columns if c in t.column_names]
        if len(use) == len(columns):
            t = t.select(use)
        try:
            means = np.column_stack(
                [np.asarray(t.column(i).to_numpy(), dtype=float) for i in range(t.num_columns)]
            )
        except (TypeError, ValueError) as exc:
            raise DataError(f"{name}: initial means must be numbers ({exc})") from exc
    d = len(columns)
    if means.shape != (n_components, d) or not np.all(np.isfinite(means)):
        raise DataError(
            f"{name}: initial means must be {n_components} rows × {d} finite numbers "
            f"(one row per component, columns {', '.join(columns)}); got shape {means.shape}"
        )
    return means


def _model_column(data: InputTable, name: str) -> np.ndarray:
    import pyarrow.types as pat

    col = data.table.column(name)
    if pat.is_null(col.type) or (
        (pat.is_string(col.type) or pat.is_large_string(col.type))
        and all(v is None or v in NA_TOKENS for v in col.unique().to_pylist())
    ):
        return np.full(data.n_rows, np.nan)  # nothing observed here: integrated out
    v = _column_values(data, name, requested=True)
    if isinstance(v, str):
        raise DataError(
            f"{data.name}: column {name!r} is not numeric ({v}); the model needs numbers there"
        )
    _reject_inf(data, name, v)
    return v


def check_model_columns(name: str, names: Sequence[str], columns: Sequence[str]) -> None:
    """One error listing every model column that an input (``names``) lacks."""
    absent = [c for c in columns if c not in names]
    if absent:
        many = len(absent) > 1
        raise DataError(
            f"{name}: the model's column{'s' if many else ''} "
            f"{', '.join(map(repr, absent))} {'are' if many else 'is'} missing; "
            f"the model needs {', '.join(columns)} (the file has: {', '.join(names)})"
        )


def model_features(
    data: InputTable, columns: Sequence[str], id_column: str | None = None
) -> Features:
    """A model's columns of a table, matched by name (NaN for missing cells).

    Other columns are ignored; the model's columns that the table lacks are one
    error listing them all. A column with nothing observed is allowed: its cells
    are integrated out like any other missing value.
    """
    names = data.table.column_names
    check_model_columns(data.name, names, columns)
    if id_column is not None and id_column not in names:
        raise _missing_column(data, id_column, "--id-column")
    ids = data.table.column(id_column).to_pylist() if id_column is not None else None
    X = np.column_stack([_model_column(data, c) for c in columns])
    return Features(X, list(columns), ids, id_column, None)


def observed_counts(X: np.ndarray) -> np.ndarray:
    return np.asarray((~np.isnan(X)).sum(axis=1), dtype=np.int64)
