"""The fine-tuning table of the README: every estimator under the same wall-clock budget.

LoRA fine-tuning of the digits testbed towards two rewards, ``digit-match`` (samples of every
class become more confidently that class) and ``ink`` (more ink: an easy reward to hack, where
digits-FD shows the damage). Every estimator gets the same seeds, the same training budget in
wall-clock minutes (evaluation excluded) and the same fixed evaluation noise (10 classes x 10
samples). Per reward and estimator: evaluation reward, digits-FD, conditional accuracy and
diversity at the end, optimizer steps done, seconds per step, and the time to reach 95% of the
best improvement over the base model that any estimator reached.

    OMP_NUM_THREADS=1 python benchmarks/finetune_table.py --out runs/finetune_table   # about 35 minutes
    python benchmarks/finetune_table.py --quick                                        # a smoke run
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from shortcut_diffusion.io import reporting
from shortcut_diffusion.measure.bench.reward import finetune_time_to_reward
from shortcut_diffusion.tasks.finetune import FinetuneConfig

ESTIMATORS = ["checkpointed", "truncated:k=1", "alignprop", "refl", "sdo:keep=random"]
REWARDS = {"digit-match": 4.0, "ink": 2.0}  # reward: minutes of training per estimator


def run(out: Path, rewards: dict[str, float], estimators: list[str], base: FinetuneConfig) -> list[dict]:
    table = []
    for reward, minutes in rewards.items():
        table += finetune_time_to_reward(reward, estimators=estimators, minutes=minutes, out=out, base=base)
    return table


def markdown(table: list[dict], command: str) -> str:
    lines = [f"Command: `{command}`", ""]
    for reward in dict.fromkeys(r["reward"] for r in table):
        rows = [r for r in table if r["reward"] == reward]
        first = rows[0]
        lines += [f"### {reward}: {first['budget_seconds'] / 60:g} min of training per estimator",
                  f"Base model: reward {first['start_reward']:.4f}, digits-FD {first['start_digits_fd']:.2f}, "
                  f"diversity {first['start_diversity']:.2f}. Time to 95% = to reach reward {first['threshold']:.4f} "
                  "(95% of the best improvement any estimator made).", "",
                  "| estimator | final reward | digits-FD | accuracy | diversity | steps | s/step | time to 95% |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in rows:
            t95 = "not reached" if r["seconds_to_95"] is None else f"{r['seconds_to_95']:.0f} s"
            lines.append(f"| {r['estimator']} | {r['final_reward']:.4f} | {r['digits_fd']:.2f} | {r['accuracy']:.3f} | "
                         f"{r['diversity']:.2f} | {r['iterations']} | {r['seconds_per_iter']:.2f} | {t95} |")
        lines.append("")
    return "\n".join(lines)


def plot(table: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rewards = list(dict.fromkeys(r["reward"] for r in table))
    fig, axes = plt.subplots(2, len(rewards), figsize=(5 * len(rewards), 7), dpi=100, squeeze=False)
    for j, reward in enumerate(rewards):
        for r in (r for r in table if r["reward"] == reward):
            minutes = [t / 60 for t, _ in r["curve"]]
            axes[0][j].plot(minutes, [v for _, v in r["curve"]], marker=".", label=r["estimator"])
            axes[1][j].plot(minutes, [v for _, v in r["fd_curve"]], marker=".", label=r["estimator"])
        axes[0][j].set_title(f"LoRA fine-tuning, reward {reward}")
        axes[0][j].set_ylabel("evaluation reward")
        axes[1][j].set_ylabel("digits-FD (lower is better)")
        axes[1][j].set_xlabel("training wall-clock (minutes)")
        for ax in (axes[0][j], axes[1][j]):
            ax.grid(alpha=0.3)
        axes[0][j].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/finetune_table")
    parser.add_argument("--docs", default=None, help="also copy the table and plot here (e.g. docs/results)")
    parser.add_argument("--quick", action="store_true", help="seconds per run, two estimators, one reward")
    args = parser.parse_args(argv)
    base = FinetuneConfig(target="lora", steps=25, batch=8, eval_every=10, eval_per_class=10,
                          checkpoint_every=0, progress=False, seed=0)
    rewards, estimators = REWARDS, ESTIMATORS
    if args.quick:
        base = replace(base, steps=4, eval_every=2, eval_per_class=2, batch=2)
        rewards, estimators = {"ink": 0.05}, ["truncated:k=1", "sdo:keep=random"]
    out = Path(args.out)
    table = run(out, rewards, estimators, base)
    command = "python benchmarks/finetune_table.py " + " ".join(sys.argv[1:] if argv is None else argv)
    reporting.write_json(out / "finetune_table.json", table)
    (out / "finetune_table.md").write_text(markdown(table, command.strip()))
    plot(table, out / "finetune_reward_vs_time.png")
    if args.docs:
        docs = Path(args.docs)
        docs.mkdir(parents=True, exist_ok=True)
        for name in ("finetune_table.json", "finetune_table.md", "finetune_reward_vs_time.png"):
            (docs / name).write_bytes((out / name).read_bytes())
    print(markdown(table, command.strip()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
