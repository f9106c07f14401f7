"""Racing methods in a tune: after each round (one trial per method still racing), a method
whose best validation accuracy is behind the leader's by more than the noise of the tuning
subset stops receiving trials. Noise: each best's 95% Wilson interval over the validation
examples it was scored on; a method is out only when its interval's top is below the
leader's bottom. Nobody is judged before ``after`` finished trials (the sampler's random
start-up), and the methods still racing keep equal budgets: the fairness claim holds for
them, and the report says what each method got and why a method stopped."""

from __future__ import annotations

from dataclasses import dataclass

from tunelab.report.stats import binomial


@dataclass
class Standing:
    method: str
    best: float
    """Best validation accuracy so far (0 to 1)."""
    n: int
    """Validation examples that accuracy was measured on."""
    trials: int
    """Finished trials (complete, pruned or failed), or the method's bracket."""
    at: str = ""
    """Where it stands, for the message (e.g. "at rung 1 (validation 1 of 9)"); default: after
    its trials."""


def out_of_race(standings: list[Standing], after: int) -> dict[str, str]:
    """Method -> why it stops: behind the leader outside noise, with ``after`` trials done."""
    ready = [s for s in standings if s.trials >= after and s.n > 0]
    if len(ready) < 2:
        return {}
    lead = max(ready, key=lambda s: s.best)
    top = binomial(100 * lead.best, lead.n)
    out = {}
    for s in ready:
        est = binomial(100 * s.best, s.n)
        if s is not lead and est.high < top.low:
            where = s.at or f"after {s.trials} trials"
            out[s.method] = (
                f"stopped {where}: best {est.mean:.1f}% (95% interval up to "
                f"{est.high:.1f}%) vs the leader {lead.method} {top.mean:.1f}% (from "
                f"{top.low:.1f}%), outside noise on {s.n} validation examples"
            )
    return out
