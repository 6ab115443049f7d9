"""A fitted hazard model on disk: JSON, written atomically, read with its path in every error."""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from gpumedic.adapters.errors import PermanentError
from gpumedic.domain.forecast.default_model import DEFAULT_MODEL
from gpumedic.domain.forecast.hazard import HazardModel
from gpumedic.domain.forecast.model_codec import ModelFormatError, model_from_dict, model_to_dict

_READABLE = 0o644
# Models a refit replaced, kept beside the file in use: enough to roll back a few weeks.
ARCHIVE_KEEP = 8
_STAMP = "%Y%m%dT%H%M%SZ"


class ModelFileError(PermanentError):
    """The model file is missing, unreadable, or not a model this release can score with."""


def load_model(path: str | os.PathLike[str] | None, *, missing_is_shipped: bool = False) -> HazardModel:
    """The model a file holds, or the shipped one when no file is named. With `missing_is_shipped`,
    a named file that does not exist yet is the shipped model too, and its note says so (the fleet
    file names where the weekly refit will write; until a refit passes its check, there is none)."""
    if path is None:
        return DEFAULT_MODEL
    if missing_is_shipped and not Path(path).exists():
        return replace(DEFAULT_MODEL, note=f"{DEFAULT_MODEL.note} (no fitted model at {path} yet)")
    return read_model(path)


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


def install_model(
    path: str | os.PathLike[str], model: HazardModel, *, at: datetime, keep: int = ARCHIVE_KEEP
) -> Path | None:
    """Make `model` the one at `path`. The model it replaces stays beside it as
    `<stem>.<UTC time of the replacement><suffix>`, the newest `keep` of them: rolling a refit back
    is copying one of those over `path`. Returns the archived copy (None: there was no model)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    archived = None
    if target.exists():
        archived = target.with_name(f"{target.stem}.{at.strftime(_STAMP)}{target.suffix}")
        shutil.copy2(target, archived)
    write_model(target, model)
    for old in archived_models(target)[:-keep]:
        old.unlink(missing_ok=True)
    return archived


def archived_models(path: str | os.PathLike[str]) -> list[Path]:
    """The models `install_model` replaced at `path`, oldest first."""
    target = Path(path)
    named = re.compile(re.escape(target.stem) + r"\.\d{8}T\d{6}Z" + re.escape(target.suffix))
    return sorted(p for p in target.parent.glob(f"{target.stem}.*{target.suffix}") if named.fullmatch(p.name))
