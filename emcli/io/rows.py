"""Open the command line's inputs as a row source: what every pass reads.

- Parquet files, directories and globs: streamed in record batches on every
  pass (``sources/parquet.py``).
- CSV, TSV and ``.csv.gz`` files small enough for memory: read whole, as
  arrays (the fastest way for the common case).
- Larger delimited files and standard input, which cannot be re-read
  cheaply: converted in one pass to an Arrow IPC file under ``tmp_dir``
  (``spill.py``), which later passes stream; it is removed on exit, on error
  and on Ctrl-C.

Whichever way, the same rows give the same numbers: the model does not depend
on how the input was read.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from emcli.errors import DataError
from emcli.io.features import _kept_notices, _not_numeric, choose_columns, select_features
from emcli.io.readers import InputFile, _hash_file, display_name, read_table
from emcli.io.spill import spill_delimited
from emcli.sources import ArraySource, RowSource

# A delimited file is read whole when its size times this stays within the budget
# (text, the pyarrow table and the float columns are alive together while reading).
TEXT_OVERHEAD = 6


@dataclass
class OpenedRows:
    """An opened input: its rows as a source, and what messages and outputs need."""

    source: RowSource
    name: str  # for messages
    stem: str  # output stem
    columns: list[str]  # the feature columns, in order
    id_name: str | None
    sha256: str
    n_rows: int
    notices: list[str] = field(default_factory=list)
    how: str = ""  # "parquet", "memory" or "spill"


def _all_parquet(inputs: Sequence[InputFile]) -> bool:
    return all(f.format == "parquet" and f.path != "-" for f in inputs)


def _small(inputs: Sequence[InputFile], budget: int | None) -> bool:
    import os

    if any(f.path == "-" for f in inputs):
        return False
    if budget is None:
        return True
    try:
        size = sum(os.path.getsize(f.path) for f in inputs)
    except OSError:
        return True  # read_table names the file it cannot read
    gz = any(f.path.lower().endswith(".gz") for f in inputs)
    return size * TEXT_OVERHEAD * (8 if gz else 1) <= budget


def _sha256(paths: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for p in paths:
        _hash_file(p, digest)
    return digest.hexdigest()


@contextmanager
def open_rows(
    inputs: Sequence[InputFile],
    *,
    columns: Sequence[str] | None = None,
    exclude: Sequence[str] | None = None,
    id_column: str | None = None,
    weights_column: str | None = None,
    tmp_dir: str | None = None,
    budget: int | None = None,
    stdin: Any = None,
    client: Any = None,
) -> Iterator[OpenedRows]:
    """The inputs as an ``OpenedRows``; a spill file lives as long as the context.

    With a Dask ``client``, the rows are read and kept by the cluster's workers.
    """
    from emcli.io.readers import input_stem
    from emcli.sources.parquet import open_parquet

    if client is not None:
        yield _on_cluster(client, inputs, columns=columns, exclude=exclude,
                          id_column=id_column, weights_column=weights_column)
        return
    if _all_parquet(inputs):
        pq = open_parquet(inputs, columns=columns, exclude=exclude, id_column=id_column,
                          weights_column=weights_column)
        files = pq.files
        name = display_name([(f, 0) for f in files])
        yield OpenedRows(pq, name, input_stem([f.path for f in inputs]), list(pq.columns),
                         pq.ids, _sha256(files), pq.n_rows, list(pq.notices), "parquet")
        return
    if _small(inputs, budget):
        table = read_table(inputs, stdin=stdin)
        feats = select_features(table, columns=columns, exclude=exclude, id_column=id_column,
                                weights_column=weights_column)
        segments = [rows for _, rows in table.parts] or None
        arrays = ArraySource(feats.X, feats.weights, extra=feats.ids, segments=segments)
        yield OpenedRows(arrays, table.name, table.stem, list(feats.columns), feats.id_name,
                         table.sha256, table.n_rows, list(feats.notices), "memory")
        return
    keep = {id_column} if id_column else set()
    with spill_delimited(inputs, tmp_dir, stdin, keep_text=keep) as sp:
        from emcli.sources.parquet import big_integer_column

        picked = choose_columns(sp.schema, sp.name, columns=columns, exclude=exclude,
                                id_column=id_column, weights_column=weights_column,
                                big=big_integer_column([sp.path], "arrow"))
        features, left_out = [], []
        for c in picked.features:
            reason = sp.not_numeric(c)
            if reason is None:
                features.append(c)
            elif columns:
                raise _not_numeric(sp.name, c, reason)
            else:
                left_out.append(c)
        if weights_column is not None:
            reason = sp.not_numeric(weights_column, "weights column")
            if reason is not None:
                raise DataError(f"{sp.name}: weights column {weights_column!r} is not numeric "
                                f"({reason}); give a numeric weights column")
        notices = list(picked.notices)
        if left_out:
            notices += _kept_notices(sp.name, sp.schema.names, features, left_out)
        from emcli.sources.parquet import ParquetSource

        src = ParquetSource([sp.path], features, weights=weights_column, ids=picked.id_name,
                            file_format="arrow", segments=[[rows for _, rows in sp.parts]])
        yield OpenedRows(src, sp.name, sp.stem, features, picked.id_name, sp.sha256, sp.n_rows,
                         notices, "spill")


@contextmanager
def open_model_rows(
    inputs: Sequence[InputFile],
    model_columns: Sequence[str],
    id_column: str | None = None,
    *,
    default_id: str | None = None,
    passthrough: bool = False,
    tmp_dir: str | None = None,
    budget: int | None = None,
    stdin: Any = None,
    client: Any = None,
) -> Iterator[OpenedRows]:
    """A model's columns of the inputs, matched by name, as a row source.

    As ``open_rows``: Parquet is streamed, small delimited files are read whole,
    larger ones and standard input are spilled (within ``budget``) and streamed.
    Without ``id_column``, ``default_id`` is the id column when the input has it.
    With ``passthrough``, each block's ``extra`` holds all its input columns (a
    pyarrow Table); through a spill, the columns outside the model pass through
    as their original text.
    """
    from emcli.io.features import _no_such_column, check_model_columns, model_features
    from emcli.io.readers import input_stem

    if client is not None and not _all_parquet(inputs):
        from emcli.sources.dask import delimited_on_cluster

        check_cluster_inputs(inputs)
        model = {"columns": list(model_columns), "id_column": id_column,
                 "default_id": default_id, "passthrough": passthrough}
        parts, _, ids, _, _ = delimited_on_cluster(client, _absolute(inputs), {}, model)
        yield OpenedRows(parts, display_name([(f.path, 0) for f in inputs]),
                         input_stem([f.path for f in inputs]), list(model_columns), ids, "",
                         parts.n_rows, [], "dask")
        return
    if _all_parquet(inputs):
        from emcli.sources.parquet import ParquetSource, _stamp

        files = [f.path for f in inputs]
        names = _stamp(files[0], "parquet", []).schema.names
        name = display_name([(f, 0) for f in files])
        check_model_columns(name, names, model_columns)
        if id_column is None and default_id in names:
            id_column = default_id
        if id_column is not None and id_column not in names:
            raise _no_such_column(name, names, id_column, "--id-column")
        src = ParquetSource(files, model_columns, ids=id_column, passthrough=passthrough)
        yield OpenedRows(_placed(src, client), name, input_stem(files), list(model_columns),
                         id_column, "", src.n_rows, [], "parquet" if client is None else "dask")
        return
    if _small(inputs, budget):
        table = read_table(inputs, stdin=stdin)
        if id_column is None and default_id in table.table.column_names:
            id_column = default_id
        feats = model_features(table, model_columns, id_column)
        segments = [rows for _, rows in table.parts] or None
        extra = _TableRows(table.table) if passthrough else feats.ids
        arrays = ArraySource(feats.X, None, extra=extra, segments=segments)
        yield OpenedRows(arrays, table.name, table.stem, list(model_columns), id_column,
                         table.sha256, table.n_rows, [], "memory")
        return
    features = frozenset(model_columns)
    # the id column (and, passed through, every column outside the model) as its text
    keep = _AllBut(features) if passthrough else {c for c in (id_column, default_id) if c}
    with spill_delimited(inputs, tmp_dir, stdin, keep_text=keep) as sp:
        names = sp.schema.names
        check_model_columns(sp.name, names, model_columns)
        if id_column is None and default_id in names:
            id_column = default_id
        if id_column is not None and id_column not in names:
            raise _no_such_column(sp.name, names, id_column, "--id-column")
        for c in model_columns:
            reason = sp.not_numeric(c)
            if reason is not None:
                raise DataError(f"{sp.name}: column {c!r} is not numeric ({reason}); "
                                "the model needs numbers there")
        from emcli.sources.parquet import ParquetSource

        src = ParquetSource([sp.path], list(model_columns), ids=id_column, file_format="arrow",
                            segments=[[rows for _, rows in sp.parts]], passthrough=passthrough)
        yield OpenedRows(src, sp.name, sp.stem, list(model_columns), id_column, sp.sha256,
                         sp.n_rows, [], "spill")


class _AllBut(frozenset):
    """Every name but these (``keep_text`` for a spill that passes columns through)."""

    def __contains__(self, name: object) -> bool:
        return not super().__contains__(name)


def check_cluster_inputs(inputs: Sequence[InputFile]) -> None:
    """Inputs a Dask cluster's workers can read themselves: files, not standard input."""
    if any(f.path == "-" for f in inputs):
        raise DataError("<stdin>: a Dask cluster's workers cannot read standard input; "
                        "give files that every worker can see")


def _on_cluster(client: Any, inputs: Sequence[InputFile], **choice: Any) -> OpenedRows:
    """The inputs read and kept by a Dask cluster's workers: Parquet files streamed there,
    CSV and TSV files read whole there, one partition per file."""
    from emcli.io.readers import input_stem
    from emcli.sources.dask import delimited_on_cluster, input_sha256

    check_cluster_inputs(inputs)
    stem = input_stem([f.path for f in inputs])
    names = [(f.path, 0) for f in inputs]
    inputs = _absolute(inputs)
    if _all_parquet(inputs):
        from emcli.sources.parquet import open_parquet

        pq = open_parquet(inputs, **choice)
        return OpenedRows(_placed(pq, client), display_name(names), stem,
                          list(pq.columns), pq.ids, input_sha256(client, inputs), pq.n_rows,
                          list(pq.notices), "dask")
    if any(f.format == "parquet" for f in inputs):
        raise DataError(f"{inputs[0].path} …: the inputs mix Parquet and delimited files; "
                        "give files of one format with --dask")
    src, features, id_name, notices, _ = delimited_on_cluster(client, inputs, choice)
    return OpenedRows(src, display_name(names), stem, features, id_name,
                      input_sha256(client, inputs), src.n_rows, notices, "dask")


def _absolute(inputs: Sequence[InputFile]) -> list[InputFile]:
    """The inputs as absolute paths: the workers' working directory is not this one."""
    return [dataclasses.replace(f, path=os.path.abspath(f.path)) for f in inputs]


def _placed(source: Any, client: Any) -> RowSource:
    """``source``'s rows, or the same files read and kept by a Dask cluster's workers."""
    if client is None:
        return source
    from emcli.sources.dask import parquet_on_cluster

    return parquet_on_cluster(client, source)


@dataclass
class _TableRows:
    """A pyarrow Table sliced by rows as a sequence is (``ArraySource``'s ``extra``)."""

    table: Any

    def __len__(self) -> int:
        return int(self.table.num_rows)

    def __getitem__(self, rows: slice) -> Any:
        start, stop, _ = rows.indices(len(self))
        return self.table.slice(start, stop - start)
