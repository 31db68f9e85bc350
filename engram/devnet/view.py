"""What the devnet shows: a fold of the validator's events into one row per miner (pure),
and that state as a rich table."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

from streams.events import Event, ProofVerified, RecallSampled, ScoreUpdated, WeightsProposed
from streams.events import WeightsSet as WeightsSetEvent

__all__ = ["DevnetView", "MinerRow", "render"]


@dataclass
class MinerRow:
    uid: int
    hotkey: str
    label: str  # "honest" or the adversary's kind
    axon: str
    recall: float | None = None
    latency_ms: float | None = None
    passed: int = 0
    proofs: int = 0
    score: float | None = None  # the EMA of the last ScoreUpdated
    slashed: bool = False
    reason: str = ""
    weight: float | None = None  # in the last weight set the chain accepted
    held: dict[str, bool] = field(default_factory=dict)  # cid -> last verdict passed
    recall_max: float | None = None  # the best round seen
    failures: dict[str, int] = field(default_factory=dict)  # proof failure reason -> count

    @property
    def replicas_ok(self) -> int:
        return sum(self.held.values())


@dataclass
class DevnetView:
    """Rows by uid, updated from VALIDATION and WEIGHTS events as they arrive. Epochs
    count weight sets the chain accepted that give some miner a weight (the ones before the
    first scores are all zero)."""

    rows: dict[int, MinerRow]
    proposed: dict[int, WeightsProposed] = field(default_factory=dict)
    epochs: list[int] = field(default_factory=list)
    replication: dict[str, int] = field(default_factory=dict)
    events: int = 0
    console_url: str | None = None  # the web console, when the devnet serves one

    def apply(self, event: Event) -> None:
        self.events += 1
        if isinstance(event, RecallSampled):
            if (row := self.rows.get(event.miner_uid)) is not None:
                row.recall = event.recall_at_10
                row.recall_max = max(row.recall_max or 0.0, event.recall_at_10)
                row.latency_ms = event.latency_ms
        elif isinstance(event, ProofVerified):
            if (row := self.rows.get(event.miner_uid)) is not None and not event.void:
                row.proofs += 1
                row.passed += event.passed
                row.held[event.cid] = event.passed
                if not event.passed:
                    reason = event.reason[:80]
                    row.failures[reason] = row.failures.get(reason, 0) + 1
        elif isinstance(event, ScoreUpdated):
            if (row := self.rows.get(event.miner_uid)) is not None:
                row.score, row.slashed, row.reason = event.ema, event.slashed, event.reason
        elif isinstance(event, WeightsProposed):
            self.proposed[event.epoch] = event
        elif isinstance(event, WeightsSetEvent) and event.success:
            p = self.proposed.get(event.epoch)
            if p is None or not any(w > 0 for w in p.weights) or event.epoch in self.epochs:
                return
            self.epochs.append(event.epoch)
            for uid, w in zip(p.uids, p.weights, strict=True):
                if (row := self.rows.get(uid)) is not None:
                    row.weight = w

    def weights(self) -> dict[str, dict[str, Any]]:
        """The ``weights`` object of ``--json``: uid → weight, label, hotkey, and why."""
        return {
            str(r.uid): {
                "weight": r.weight if r.weight is not None else 0.0,
                "label": r.label,
                "hotkey": r.hotkey,
                "recall": r.recall,
                "latency_ms": r.latency_ms,
                "proofs_passed": r.passed,
                "proofs": r.proofs,
                "score": r.score,
                "slashed": r.slashed,
                "recall_max": r.recall_max,
                "proof_failures": r.failures,
            }
            for r in sorted(self.rows.values(), key=lambda r: r.uid)
        }


def _num(x: float | None, fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def render(view: DevnetView, title: str = "engram devnet") -> Table:
    epoch = view.epochs[-1] if view.epochs else None
    rep = " ".join(f"{k} {v}" for k, v in view.replication.items()) or "-"
    table = Table(
        title=f"{title} · epochs {len(view.epochs)} (last {epoch if epoch is not None else '-'})",
        caption=f"replication: {rep} · events {view.events} · Ctrl-C stops"
        + (f"\nconsole: {view.console_url}" if view.console_url else ""),
    )
    for name, justify in (
        ("uid", "right"),
        ("miner", "left"),
        ("recall@10", "right"),
        ("latency ms", "right"),
        ("proofs", "right"),
        ("score", "right"),
        ("weight", "right"),
        ("replicas ok", "right"),
    ):
        table.add_column(name, justify=justify)  # type: ignore[arg-type]
    for r in sorted(view.rows.values(), key=lambda r: r.uid):
        label = r.label if r.label == "honest" else f"[red]{r.label}[/red]"
        score = _num(r.score, ".3f") + (" [red]slashed[/red]" if r.slashed else "")
        table.add_row(
            str(r.uid),
            label,
            _num(r.recall, ".2f"),
            _num(r.latency_ms, ".0f"),
            f"{r.passed}/{r.proofs}",
            score,
            _num(r.weight, ".3f"),
            str(r.replicas_ok),
        )
    return table
