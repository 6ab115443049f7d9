"""Forecaster vs the handed-down baseline on simulated fleets, and scoring throughput.

    python benchmarks/forecast.py                 # 2,000 GPUs × 90 days, evaluation seeds 1–5
    python benchmarks/forecast.py --quick         # 400 GPUs × 45 days, seeds 1–2
    python benchmarks/forecast.py --training fixed
    python benchmarks/forecast.py --fit-default   # refit DEFAULT_MODEL on seeds 1001–1024 (~20 min)
    python benchmarks/forecast.py --real-data     # server level, public InfiniteHBD fault trace

Evaluation seeds (1–5 by default) and the seeds the default coefficients and both alarm
thresholds were fitted on (1001–1024) are disjoint: the simulator's generative model is
shared (that is the point of a simulator), the fleets are not.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import os
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

from gpumedic.adapters.history_csv import read_failures, read_history, write_failures, write_history
from gpumedic.backtest import (
    BacktestProtocol,
    BacktestResult,
    ScoredBacktest,
    average_precision,
    fit_fleet_model,
    pr_curve,
    score_backtest,
    training_set,
)
from gpumedic.domain.forecast import (
    DEFAULT_BASELINE,
    DEFAULT_MODEL,
    FEATURES,
    Failure,
    HazardModel,
    HistoryFrame,
    LogLinearBaseline,
    from_epoch,
    to_epoch,
)
from gpumedic.domain.forecast.frame import FIELD_INDEX, FailureClass
from gpumedic.domain.forecast.hazard import fit_hazard
from gpumedic.refit import refit_on_history
from gpumedic.sim.degradation import simulate, simulate_fleet_frame

FIT_SEEDS = tuple(range(1001, 1025))
CALIBRATION_BINS = (0.0, 0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 0.6, 1.0001)
EVAL_SEEDS = (1, 2, 3, 4, 5)
DEFAULT_MODEL_PATH = Path(__file__).resolve().parents[1] / "gpumedic/domain/forecast/default_model.py"
# Real failure data converted from public repositories is not committed here: data that comes
# from other repositories may only be placed in the steering repository's shared/ folder.
# Point GPUMEDIC_FORECAST_DATA at a folder holding calchas/ and infinitehbd/ (made with
# --convert-calchas / --convert-infinitehbd from the public originals), or put them in
# ../shared/forecast-data beside the checkout.
REAL_DATA = Path(
    os.environ.get("GPUMEDIC_FORECAST_DATA", Path(__file__).resolve().parents[2] / "shared" / "forecast-data")
)
CALCHAS = REAL_DATA / "calchas"
# Uncorrectable errors closer than this to the previous one on a server are one failure.
CALCHAS_EPISODE_GAP_HOURS = 24
# Calchas's published 0.33 / 0.57 (their prediction/prediction_performance.py): row-level
# precision and recall of a random forest on the last 30% of the feature rows, after random
# down-sampling of the negatives to 20 per positive.
CALCHAS_NEGATIVES_PER_POSITIVE = 20
CALCHAS_TEST_FRACTION = 0.3
CALCHAS_RECALL = 0.57
CALCHAS_PRECISION = 0.33
INFINITEHBD = REAL_DATA / "infinitehbd"
# The trace's times are days after its first event; the README dates it from 2024-03-30.
INFINITEHBD_START = datetime(2024, 3, 30, tzinfo=UTC)
INFINITEHBD_SERVERS = 400  # the README: 400 servers, 231 of which appear in the trace


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _fmt(v: float, digits: int = 3) -> str:
    return "  n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _f1(p: float, r: float) -> float:
    if math.isnan(p) or math.isnan(r) or p + r == 0:
        return 0.0
    return 2 * p * r / (p + r)


# --------------------------------------------------------------------------------------
# Fitting the shipped defaults
# --------------------------------------------------------------------------------------


def seed_list(seeds: tuple[int, ...]) -> str:
    """`1001–1024` for a run of consecutive seeds, else the seeds one by one."""
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[0] + len(seeds))):
        return f"{seeds[0]}–{seeds[-1]}"
    return ", ".join(map(str, seeds))


def fit_default(seeds: tuple[int, ...], gpus: int, days: int, write: bool) -> HazardModel:
    protocol = BacktestProtocol(train_every_hours=6, training="fixed")
    xs, kinds, ttfs, fleets = [], [], [], []
    for seed in seeds:
        t0 = time.perf_counter()
        frame, failures = simulate_fleet_frame(gpus, days, seed)
        rows = training_set(frame, failures, protocol)
        xs.append(rows.x)
        kinds.append(rows.kinds())
        ttfs.append(rows.time_to_failure)
        fleets.append((frame, failures))
        log(f"fit seed {seed}: {len(failures)} failures, {len(rows.y)} rows ({time.perf_counter() - t0:.1f} s)")
    t0 = time.perf_counter()
    model = fit_hazard(
        np.concatenate(xs),
        np.concatenate(kinds),
        FEATURES,
        lead_hours=float(protocol.lead_h),
        horizon_hours=float(protocol.horizon_h),
        prior_precision=1.0,
        time_to_failure=np.concatenate(ttfs),
        note=(
            f"fitted by benchmarks/forecast.py --fit-default on simulated fleets (seeds "
            f"{seed_list(seeds)}; {gpus} GPUs x {days} days each); lead 24 h, horizon 7 days"
        ),
    )
    log(f"fitted hazard model in {time.perf_counter() - t0:.1f} s")

    # The alarm threshold maximises F1 (precision vs recall on the precursor classes)
    # on the fitting seeds, under the protocol, with the coefficients fixed.
    scored = [score_backtest(f, fl, protocol, model=model) for f, fl in fleets]
    candidates = [round(x, 2) for x in np.arange(0.05, 0.96, 0.05)]
    best_thr = max(candidates, key=lambda thr: _pooled(scored, threshold=thr)[0])
    target_recall = _pooled(scored, threshold=best_thr)[2]
    # The baseline's precision is so low at every threshold that its own F1 peaks where it
    # alarms almost never. It is compared at equal recall instead: the threshold whose
    # precursor-class recall on the fitting seeds is nearest the forecaster's (ties: the
    # more precise), which is the kinder of the two readings for it.
    base_candidates = [10.0 * 2**i for i in range(18)]  # 10 .. 1.3e6 correctable errors
    stats = {T: _pooled(scored, baseline=LogLinearBaseline(threshold=T), which="baseline") for T in base_candidates}
    best_base = min(base_candidates, key=lambda T: (abs(stats[T][2] - target_recall), -stats[T][1]))
    log(
        f"alarm threshold {best_thr} (precursor recall {target_recall:.3f}); "
        f"baseline threshold {best_base:g} correctable errors (recall {stats[best_base][2]:.3f}, "
        f"precision {stats[best_base][1]:.3f})"
    )
    model = model.with_threshold(best_thr)
    if write:
        DEFAULT_MODEL_PATH.write_text(_render(model, best_base, seeds))
        log(f"wrote {DEFAULT_MODEL_PATH}")
    return model


def _pooled(
    scored: list[ScoredBacktest],
    *,
    threshold: float | None = None,
    baseline: LogLinearBaseline = DEFAULT_BASELINE,
    which: str = "forecaster",
) -> tuple[float, float, float]:
    """(F1, precision, precursor-class recall) pooled over fleets."""
    alarms = true = caught = failures = 0
    for s in scored:
        r = s.evaluate(threshold=threshold, baseline=baseline)
        m = r.forecaster if which == "forecaster" else r.baseline
        alarms += m.alarms
        true += 0 if math.isnan(m.precision) else round(m.precision * m.alarms)
        pre = [c for c in r.by_class if c.has_precursor]
        caught += sum(c.caught_forecaster if which == "forecaster" else c.caught_baseline for c in pre)
        failures += sum(c.failures for c in pre)
    precision = true / alarms if alarms else math.nan
    recall = caught / failures if failures else math.nan
    return _f1(precision, recall), precision, recall


def _render(model: HazardModel, baseline_threshold: float, seeds: tuple[int, ...]) -> str:
    def tup(values: tuple[float, ...] | tuple[str, ...]) -> str:
        items = [repr(v) if isinstance(v, str) else _num(v) for v in values]
        if not items:
            return "()"
        if len(items) == 1:
            return f"({items[0]},)"
        lines, line = [], ""
        for item in items:
            if line and len(line) + len(item) > 80:
                lines.append(line.rstrip())
                line = ""
            line += item + ", "
        lines.append(line.rstrip())
        pad = " " * 16
        return "(\n" + "".join(f"{pad}{ln}\n" for ln in lines) + " " * 12 + ")"

    causes = []
    for c in model.causes:
        causes.append(
            "        CauseModel(\n"
            f"            name={c.name!r},\n"
            f"            kinds={tup(c.kinds)},\n"
            f"            features={tup(c.features)},\n"
            f"            mean={tup(c.mean)},\n"
            f"            scale={tup(c.scale)},\n"
            f"            coef={tup(c.coef)},\n"
            f"            intercept={_num(c.intercept)},\n"
            f"            lead_by_feature={tup(c.lead_by_feature)},\n"
            "        ),\n"
        )
    return (
        '"""The shipped hazard model and baseline threshold. GENERATED: do not edit by hand.\n\n'
        "Regenerate with `python benchmarks/forecast.py --fit-default`. Fitted on simulated\n"
        f"fleets (gpumedic.sim.degradation, seeds {seed_list(seeds)}), disjoint from the\n"
        "benchmark's evaluation seeds. The alarm threshold and the baseline's fixed threshold\n"
        "were chosen on those fitting seeds under the backtest protocol (lead 24 h, horizon\n"
        "7 days): the alarm threshold maximises F1 (precision vs recall on the precursor\n"
        "classes); the baseline's is the one whose recall is nearest the forecaster's.\n"
        '"""\n\n'
        "from __future__ import annotations\n\n"
        "from gpumedic.domain.forecast.features import FEATURES\n"
        "from gpumedic.domain.forecast.hazard import CauseModel, HazardModel\n\n"
        'nan = float("nan")\n\n'
        f"DEFAULT_BASELINE_THRESHOLD = {_num(baseline_threshold)}\n\n"
        "DEFAULT_MODEL = HazardModel(\n"
        "    features=FEATURES,\n"
        "    causes=(\n" + "".join(causes) + "    ),\n"
        f"    lead_hours={_num(model.lead_hours)},\n"
        f"    horizon_hours={_num(model.horizon_hours)},\n"
        f"    alarm_threshold={_num(model.alarm_threshold)},\n"
        f"    note=(\n{_wrap_str(model.note)}    ),\n"
        ")\n"
    )


def _wrap_str(text: str) -> str:
    words, lines, line = text.split(" "), [], ""
    for w in words:
        if line and len(line) + len(w) > 80:
            lines.append(line)
            line = ""
        line += w + " "
    lines.append(line.rstrip())
    return "".join(f"        {ln!r}\n" for ln in lines)


def _num(v: float) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    return repr(round(float(v), 6))


# --------------------------------------------------------------------------------------
# Evaluation
# --------------------------------------------------------------------------------------


def evaluate(seeds: tuple[int, ...], gpus: int, days: int, trainings: list[str]) -> None:
    header = (
        f"{'seed':>5} {'training':>12} {'who':>10} {'prec':>6} {'recall':>6} {'pre-rec':>7} {'pr_auc':>7} "
        f"{'alarms':>6} {'caught':>9} {'lead50':>7} {'lead10':>7}"
    )
    print(f"simulated fleets: {gpus} GPUs x {days} days, evaluation seeds {', '.join(map(str, seeds))}")
    print(f"default model: {DEFAULT_MODEL.note}")
    print(header)
    pooled: dict[tuple[str, str], list[BacktestResult]] = {}
    throughput: dict[str, list[float]] = {}
    ceilings: dict[str, list[int]] = {}  # training -> [precursor failures, foreseeable, caught of those]
    # training -> per risk bin: [GPU-hours, sum of risk, positive GPU-hours, failing in [t, t + lead + horizon]]
    calibration: dict[str, np.ndarray] = {}
    for seed in seeds:
        t0 = time.perf_counter()
        sim = simulate(gpus, days, seed)
        frame, failures = sim.frame, sim.failures
        log(f"seed {seed}: simulated {len(frame):,} rows, {len(failures)} failures in {time.perf_counter() - t0:.1f} s")
        for training in trainings:
            protocol = BacktestProtocol(training=training)  # type: ignore[arg-type]
            t0 = time.perf_counter()
            scored = score_backtest(frame, failures, protocol)
            result = scored.evaluate()
            elapsed = time.perf_counter() - t0
            throughput.setdefault(training, []).append(len(scored.entities) / elapsed)
            log(f"seed {seed} {training}: backtest in {elapsed:.1f} s")
            for who, m, pre in (
                ("forecaster", result.forecaster, result.precursor_recall("forecaster")),
                ("baseline", result.baseline, result.precursor_recall("baseline")),
            ):
                print(
                    f"{seed:>5} {training:>12} {who:>10} {_fmt(m.precision):>6} {_fmt(m.recall):>6} "
                    f"{_fmt(pre):>7} {_fmt(m.pr_auc):>7} {m.alarms:>6} {f'{m.caught}/{m.failures}':>9} "
                    f"{_fmt(m.lead_hours_median, 0):>7} {_fmt(m.lead_hours_p10, 0):>7}"
                )
            pooled.setdefault((training, "all"), []).append(result)
            cal = calibration.setdefault(training, np.zeros((len(CALIBRATION_BINS) - 1, 4)))
            which = np.clip(np.searchsorted(CALIBRATION_BINS, scored.risk.ravel(), side="right") - 1, 0, len(cal) - 1)
            cal[:, 0] += np.bincount(which, minlength=len(cal))
            cal[:, 1] += np.bincount(which, weights=scored.risk.ravel().astype(np.float64), minlength=len(cal))
            cal[:, 2] += np.bincount(which, weights=scored.labels.ravel().astype(np.float64), minlength=len(cal))
            soon = scored.labels_for(lead_hours=0, horizon_hours=protocol.lead_h + protocol.horizon_h)
            cal[:, 3] += np.bincount(which, weights=soon.ravel().astype(np.float64), minlength=len(cal))
            acc = ceilings.setdefault(training, [0, 0, 0])
            counted, caught = scored.caught()
            for f, c, k in zip(sorted(failures, key=lambda f: f.time), counted, caught, strict=True):
                if not c or not FailureClass(f.kind).has_precursor:
                    continue
                foreseen = sim.truth[f].foreseeable(float(protocol.lead_h))
                acc[0] += 1
                acc[1] += foreseen
                acc[2] += bool(foreseen and k)
    print()
    for training in trainings:
        results = pooled[(training, "all")]
        for who in ("forecaster", "baseline"):
            ms = [getattr(r, who) for r in results]
            alarms = sum(m.alarms for m in ms)
            true = sum(0 if math.isnan(m.precision) else round(m.precision * m.alarms) for m in ms)
            caught = sum(m.caught for m in ms)
            fails = sum(m.failures for m in ms)
            classes = [c for r in results for c in r.by_class if c.has_precursor]
            pre_caught = sum(c.caught_forecaster if who == "forecaster" else c.caught_baseline for c in classes)
            pre_fail = sum(c.failures for c in classes)
            print(
                f"{'pooled':>5} {training:>12} {who:>10} {_fmt(true / alarms if alarms else math.nan):>6} "
                f"{_fmt(caught / fails if fails else math.nan):>6} "
                f"{_fmt(pre_caught / pre_fail if pre_fail else math.nan):>7} "
                f"{_fmt(float(np.mean([m.pr_auc for m in ms]))):>7} {alarms:>6} {f'{caught}/{fails}':>9} "
                f"{_fmt(float(np.nanmean([m.lead_hours_median for m in ms])), 0):>7} "
                f"{_fmt(float(np.nanmean([m.lead_hours_p10 for m in ms])), 0):>7}"
            )
        for who in ("forecaster", "baseline"):
            late, early, never = (sum(getattr(getattr(r, who).false_alarms, k) for r in results)
                                  for k in ("too_late", "too_early", "no_failure"))
            print(
                f"  false alarms ({training}, {who}): {late + early + never}: {late} on GPUs that failed within the "
                f"lead (true warnings, too late to count), {early} on GPUs that failed after the window, {never} on "
                "GPUs that did not fail"
            )
        by_kind: dict[str, list[int]] = {}
        for r in results:
            for c in r.by_class:
                acc = by_kind.setdefault(c.kind, [0, 0, 0])
                acc[0] += c.failures
                acc[1] += c.caught_forecaster
                acc[2] += c.caught_baseline
        print(
            f"  recall by class ({training}): "
            + ", ".join(f"{k} {v[1]}/{v[0]} (baseline {v[2]})" for k, v in sorted(by_kind.items()))
        )
        total, seeable, caught_seeable = ceilings[training]
        print(
            f"  ceiling ({training}): {seeable}/{total} precursor-class failures "
            f"({_fmt(seeable / total if total else math.nan)}) had a full precursor that began at least the lead "
            f"before them (the simulator's ground truth: a forecaster catches the others only by chance); "
            f"the forecaster caught {caught_seeable}/{seeable} of those "
            f"({_fmt(caught_seeable / seeable if seeable else math.nan)})"
        )
    print(f"\nprevalence (mean): {np.mean([r.prevalence for rs in pooled.values() for r in rs]):.5f}")
    for training, cal in calibration.items():
        print(
            f"calibration ({training}): mean predicted risk against the observed rate of failure, all GPU-hours, "
            "in the backtest's window [t + lead, t + lead + horizon] and from now [t, t + lead + horizon]"
        )
        print(f"  {'risk bin':>13} {'GPU-hours':>11} {'mean risk':>10} {'[t+lead, ..]':>13} {'[t, ..]':>8}")
        for (lo, hi), (n, risk_sum, pos, soon) in zip(itertools.pairwise(CALIBRATION_BINS), cal.tolist(), strict=True):
            if n:
                label = f"[{lo:g}, {hi:g})"
                print(f"  {label:>13} {n:>11,.0f} {risk_sum / n:>10.4f} {pos / n:>13.4f} {soon / n:>8.4f}")
    for training, rates in throughput.items():
        print(
            f"scoring throughput ({training}): {np.mean(rates):,.0f} GPU-histories/s "
            f"({days}-day hourly histories: features, fits, both scorers and metrics; one process)"
        )


# --------------------------------------------------------------------------------------
# Real failure data: the InfiniteHBD fault trace (server level, no telemetry)
# --------------------------------------------------------------------------------------


def convert_calchas(raw: Path, out: Path = CALCHAS) -> None:
    """Calchas' open HBM error log (`dataset(opensource).csv`, Mulan PSL v2) → HISTORY + FAILURES.

    Server level, as the published 0.33 / 0.57 is: per server, the cumulative count of
    correctable errors (CE) becomes `ecc_sbe_aggregate` and of uncorrectable ones (UER,
    UEO) `ecc_dbe_aggregate`, one row per hour in which it grows. Each run of
    uncorrectable errors starting more than 24 h after the server's previous one is one
    failure (`kind` hbm) at the hour it starts, `replaced=false`: the server lives on.
    """
    import csv

    per_server: dict[str, list[tuple[int, str]]] = {}
    with raw.open(newline="") as fh:
        for r in csv.DictReader(fh):
            server = f"{r['Datacenter']}/{r['Server']}"
            per_server.setdefault(server, []).append((int(r["Time"]), r["EccType"].strip()))
    keys: list[tuple[str, int | None]] = []
    times: list[int] = []
    kidx: list[int] = []
    fields: list[int] = []
    values: list[float] = []
    failures: list[Failure] = []
    for server in sorted(per_server):
        k = len(keys)
        keys.append((server, None))
        events = sorted(per_server[server])
        for name, types in (("ecc_sbe_aggregate", {"CE"}), ("ecc_dbe_aggregate", {"UER", "UEO"})):
            hours = sorted({t // 3600 for t, e in events if e in types})
            counts = {h: sum(1 for t, e in events if e in types and t // 3600 == h) for h in hours}
            total = 0
            for h in hours:
                total += counts[h]
                times.append(h * 3600)
                kidx.append(k)
                fields.append(FIELD_INDEX[name])
                values.append(float(total))
        last_ue = None
        for t, e in events:
            if e in ("UER", "UEO"):
                if last_ue is None or t - last_ue > CALCHAS_EPISODE_GAP_HOURS * 3600:
                    # Not a replacement: 80 of the 118 episodes are repeats on the same servers.
                    failures.append(Failure(from_epoch(t // 3600 * 3600), server, None, "hbm", replaced=False))
                last_ue = t
    frame = HistoryFrame.build(keys, times, kidx, fields, values)
    out.mkdir(parents=True, exist_ok=True)
    write_history(out / "HISTORY.csv", frame)
    write_failures(out / "FAILURES.csv", failures)
    log(f"{len(per_server)} servers, {len(frame)} history rows, {len(failures)} failures")


def convert_infinitehbd(trace: Path, out: Path = INFINITEHBD) -> None:
    """fault_trace.json (stepfun-ai/InfiniteHBD-Trace, Apache-2.0) → FAILURES.csv + NODES.txt.

    Every `fault_start` of class GPU (hardware) is a node-level failure whose kind is the
    trace's description; NODES.txt lists every server the trace names (any fault class).
    """
    events = json.loads(trace.read_text())
    nodes = sorted({e["node_id"] for e in events})
    failures = [
        Failure(
            time=INFINITEHBD_START + timedelta(days=float(e["event_time"])),
            node=e["node_id"],
            gpu=None,
            kind=f"GPU: {e['fault_type']['Desc']}",
            replaced=False,  # the server, not the failed part, is what is scored, and it stays
        )
        for e in events
        if e["event_type"] == "fault_start" and e["fault_type"]["Class"] == "GPU"
    ]
    last = max(float(e["event_time"]) for e in events)
    out.mkdir(parents=True, exist_ok=True)
    write_failures(out / "FAILURES.csv", failures)
    (out / "NODES.txt").write_text("".join(f"{n}\n" for n in nodes))
    log(
        f"{len(failures)} GPU faults on {len({f.node for f in failures})} of {len(nodes)} servers; "
        f"trace spans {last:.1f} days"
    )


def precision_in_calchas_units(scored: ScoredBacktest, recall: float = CALCHAS_RECALL) -> tuple[float, float]:
    """(precision, threshold) where the forecaster's row-level recall first reaches `recall`,
    counted as Calchas counts: the scored server-hours of the last 30% of the timeline, each
    negative weighted so that negatives weigh 20 positives' worth (the expected effect of their
    random down-sampling, without its randomness)."""
    k0 = int(scored.k_scored * (1 - CALCHAS_TEST_FRACTION))
    labels = scored.labels[:, k0:].ravel()
    risk = scored.risk[:, k0:].ravel()
    positives, negatives = int(labels.sum()), int((~labels).sum())
    if positives == 0:
        return math.nan, math.nan
    weight = min(1.0, CALCHAS_NEGATIVES_PER_POSITIVE * positives / max(negatives, 1))
    thresholds, tp, fp = pr_curve(risk, labels)
    i = int(np.searchsorted(tp / positives, recall))
    return float(tp[i] / (tp[i] + weight * fp[i])), float(thresholds[i])


def _print_thresholds(name: str, scored: ScoredBacktest, thresholds: tuple[float | None, ...]) -> BacktestResult:
    """One row of the forecaster's figures per alarm threshold (None: the model's); the last result."""
    for threshold in thresholds:
        result = scored.evaluate(threshold=threshold)
        m = result.forecaster
        label = f"{name} @{_fmt(threshold or DEFAULT_MODEL.alarm_threshold, 2)}"
        print(
            f"{label:>32} {_fmt(m.precision):>6} {_fmt(m.recall):>6} {_fmt(m.pr_auc):>7} {m.alarms:>6} "
            f"{f'{m.caught}/{m.failures}':>9} {result.prevalence:>10.5f}"
        )
    return result


def evaluate_calchas(lead_hours: float = 24.0, horizon_days: float = 7.0) -> None:
    frame = read_history(CALCHAS / "HISTORY.csv")
    failures = read_failures(CALCHAS / "FAILURES.csv")
    print(
        f"Calchas HBM error log: {len(failures)} uncorrectable-error failures on {len(frame.keys)} servers, "
        f"server level, lead {lead_hours:g} h, horizon {horizon_days:g} days"
    )
    print(
        f"{'training @ threshold':>32} {'prec':>6} {'recall':>6} {'pr_auc':>7} {'alarms':>6} {'caught':>9} "
        f"{'prevalence':>10}"
    )
    for name, training, pp in (
        ("fixed (sim default)", "fixed", 100.0),
        ("walk-forward, weak prior", "walk-forward", 1.0),
    ):
        protocol = BacktestProtocol(
            lead=timedelta(hours=lead_hours),
            horizon=timedelta(days=horizon_days),
            training=training,  # type: ignore[arg-type]
            prior_precision=pp,
            min_train_failures=5,
        )
        scored = score_backtest(frame, failures, protocol)
        result = _print_thresholds(name, scored, (None, 0.5, 0.3, 0.2, 0.1))
        b = result.baseline
        print(
            f"{'baseline (log-linear CE)':>32} {_fmt(b.precision):>6} {_fmt(b.recall):>6} {_fmt(b.pr_auc):>7} "
            f"{b.alarms:>6} {f'{b.caught}/{b.failures}':>9}"
        )
    _fit_once_then_hold_out(frame, failures, lead_hours, horizon_days)
    # The same forecaster counted the way the published figure was. Their prediction window
    # is not stated with the figure (their code has 1-hour, 1-day and 30-day variants) and
    # no lead is mentioned: our protocol's window and a 1-day window with no lead are shown.
    print(
        f"in Calchas's units: row-level server-hours of the last {CALCHAS_TEST_FRACTION:.0%} of the timeline, "
        f"negatives weighted to {CALCHAS_NEGATIVES_PER_POSITIVE} per positive as their down-sampling does; "
        f"precision where recall first reaches {CALCHAS_RECALL} (published: {CALCHAS_PRECISION} at {CALCHAS_RECALL}); "
        "walk-forward, weak prior"
    )
    for lead, horizon in (
        (timedelta(hours=lead_hours), timedelta(days=horizon_days)),
        (timedelta(0), timedelta(days=1)),
    ):
        protocol = BacktestProtocol(
            lead=lead, horizon=horizon, training="walk-forward", prior_precision=1.0, min_train_failures=5
        )
        precision, threshold = precision_in_calchas_units(score_backtest(frame, failures, protocol))
        window = f"lead {lead.total_seconds() / 3600:g} h, window {horizon.total_seconds() / 86400:g} d"
        print(f"{window:>32} precision {_fmt(precision)} at risk >= {_fmt(threshold)}")


def _fit_once_then_hold_out(
    frame: HistoryFrame, failures: list[Failure], lead_hours: float, horizon_days: float
) -> None:
    """What an operator gets from `gpumedic forecast fit --until T` and the fitted model used as is
    from T on, against the shipped model and weekly walk-forward refits, on the hours after T only."""
    window = BacktestProtocol(
        lead=timedelta(hours=lead_hours), horizon=timedelta(days=horizon_days), min_train_failures=5
    )
    fixed = replace(window, training="fixed")
    shipped = score_backtest(frame, failures, fixed)
    hour = int(shipped.k_scored * (1 - CALCHAS_TEST_FRACTION))
    until = from_epoch(shipped.grid.instant(hour))
    print(
        f"held out: the last {CALCHAS_TEST_FRACTION:.0%} of the timeline (from {until:%Y-%m-%d}, prevalence "
        f"{shipped.pr_auc_from(hour)[1]:.4f}); PR-AUC on those hours only"
    )
    print(f"{'shipped model':>32} {_fmt(shipped.pr_auc_from(hour)[0])}")
    for precision in (1.0, 100.0, 1000.0):
        weak = replace(window, prior_precision=precision)
        fit = fit_fleet_model(frame, failures, weak, until=until)
        once = score_backtest(frame, failures, fixed, model=fit.model).pr_auc_from(hour)[0]
        weekly = score_backtest(frame, failures, weak).pr_auc_from(hour)[0]
        print(
            f"{f'prior precision {precision:g}':>32} fitted once at the split {_fmt(once)}, "
            f"walk-forward (refit weekly) {_fmt(weekly)}"
        )
    _weekly_refit_as_the_flow_does(frame, failures, window, hour)


def _weekly_refit_as_the_flow_does(
    frame: HistoryFrame, failures: list[Failure], window: BacktestProtocol, hour: int, history_days: float = 180.0,
    check_days: float = 28.0,
) -> None:
    """The weekly refit flow replayed on the held-out hours: every 7 days from the split,
    `refit_on_history` at that instant on the last `history_days` of history and incidents (it uses
    nothing after the instant, as if the store ended there), adopting only what passes its check; the
    model it leaves in use scores the next week's hours. PR-AUC over all held-out hours, as above."""
    fixed = replace(window, training="fixed")
    shipped = score_backtest(frame, failures, fixed)
    for precision in (1.0, 100.0, 1000.0):
        protocol = replace(window, prior_precision=precision)
        risk, in_use_risk, adopted, weeks = shipped.risk.copy(), shipped.risk, 0, 0
        for week_start in range(hour, shipped.k_scored, 7 * 24):
            now = from_epoch(shipped.grid.instant(week_start))
            t, since = to_epoch(now), to_epoch(now - timedelta(days=history_days))
            known = [f for f in failures if since <= to_epoch(f.time) <= t]
            outcome = refit_on_history(frame.since(since), known, now, check_days=check_days, protocol=protocol)
            weeks += 1
            if outcome.adopted is not None:
                adopted += 1
                in_use_risk = score_backtest(frame, failures, fixed, model=outcome.adopted).risk
            week = slice(week_start, min(week_start + 7 * 24, shipped.k_scored))
            risk[:, week] = in_use_risk[:, week]
        pr_auc = average_precision(risk[:, hour:].ravel(), shipped.labels[:, hour:].ravel())
        print(
            f"{f'prior precision {precision:g}':>32} the weekly refit flow (check {check_days:g} d, history "
            f"{history_days:g} d): adopted {adopted} of {weeks} weeks, PR-AUC {_fmt(pr_auc)}"
        )


def evaluate_real(lead_hours: float = 24.0, horizon_days: float = 7.0) -> None:
    missing = [d for d in (CALCHAS, INFINITEHBD) if not (d / "FAILURES.csv").is_file()]
    if missing:
        raise SystemExit(
            f"real failure data not found in {', '.join(map(str, missing))}: set GPUMEDIC_FORECAST_DATA to a folder "
            "with calchas/ and infinitehbd/ converted by --convert-calchas / --convert-infinitehbd"
        )
    evaluate_calchas(lead_hours, horizon_days)
    print()
    failures = read_failures(INFINITEHBD / "FAILURES.csv")
    named = [ln.strip() for ln in (INFINITEHBD / "NODES.txt").read_text().splitlines() if ln.strip()]
    # Servers the trace never names had no fault: they exist (README), with no evidence.
    quiet = [f"quiet-{i:03d}" for i in range(INFINITEHBD_SERVERS - len(named))]
    roster = [(n, None) for n in named + quiet]
    last = max(f.time for f in failures)
    span = (INFINITEHBD_START, last + timedelta(days=1))
    print(
        f"InfiniteHBD trace: {len(failures)} GPU faults, {len(roster)} servers, server level, "
        f"lead {lead_hours:g} h, horizon {horizon_days:g} days; no telemetry: prior incidents only"
    )
    print(
        f"{'training @ threshold':>32} {'prec':>6} {'recall':>6} {'pr_auc':>7} {'alarms':>6} {'caught':>9} "
        f"{'prevalence':>10}"
    )
    for name, protocol in (
        ("fixed (sim default)", BacktestProtocol(training="fixed")),
        ("walk-forward, weak prior", BacktestProtocol(prior_precision=1.0)),
    ):
        protocol = BacktestProtocol(
            lead=timedelta(hours=lead_hours),
            horizon=timedelta(days=horizon_days),
            training=protocol.training,
            prior_precision=protocol.prior_precision,
            min_train_failures=10,
        )
        scored = score_backtest(HistoryFrame.empty(), failures, protocol, roster=roster, span=span)
        # The simulator-fitted alarm threshold, then lower ones: a fleet with no telemetry
        # only ever reaches the risk its own fault history implies.
        _print_thresholds(name, scored, (None, 0.3, 0.2, 0.1, 0.05))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gpus", type=int, default=2000)
    ap.add_argument("--days", type=int, default=90)
    ap.add_argument("--seeds", default=",".join(map(str, EVAL_SEEDS)))
    ap.add_argument("--training", choices=["walk-forward", "fixed", "both"], default="both")
    ap.add_argument("--quick", action="store_true", help="400 GPUs x 45 days, seeds 1-2")
    ap.add_argument("--fit-default", action="store_true", help="refit and rewrite the shipped default model")
    ap.add_argument("--fit-seeds", default=",".join(map(str, FIT_SEEDS)))
    ap.add_argument("--fit-days", type=int, default=120)
    ap.add_argument("--dry-run", action="store_true", help="with --fit-default: print, do not write")
    ap.add_argument("--real-data", action="store_true", help="server-level backtest on the InfiniteHBD trace")
    ap.add_argument("--convert-infinitehbd", metavar="FAULT_TRACE_JSON", type=Path)
    ap.add_argument("--convert-calchas", metavar="DATASET_OPENSOURCE_CSV", type=Path)
    args = ap.parse_args(argv)
    if args.convert_calchas:
        convert_calchas(args.convert_calchas)
        return 0
    if args.convert_infinitehbd:
        convert_infinitehbd(args.convert_infinitehbd)
        return 0
    if args.real_data:
        evaluate_real()
        return 0
    if args.fit_default:
        fit_seeds = tuple(int(s) for s in args.fit_seeds.split(","))
        model = fit_default(fit_seeds, args.gpus, args.fit_days, write=not args.dry_run)
        if args.dry_run:
            print(_render(model, DEFAULT_BASELINE.threshold, fit_seeds))
        return 0
    seeds = tuple(int(s) for s in args.seeds.split(","))
    gpus, days = args.gpus, args.days
    if args.quick:
        gpus, days, seeds = 400, 45, (1, 2)
    if set(seeds) & set(int(s) for s in args.fit_seeds.split(",")):
        log("warning: evaluation seeds overlap the default model's fitting seeds")
    trainings = ["walk-forward", "fixed"] if args.training == "both" else [args.training]
    evaluate(seeds, gpus, days, trainings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
