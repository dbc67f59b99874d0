"""Pictures of a fit (PNG bytes) and image segmentation: the ``emcli[plot]`` extra.

Only ``figures.py`` imports matplotlib and only ``emcli/io/image.py`` imports
Pillow, and only when a picture or an image is asked for, so ``emcli --help``
and plain fits never load them. ``require_extra`` turns their absence into one
line that says what to install (exit 2). Nothing here writes a file: every
picture is returned as bytes and committed by the caller with its other outputs
(``AtomicOutputs``).
"""

from __future__ import annotations

from emcli.errors import UsageError

INSTALL_HINT = "pip install 'emcli[plot]'"


class MissingExtraError(UsageError):
    """matplotlib or Pillow is not installed (exit 2)."""


def require_extra(what: str) -> None:
    """Raise ``MissingExtraError`` naming ``what`` unless matplotlib and Pillow import."""
    try:
        import matplotlib  # noqa: F401
        import PIL  # noqa: F401
    except ImportError as exc:
        raise MissingExtraError(
            f"{what} needs matplotlib and Pillow ({exc.name or 'a module'} is not installed); "
            f"install them with: {INSTALL_HINT}"
        ) from None
