"""Cost-quality plot of the quality benchmark: the system's λ curve and every baseline as a point."""

from __future__ import annotations

from pathlib import Path


def plot_quality(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9.5, 5))
    curve = sorted(result["curve"], key=lambda p: p["cost_ratio"])
    ax.plot([p["cost_ratio"] for p in curve], [p["accuracy"] for p in curve], "o-", color="C0",
            label="selfevolve (λ sweep)")
    for p in curve:
        ax.annotate(f"λ={p['lambda']:g}", (p["cost_ratio"], p["accuracy"]), fontsize=7,
                    textcoords="offset points", xytext=(4, -8))
    sysp = result["system"]
    ax.plot([sysp["cost_ratio"]], [sysp["accuracy"]], "*", ms=14, color="C3", label="selfevolve (default λ)")
    for i, (name, b) in enumerate(sorted(result["baselines"].items())):
        ax.plot([b["cost_ratio"]], [b["accuracy"]], "s", ms=6, color=f"C{(i + 4) % 10}", label=name)
    ax.set_xscale("symlog", linthresh=0.01)
    ax.set_xlabel("cost relative to supervisor-only")
    ax.set_ylabel("accuracy of the delivered answer")
    ax.set_title("Online routing on RouterBench test (Hu et al., 2024)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
