"""The ecocube exception tree.

Every error derives from :class:`EcocubeError` and, where one fits, from the matching
builtin too, so callers can catch either way (``except OSError`` still sees a read
failure). Errors carry the file, URL, key or tile they concern in their message.
"""

from __future__ import annotations

import re

#: ``scheme://user:password@host`` -> ``scheme://***@host`` (keys inside an endpoint URL)
_URL_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.\-]*://)[^/@\s:'\"]+:[^\s'\"]*@")


def redact(text: str) -> str:
    """``text`` with the credentials of any ``scheme://user:secret@host`` URL replaced."""
    return _URL_CREDENTIALS.sub(r"\g<scheme>***@", text)


class EcocubeError(Exception):
    """Root of all ecocube errors. Messages never carry credentials of URLs (:func:`redact`)."""

    #: process exit code the CLI uses for this kind of error
    exit_code: int = 1

    def __init__(self, *args):
        super().__init__(*(redact(a) if isinstance(a, str) else a for a in args))


class ConfigError(EcocubeError, ValueError):
    """A run configuration or an argument is invalid (exit code 2)."""

    exit_code = 2


class GridError(EcocubeError, ValueError):
    """A tile id, index or area of interest does not fit the tile grid."""

    exit_code = 2


class ReadError(EcocubeError, OSError):
    """An input raster could not be read (missing, unreadable, server error)."""

    def __init__(self, message: str, *, url: str | None = None, tile: str | None = None):
        parts = [message]
        if url and url not in message:
            parts.append(f"url={url}")
        if tile and tile not in message:
            parts.append(f"tile={tile}")
        super().__init__("; ".join(parts))
        self.url = url
        self.tile = tile


class InputMissingError(ReadError):
    """An input that the catalog promises does not exist (HTTP 404, no such key/file)."""


class StoreError(EcocubeError, OSError):
    """Putting, getting or listing an object in the output store failed."""


class FileOverwriteError(StoreError, FileExistsError):
    """An output exists and ``--overwrite`` was not given."""


class ModelError(EcocubeError, ValueError):
    """A model bundle is missing, incompatible or does not match the features."""


class SlurmError(EcocubeError, RuntimeError):
    """A Slurm command failed (sbatch, squeue, scontrol, sacct)."""


class TileError(EcocubeError, RuntimeError):
    """Processing one tile failed; the message names the tile and the cause."""

    def __init__(self, message: str, *, tile: str | None = None):
        super().__init__(message if tile is None or tile in message else f"tile {tile}: {message}")
        self.tile = tile


class Interrupted(EcocubeError):
    """The process received SIGTERM/SIGINT (e.g. a Slurm time limit) and stopped cleanly."""

    exit_code = 143
