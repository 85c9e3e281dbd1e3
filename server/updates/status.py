"""`fedadapt rollout status`: the channel, the candidate's reports as a table, and a plot of
the paired difference with its 95% interval as the reports came in (one point per report,
in arrival order, each over the reports received so far), with the guardrail's −threshold
drawn in: the rollout halts where the interval's top crosses below that line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fedadapt.atomic import atomic_write_bytes
from fedadapt.server.updates.rollout import (
    REPORTS_FILE,
    ROLLOUT_FILE,
    Rollouts,
    Summary,
    summarize,
    verdict,
)


def _pct(v: float | None, signed: bool = False) -> str:
    if v is None:
        return "-"
    return f"{v * 100:+.1f}" if signed else f"{v * 100:.1f}"


def status_text(rollouts: Rollouts, name: str) -> tuple[str, list[dict[str, Any]]]:
    """The lines to print, and the candidate's reports (for the plot)."""
    current = rollouts.read_channel(name)
    if current is None:
        return f"channel {name}: none in {rollouts.registry}", []
    meta, ch = current
    lines = [
        f"channel {name} (file version {meta.version}, expires {meta.expires_at}): "
        f"stable v{ch.stable}, candidate "
        + (f"v{ch.candidate} to {ch.fraction:.0%} of devices" if ch.candidate else "none")
    ]
    if not (rollouts.folder(name) / ROLLOUT_FILE).exists():  # a channel, no rollout yet
        return lines[0], []
    state = rollouts.rollout(name)
    reports = rollouts.rollout_reports(name)
    s: Summary = summarize(reports, ch)  # the devices the guardrail counts
    guard = rollouts.guardrail(name)
    lines.append(
        f"rollout of v{state['candidate']}: {s.devices} devices reported; paired difference "
        f"{_pct(s.mean_diff, True)} pts, 95% interval [{_pct(s.low, True)}, "
        f"{_pct(s.high, True)}]; failure rate {_pct(s.failure_rate)}%; "
        f"{s.local_rollbacks} local rollbacks"
    )
    if rollouts.torn:
        lines.append(f"{rollouts.torn} unreadable line of {REPORTS_FILE} skipped (a torn write)")
    halted = state.get("halted")
    reason = halted["reason"] if halted else verdict(s, guard)
    lines.append(("HALTED: " if halted else "guardrail: ") + (reason or "ok"))
    lines.append(
        f"{'device':<16}  {'running':>7}  {'examples':>8}  {'stable%':>7}  {'cand%':>6}  "
        f"{'diff':>6}  {'ms':>6}  {'fail':>4}  rolled back"
    )
    latest = {r["device"]: r for r in reports}
    for r in latest.values():
        diff = r["candidate_accuracy"] - r["stable_accuracy"]
        lines.append(
            f"{r['device']:<16}  v{r['running']:<6}  {r['examples']:>8}  "
            f"{_pct(r['stable_accuracy']):>7}  {_pct(r['candidate_accuracy']):>6}  "
            f"{_pct(diff, True):>6}  {r['candidate_latency_ms']:>6.1f}  "
            f"{r['candidate_failures']:>4}  {'yes' if r['rolled_back'] else 'no'}"
        )
    return "\n".join(lines), reports


def plot(reports: list[dict[str, Any]], threshold: float, out: Path, title: str) -> Path:
    """The running paired difference and its 95% interval against reports received."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs, mean, low, high = [], [], [], []
    for k in range(2, len(reports) + 1):
        s = summarize(reports[:k])
        if s.low is not None:
            xs.append(k)
            mean.append(s.mean_diff)
            low.append(s.low)
            high.append(s.high)
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.fill_between(xs, low, high, alpha=0.3, label="95% interval")
    ax.plot(xs, mean, label="mean paired difference (candidate − stable)")
    ax.axhline(-threshold, color="red", linestyle="--", label=f"−threshold ({-threshold:g})")
    ax.axhline(0, color="grey", linewidth=0.5)
    ax.set_xlabel("reports received")
    ax.set_ylabel("held-out accuracy difference")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(out, buf.getvalue())
    return out
