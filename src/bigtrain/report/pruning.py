"""Report section: the sparsity a pruned run (recipe ``prune:`` or ``compress prune``) reached."""

from __future__ import annotations

from .html import RunData, table


def section(run: RunData) -> str:
    """HTML for the run's pruning section (summary.json ``pruning``), or "" when it has none."""
    info = run.summary.get("pruning")
    if not isinstance(info, dict) or not isinstance(info.get("layers"), list):
        return ""
    kind = "structured (whole units)" if info.get("structured") else "unstructured"
    rows = [
        (r.get("layer"), r.get("params"), r.get("zeros"), f"{100 * r.get('sparsity', 0):.1f}%")
        for r in info["layers"]
        if isinstance(r, dict)
    ]
    return "\n".join(
        [
            '<h2 id="pruning">Pruning</h2>',
            f"<p>Magnitude pruning, {kind}, target amount {info.get('amount')}: "
            f"{100 * float(info.get('sparsity', 0)):.1f}% of the Linear/Conv weights are zero.</p>",
            table(rows, ("layer", "weights", "zeros", "sparsity")),
        ]
    )
