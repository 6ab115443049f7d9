"""A hazard model survives JSON unchanged, and a document it cannot score with is refused by name."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from gpumedic.domain.forecast import DEFAULT_MODEL, FEATURES
from gpumedic.domain.forecast.model_codec import MODEL_FORMAT, ModelFormatError, model_from_dict, model_to_dict


def _round_trip() -> dict[str, Any]:
    return json.loads(json.dumps(model_to_dict(DEFAULT_MODEL), allow_nan=False))


def test_a_model_read_back_scores_and_explains_exactly_as_the_original() -> None:
    back = model_from_dict(_round_trip())
    rng = np.random.default_rng(3)
    x = rng.exponential(1.0, size=(len(FEATURES), 500)) * (rng.random((len(FEATURES), 500)) < 0.3)
    assert np.array_equal(back.risk(x), DEFAULT_MODEL.risk(x))
    assert np.array_equal(back.risk(x, 72.0), DEFAULT_MODEL.risk(x, 72.0))
    for i in range(20):
        assert _same_with_nan(back.explain(x[:, i]), DEFAULT_MODEL.explain(x[:, i]))
    assert (back.alarm_threshold, back.lead_hours, back.horizon_hours, back.note) == (
        DEFAULT_MODEL.alarm_threshold,
        DEFAULT_MODEL.lead_hours,
        DEFAULT_MODEL.horizon_hours,
        DEFAULT_MODEL.note,
    )


def _same_with_nan(a: list[tuple[float, str, str, float]], b: list[tuple[float, str, str, float]]) -> bool:
    return len(a) == len(b) and all(
        ra[:3] == rb[:3] and (ra[3] == rb[3] or (math.isnan(ra[3]) and math.isnan(rb[3])))
        for ra, rb in zip(a, b, strict=True)
    )


def test_unknown_lead_times_are_written_as_null_so_the_file_is_strict_json() -> None:
    doc = model_to_dict(DEFAULT_MODEL)
    leads = [v for c in doc["causes"] for v in c["lead_by_feature"]]
    assert None in leads  # the shipped model has features too rare for a lead-time estimate
    json.dumps(doc, allow_nan=False)  # raises on NaN


def _set(path: str, value: object) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node: Any = doc
        for p in parents:
            node = node[int(p)] if p.isdigit() else node[p]
        if last.isdigit():
            node[int(last)] = value
        else:
            node[last] = value

    return mutate


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_set("format", "gpumedic.hazard-model/0"), "format: expected"),
        (lambda d: d["features"].pop(), "missing \\['survived_incidents_180d'\\]"),
        (lambda d: d["features"].append("gpu_mood"), "unknown \\['gpu_mood'\\]"),
        (lambda d: d["features"].reverse(), "another order"),
        (_set("alarm_threshold", 1.0), "alarm_threshold 1: a probability"),
        (_set("alarm_threshold", "0.5"), "alarm_threshold: expected a finite number"),
        (_set("horizon_hours", 0), "horizon > 0"),
        (lambda d: d["causes"].pop(), "causes: expected a list of 5"),
        (_set("causes.1.name", "hbm"), "causes\\[1\\].name: expected 'nvlink'"),
        (_set("causes.0.kinds", ["hbm"]), "causes\\[0\\].kinds"),
        (_set("causes.0.coef.2", None), "causes\\[0\\].coef\\[2\\]: expected a finite number, got None"),
        (_set("causes.0.coef.2", True), "causes\\[0\\].coef\\[2\\]: expected a finite number, got True"),
        (_set("causes.2.intercept", float("inf")), "causes\\[2\\].intercept: expected a finite number"),
        (_set("causes.3.scale.0", 0.0), "causes\\[3\\].scale: every spread must be positive"),
        (lambda d: d["causes"][4]["mean"].pop(), "causes\\[4\\].mean: expected"),
        (lambda d: d["causes"][4]["lead_by_feature"].pop(), "causes\\[4\\].lead_by_feature: expected"),
        (_set("note", 7), "note: expected a string"),
    ],
)
def test_a_document_it_cannot_score_with_is_refused_naming_the_field(
    mutate: Callable[[dict[str, Any]], None], message: str
) -> None:
    doc = copy.deepcopy(_round_trip())
    mutate(doc)
    with pytest.raises(ModelFormatError, match=message):
        model_from_dict(doc)


@pytest.mark.parametrize("doc", [None, [], "model", {"format": MODEL_FORMAT}])
def test_something_that_is_not_a_model_document_is_refused(doc: object) -> None:
    with pytest.raises(ModelFormatError):
        model_from_dict(doc)
