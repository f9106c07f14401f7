"""Tuning against forgetting in the report: what the fronts say, in words and as a figure
(tunelab.tradeoff chose; this only shows tuning.json and the trials' records)."""

from __future__ import annotations

from tunelab.results import TuningSummary


def text(t: TuningSummary) -> str:
    """The sentence the Tuning section adds: how forgetting was used, each method's front and
    whether its best is within the limit ("" when tuning did not use forgetting)."""
    if not t.forgetting:
        return ""
    scale, unit = (1, "") if t.metric == "loss" else (100, "%")
    limit = t.forgetting_limit
    how = (
        f" Tuned against forgetting ({t.forgetting}; nats/token on the general-text sample, "
        f"measured at each trial's end; the race was off): each method's best is its best "
        f"validation {t.metric}" + (f" among trials that forget at most {limit:g}" if
                                    limit is not None else "") + "."
    )  # fmt: skip
    parts = []
    for method, m in t.methods.items():
        pts = ", ".join(
            f"trial {p['trial']} ({scale * p['value']:.4g}{unit}, {p['forgetting']:+.3g})"
            for p in m.front
        )
        chosen = next((p for p in m.front if p["trial"] == m.best_trial), None)
        over = limit is not None and chosen is not None and chosen["forgetting"] > limit
        note = f"; no trial within the limit: trial {m.best_trial} forgets least" if over else ""
        parts.append(f"{method}: {pts or 'no finished trial'}{note}")
    return (
        how
        + " Pareto fronts (validation, forgetting), least forgetting first: "
        + ("; ".join(parts) + ".")
    )


CAPTION = (
    "Validation score against forgetting, one point per finished trial (the tuning subset); "
    "lines: each method's Pareto front (nothing both better and forgets less)."
)
