"""Cost-quality plots of the quality benchmark: the system's λ curve and every baseline as a point (per pool)."""

from __future__ import annotations

from pathlib import Path


def plot_quality(result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a display
    import matplotlib.pyplot as plt

    if result.get("pools"):
        _plot_pools(plt, result["pools"], path)
        return
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


def _plot_pools(plt, pools: dict, path: Path) -> None:
    """One panel per model pool: the λ curve, the quality-target run, the kNN-with-cost curve, the baselines."""
    fig, axes = plt.subplots(1, len(pools), figsize=(5.2 * len(pools), 4.6), squeeze=False)
    for ax, (name, p) in zip(axes[0], pools.items()):
        sup = p["baselines"]["supervisor_only"]["accuracy"] or 1.0
        curve = sorted(p["curve"], key=lambda c: c["cost_ratio"])
        ax.plot([c["cost_ratio"] for c in curve], [c["accuracy"] / sup for c in curve], "o-", color="C0",
                label="selfevolve (λ sweep)")
        for c in curve:
            ax.annotate(f"λ={c['lambda']:g}", (c["cost_ratio"], c["accuracy"] / sup), fontsize=6,
                        textcoords="offset points", xytext=(3, -7))
        knn = sorted(p.get("knn_curve") or [], key=lambda c: c["cost_ratio"])
        if knn:
            ax.plot([c["cost_ratio"] for c in knn], [c["accuracy"] / sup for c in knn], "x--", color="C7",
                    label="kNN + cost, offline on train labels")
        t = p["target"]
        ax.plot([t["cost_ratio"]], [t["achieved"]], "*", ms=14, color="C3",
                label=f"quality target {t['target']:g} (λ settles at {t['cost_lambda']:.2g})")
        ax.axhline(t["target"], color="C3", ls=":", lw=1)
        for i, (k, b) in enumerate(sorted(p["baselines"].items())):
            if k.startswith("ablation"):
                continue
            ax.plot([b["cost_ratio"]], [b["accuracy"] / sup], "s", ms=5, color=f"C{(i + 4) % 10}",
                    label=k.replace("_", " "))
        ax.set_xscale("symlog", linthresh=0.01)
        ax.set_xlabel("cost relative to supervisor-only")
        ax.set_ylabel("accuracy relative to the supervisor")
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_learning_curves(tasks: dict, path: Path) -> None:
    """Test accuracy against epochs of distillation, one panel per task, with bootstrap 95% bands."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = {k: t for k, t in tasks.items() if any(len(r.get("curve", [])) > 1 for r in t["rounds"].values())}
    if not shown:
        return
    fig, axes = plt.subplots(1, len(shown), figsize=(5.5 * len(shown), 4), squeeze=False)
    for ax, (task, t) in zip(axes[0], shown.items()):
        before = t["rounds"]["before"]["accuracy"]
        for i, (name, r) in enumerate(t["rounds"].items()):
            pts = ([{"epochs": 0.0, "accuracy": before}] if name != "before" else []) + r.get("curve", [])
            x = [p["epochs"] for p in pts]
            ax.plot(x, [p["accuracy"]["mean"] for p in pts], "o-", color=f"C{i}", label=name.replace("_", " "))
            ax.fill_between(x, [p["accuracy"]["lo"] for p in pts], [p["accuracy"]["hi"] for p in pts],
                            color=f"C{i}", alpha=0.15)
        goal = before["mean"] + 0.10
        ax.axhline(goal, color="grey", ls="--", lw=1, label="goal: before + 10 points")
        if "reference" in t:
            ax.axhline(t["reference"]["chance"], color="black", ls=":", lw=1, label="chance")
        ax.set_xlabel("epochs over the teacher's training answers")
        ax.set_ylabel("test accuracy")
        ax.set_title(f"{task}: SmolLM2-135M student", fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
