"""A fitted hazard model on disk: JSON, written atomically, read with its path in every error."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from gpumedic.adapters.errors import PermanentError
from gpumedic.domain.forecast.default_model import DEFAULT_MODEL
from gpumedic.domain.forecast.hazard import HazardModel
from gpumedic.domain.forecast.model_codec import ModelFormatError, model_from_dict, model_to_dict

_READABLE = 0o644


class ModelFileError(PermanentError):
    """The model file is missing, unreadable, or not a model this release can score with."""


def load_model(path: str | os.PathLike[str] | None) -> HazardModel:
    """The model a file holds, or the shipped one when no file is named."""
    return DEFAULT_MODEL if path is None else read_model(path)


def read_model(path: str | os.PathLike[str]) -> HazardModel:
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ModelFileError(f"forecast model {path}: {err.strerror or err}") from err
    try:
        return model_from_dict(json.loads(text))
    except json.JSONDecodeError as err:
        raise ModelFileError(f"forecast model {path}: not JSON ({err})") from err
    except ModelFormatError as err:
        raise ModelFileError(f"forecast model {path}: {err}") from err


def write_model(path: str | os.PathLike[str], model: HazardModel) -> None:
    """Replace `path` in one step: the daily forecast never reads half a model."""
    target = Path(path)
    text = json.dumps(model_to_dict(model), indent=1, allow_nan=False) + "\n"
    # mkstemp creates the file 0600; a model holds no secret, and the flow may run as another user.
    mode = target.stat().st_mode & 0o777 if target.exists() else _READABLE
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
