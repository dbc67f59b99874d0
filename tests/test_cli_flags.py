"""The error wrapper writes the core's parameter names as the command line's flags."""

import pytest
import typer
from typer.main import get_command

from emcli.cli import app
from emcli.cli.app import PARAMETER_FLAGS, flagged, handled
from emcli.errors import DataError


@pytest.mark.parametrize(
    "message, expected",
    [
        ("reg_covar must be >= 0", "--reg-covar must be >= 0"),
        ("a column is constant; use standardize=True or drop it",
         "a column is constant; use --standardize or drop it"),
        ("unknown init method 'banana'", "unknown --init 'banana'"),
        ("too little memory: try dtype='float64'", "too little memory: try --dtype float64"),
        ("n_components=5 exceeds the 3 rows", "-k=5 exceeds the 3 rows"),
        ("did not converge; raise max_iter.", "did not converge; raise --max-iter."),
        ("reg_covar, max_iter and n_init", "--reg-covar, --max-iter and --n-init"),
    ],
)  # fmt: skip
def test_parameter_names_become_flags(message, expected):
    assert flagged(message) == expected


@pytest.mark.parametrize(
    "message",
    [
        "the fit did not converge in 5 iterations; raise --max-iter or --tol",
        "--reg-covar 0 is too small; raise --reg-covar",
        "--init 'x' is neither a method nor an existing file; see --n-init, --dtype float64",
        "-k must be at least 1",
        "data/max_iter.csv: no column 'Ozone'",  # a file name is not a parameter
        "my_n_init and reg_covariance are other names",
    ],
)
def test_flags_and_other_words_pass_through(message):
    assert flagged(message) == message


def test_every_flag_is_an_option_of_fit_or_select_k():
    commands = get_command(app).commands
    flags = {opt for name in ("fit", "select-k") for param in commands[name].params
             for opt in param.opts}
    for flag in PARAMETER_FLAGS.values():
        assert flag.split()[0] in flags, flag


def test_k_values_reads_as_the_k_flag():
    assert flagged("k_values '1:x': cannot read '1:x'") == "--k '1:x': cannot read '1:x'"


def test_the_error_wrapper_prints_flags(capsys):
    with pytest.raises(typer.Exit) as exit_info, handled(debug=False):
        raise DataError("data.csv: a column is constant; raise reg_covar or use standardize=True")
    assert exit_info.value.exit_code == 1
    assert capsys.readouterr().err == (
        "emcli: error: data.csv: a column is constant; raise --reg-covar or use --standardize\n"
    )
