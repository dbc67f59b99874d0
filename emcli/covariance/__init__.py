"""Covariance models: the one table of mclust's fourteen (docs/criteria.md §3).

``MODELS`` maps each model's three letters (volume, shape, orientation:
Equal, Variable or Identity) to the object that knows everything the rest
of emcli asks of it; emcli's earlier names ``full``, ``diag``, ``spherical``
and ``tied`` are aliases of VVV, VVI, VII and EEE and share their seeds.
``get_model`` accepts either spelling, in any case.
"""

from __future__ import annotations

from emcli.errors import UsageError

from .base import Context, CovarianceModel, Diag, Full, Spherical, Tied
from .constrained import CONSTRAINED

# mclust's order: volume, then shape, then orientation constrained first
ORDER = ("EII", "VII", "EEI", "VEI", "EVI", "VVI", "EEE",
         "VEE", "EVE", "VVE", "EEV", "VEV", "EVV", "VVV")

_ALL = {m.name: m for m in (Full(), Diag(), Spherical(), Tied(), *CONSTRAINED)}
MODELS: dict[str, CovarianceModel] = {name: _ALL[name] for name in ORDER}
ALIASES: dict[str, str] = {m.alias: m.name for m in MODELS.values() if m.alias}
COVARIANCE_TYPES = ORDER
# the names as emcli spells them, to their models
_BY_SPELLING: dict[str, CovarianceModel] = {
    **MODELS, **{alias: MODELS[name] for alias, name in ALIASES.items()}
}
assert len({m.seed_index for m in MODELS.values()}) == len(MODELS)


def model_name(name: str) -> str | None:
    """The spelling emcli keeps for ``name``: an alias in lower case, else three capitals.

    None when ``name`` is no model.
    """
    text = str(getattr(name, "value", name)).strip()  # a CLI enum member or a string
    if text.lower() in ALIASES:
        return text.lower()
    return text.upper() if text.upper() in MODELS else None


def get_model(name: str) -> CovarianceModel:
    """The model called ``name``; a ``UsageError`` listing the choices otherwise."""
    known = _BY_SPELLING.get(name) if isinstance(name, str) else None
    if known is not None:  # the spellings parameters carry: every pass asks for its model
        return known
    spelt = model_name(name)
    if spelt is None:
        raise UsageError(
            f"unknown covariance model {name!r}; use one of {', '.join(ORDER)} "
            f"(or {', '.join(f'{a}={m}' for a, m in ALIASES.items())})"
        )
    return MODELS[ALIASES.get(spelt, spelt)]


__all__ = [
    "ALIASES", "COVARIANCE_TYPES", "MODELS", "ORDER", "Context", "CovarianceModel",
    "get_model", "model_name",
]
