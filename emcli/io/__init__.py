"""Files in and out: tables (CSV, TSV, .csv.gz, Parquet, stdin), outputs, model JSON.

Everything that touches the file system or a table library lives in this
package, so that the core stays pure. pyarrow is imported inside the functions
that need it, so ``emcli --help`` stays fast. Every problem found in a file is a
``DataError`` (or ``ModelFileError``) whose one-line message names the file,
column or row and says what to do.

Row numbers in messages and in the labels' ``row`` column count data rows from
1 (the header is not a row).
"""

from __future__ import annotations

from .columns import (
    convergence_columns,
    imputed_columns,
    labels_columns,
    sample_columns,
    scores_columns,
    sweep_columns,
)
from .features import (
    Features,
    model_features,
    observed_counts,
    read_means,
    select_features,
)
from .modelfile import (
    MODEL_FIELDS,
    MODEL_FORMAT,
    MODEL_FORMAT_VERSION,
    MODEL_MAX_BYTES,
    MODEL_MAX_FIT_VALUES,
    LoadedModel,
    dumps_model,
    load_model,
    model_document,
)
from .outputs import (
    AtomicOutputs,
    OutputFile,
    OutputWriteError,
    check_output_paths,
    same_file,
)
from .readers import (
    INPUT_FORMATS,
    NA_TOKENS,
    InputFile,
    InputTable,
    input_stem,
    read_table,
    resolve_inputs,
)
from .writers import (
    OUTPUT_FORMATS,
    ByteSink,
    TableWriter,
    fmt_needs_whole_table,
    in_place,
    open_table_writer,
    output_format,
    render_table,
)

__all__ = [
    "INPUT_FORMATS",
    "MODEL_FIELDS",
    "MODEL_FORMAT",
    "MODEL_FORMAT_VERSION",
    "MODEL_MAX_BYTES",
    "MODEL_MAX_FIT_VALUES",
    "NA_TOKENS",
    "OUTPUT_FORMATS",
    "AtomicOutputs",
    "ByteSink",
    "Features",
    "InputFile",
    "InputTable",
    "LoadedModel",
    "OutputFile",
    "OutputWriteError",
    "TableWriter",
    "check_output_paths",
    "convergence_columns",
    "dumps_model",
    "fmt_needs_whole_table",
    "imputed_columns",
    "input_stem",
    "labels_columns",
    "load_model",
    "model_document",
    "model_features",
    "observed_counts",
    "open_table_writer",
    "in_place",
    "output_format",
    "read_means",
    "read_table",
    "render_table",
    "resolve_inputs",
    "same_file",
    "sample_columns",
    "scores_columns",
    "select_features",
    "sweep_columns",
]
