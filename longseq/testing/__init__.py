"""The Mixer contract, runnable by anyone: ``check_mixer(name, **hypers)`` returns a report of every failure."""

from longseq.testing.report import ContractReport, Outcome, check_mixer

__all__ = ["ContractReport", "Outcome", "check_mixer"]
