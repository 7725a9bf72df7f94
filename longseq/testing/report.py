"""``check_mixer``: every contract check, in every supported pattern of one registered mixer, with a report of all
failures (check, pattern, message) instead of the first one. ``longseq check NAME`` prints it."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from longseq.mixers import Mixer, Pattern, build, mixer_class
from longseq.testing.contract import CHECKS, ContractCheck

D_MODEL = 16


@dataclasses.dataclass(frozen=True)
class Outcome:
    """One check in one pattern: ``status`` is "passed", "failed" or "skipped" (waived by a declaration of the
    mixer's; ``message`` says which)."""

    check: str
    pattern: Pattern
    status: str
    message: str = ""
    seconds: float = 0.0


@dataclasses.dataclass
class ContractReport:
    mixer: str
    hypers: dict[str, Any]
    outcomes: list[Outcome] = dataclasses.field(default_factory=list)

    @property
    def failures(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status == "failed"]

    @property
    def ok(self) -> bool:
        return not self.failures

    def seconds(self, pattern: Pattern | None = None) -> float:
        return sum(o.seconds for o in self.outcomes if pattern is None or o.pattern == pattern)

    def summary(self) -> str:
        """A few lines: counts and time per pattern, then one line per failure."""
        hypers = ", ".join(f"{k}={v!r}" for k, v in self.hypers.items())
        lines = [f"contract of '{self.mixer}'" + (f" [{hypers}]" if hypers else "")]
        for pattern in sorted({o.pattern for o in self.outcomes}):
            mine = [o for o in self.outcomes if o.pattern == pattern]
            count = {s: sum(o.status == s for o in mine) for s in ("passed", "failed", "skipped")}
            lines.append(f"  {pattern.value:16s} {count['passed']} passed, {count['failed']} failed, "
                         f"{count['skipped']} skipped in {self.seconds(pattern):.2f} s")
        for o in self.failures:
            lines.append(f"FAILED {o.check} [{o.pattern.value}]: {o.message}")
        lines.append("all checks passed" if self.ok else f"{len(self.failures)} check(s) failed")
        return "\n".join(lines)


def build_for_check(check: ContractCheck, name: str, hypers: dict[str, Any], pattern: Pattern) -> Mixer:
    """What every check runs on: a fresh mixer (seed 0) in float64 and eval(), d_model 16."""
    torch.manual_seed(0)
    return build(name, D_MODEL, **{**hypers, "pattern": pattern, **dict(check.build)}).double().eval()


def run_check(check: ContractCheck, name: str, hypers: dict[str, Any], pattern: Pattern) -> Outcome:
    """Run one check on a fresh mixer; any exception is a failure of that check."""
    reason = check.waived(mixer_class(name))
    if reason is not None:
        return Outcome(check.name, pattern, "skipped", reason)
    start = time.perf_counter()
    try:
        check.run(build_for_check(check, name, hypers, pattern))
    except AssertionError as e:
        return Outcome(check.name, pattern, "failed", str(e), time.perf_counter() - start)
    except Exception as e:  # a crash inside a check is a failure of that check, reported with the rest
        return Outcome(check.name, pattern, "failed", f"{type(e).__name__}: {e}", time.perf_counter() - start)
    return Outcome(check.name, pattern, "passed", seconds=time.perf_counter() - start)


def check_mixer(name: str, **hypers: Any) -> ContractReport:
    """Run every contract check on mixer ``name`` (built with d_model 16 and ``hypers``) in every pattern it
    supports with those hypers; return the report of all outcomes. Hypers the mixer refuses raise its error
    (``InvalidHyper``, ...) before any check runs: they are bad input, not a broken contract."""
    patterns = sorted(mixer_class(name).supported_patterns(**hypers))
    for pattern in patterns:
        build(name, D_MODEL, **{**hypers, "pattern": pattern})
    report = ContractReport(name, dict(hypers))
    for pattern in patterns:
        report.outcomes += [run_check(check, name, hypers, pattern) for check in CHECKS if check.patterns(pattern)]
    return report
