"""A hazard model as a JSON document, and back, checked against the features this release computes.

A model fitted on one fleet's history (`gpumedic forecast fit`) is kept as a file and
read by the daily forecast. A model that reads other features, names other causes, or
holds a number that is not finite would score every GPU wrongly without a sound, so
reading it fails with the field that is wrong named, and nothing is scored.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from gpumedic.domain.forecast.features import FEATURES
from gpumedic.domain.forecast.hazard import CAUSE_SPEC, CauseModel, HazardModel

MODEL_FORMAT = "gpumedic.hazard-model/1"


class ModelFormatError(ValueError):
    """The document is not a hazard model this release can score with."""


def model_to_dict(model: HazardModel) -> dict[str, Any]:
    """A JSON-ready document (an unknown lead time, NaN, is written as null)."""
    return {
        "format": MODEL_FORMAT,
        "note": model.note,
        "lead_hours": model.lead_hours,
        "horizon_hours": model.horizon_hours,
        "alarm_threshold": model.alarm_threshold,
        "features": list(model.features),
        "causes": [
            {
                "name": c.name,
                "kinds": list(c.kinds),
                "features": list(c.features),
                "intercept": c.intercept,
                "mean": list(c.mean),
                "scale": list(c.scale),
                "coef": list(c.coef),
                "lead_by_feature": [v if math.isfinite(v) else None for v in c.lead_by_feature],
            }
            for c in model.causes
        ],
    }


def model_from_dict(doc: object) -> HazardModel:
    """The model a document describes; `ModelFormatError` names the first thing wrong with it."""
    top = _mapping(doc, "the document")
    if top.get("format") != MODEL_FORMAT:
        raise ModelFormatError(f"format: expected {MODEL_FORMAT!r}, got {top.get('format')!r}")
    features = tuple(_strings(top, "features", "features"))
    if features != FEATURES:
        missing = [f for f in FEATURES if f not in features]
        extra = [f for f in features if f not in FEATURES]
        raise ModelFormatError(
            "features: the model reads other features than this release computes "
            f"(missing {missing or 'none'}, unknown {extra or 'none'}"
            f"{', or another order' if not missing and not extra else ''}); refit it with `gpumedic forecast fit`"
        )
    lead = _number(top, "lead_hours", "lead_hours")
    horizon = _number(top, "horizon_hours", "horizon_hours")
    threshold = _number(top, "alarm_threshold", "alarm_threshold")
    if lead < 0 or horizon <= 0:
        raise ModelFormatError(f"lead_hours {lead:g} / horizon_hours {horizon:g}: need lead ≥ 0 and horizon > 0")
    if not 0.0 < threshold < 1.0:
        raise ModelFormatError(f"alarm_threshold {threshold:g}: a probability strictly between 0 and 1")
    note = top.get("note", "")
    if not isinstance(note, str):
        raise ModelFormatError("note: expected a string")
    raw_causes = top.get("causes")
    if not isinstance(raw_causes, list) or len(raw_causes) != len(CAUSE_SPEC):
        raise ModelFormatError(f"causes: expected a list of {len(CAUSE_SPEC)} causes, {[n for n, _, _ in CAUSE_SPEC]}")
    causes = tuple(
        _cause(raw, spec, f"causes[{i}]") for i, (raw, spec) in enumerate(zip(raw_causes, CAUSE_SPEC, strict=True))
    )
    return HazardModel(
        features=features,
        causes=causes,
        lead_hours=lead,
        horizon_hours=horizon,
        alarm_threshold=threshold,
        note=note,
    )


def _cause(raw: object, spec: tuple[str, tuple[str, ...], tuple[str, ...]], where: str) -> CauseModel:
    name, kinds, features = spec
    doc = _mapping(raw, where)
    if doc.get("name") != name:
        raise ModelFormatError(f"{where}.name: expected {name!r}, got {doc.get('name')!r}")
    if tuple(_strings(doc, "kinds", f"{where}.kinds")) != kinds:
        raise ModelFormatError(f"{where}.kinds: expected {list(kinds)}")
    if tuple(_strings(doc, "features", f"{where}.features")) != features:
        raise ModelFormatError(f"{where}.features: the cause reads other features than this release computes")
    n = len(features)
    scale = _numbers(doc, "scale", f"{where}.scale", n)
    if any(s <= 0 for s in scale):
        raise ModelFormatError(f"{where}.scale: every spread must be positive")
    leads = doc.get("lead_by_feature")
    if not isinstance(leads, list) or len(leads) != n:
        raise ModelFormatError(f"{where}.lead_by_feature: expected {n} entries (hours or null)")
    lead_by = tuple(math.nan if v is None else _finite(v, f"{where}.lead_by_feature[{j}]") for j, v in enumerate(leads))
    return CauseModel(
        name=name,
        kinds=kinds,
        features=features,
        mean=_numbers(doc, "mean", f"{where}.mean", n),
        scale=scale,
        coef=_numbers(doc, "coef", f"{where}.coef", n),
        intercept=_number(doc, "intercept", f"{where}.intercept"),
        lead_by_feature=lead_by,
    )


def _mapping(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ModelFormatError(f"{where}: expected an object")
    return value


def _strings(doc: Mapping[str, Any], key: str, where: str) -> Sequence[str]:
    value = doc.get(key)
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ModelFormatError(f"{where}: expected a list of strings")
    return value


def _finite(value: object, where: str) -> float:
    # bool is an int to Python, but `true` where a coefficient belongs is a broken file.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ModelFormatError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _number(doc: Mapping[str, Any], key: str, where: str) -> float:
    return _finite(doc.get(key), where)


def _numbers(doc: Mapping[str, Any], key: str, where: str, n: int) -> tuple[float, ...]:
    value = doc.get(key)
    if not isinstance(value, list) or len(value) != n:
        raise ModelFormatError(f"{where}: expected {n} numbers")
    return tuple(_finite(v, f"{where}[{j}]") for j, v in enumerate(value))
