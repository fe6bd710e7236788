"""Every number the docs take from a results file agrees with that file (docs/testing.md).

A results file rewritten by a rerun, or a doc edited by hand, fails here until both say the
same. Add a row when a doc quotes a new number from docs/results/.
"""

from __future__ import annotations

import pytest

from doc_numbers import Claim, Lines, Table, csv_cell, json_at, md_cell, ratio, where

R = "docs/results/"
N50 = R + "bench_n50_cpu.md"
TTR = R + "latent_time_to_reward_cpu.md"
EQUAL = "Equal reward"
GUIDED = R + "bench_sd15_guided_cpu.csv"
TESTBED = "src/shortcut_diffusion/models/testbed/weights/testbed.json"
MOVING = "src/shortcut_diffusion/models/testbed/weights/moving/testbed.json"
MOVING_MD, MOVING_JSON = R + "moving_digits_cpu.md", R + "moving_digits_cpu.json"
OVER_SEEDS = "### over seeds"
LR_VARIANT = "lr 0.15 (the digits demo's)"
DIGIT = "digit-class 1->7"
ADV = "adversarial 1->7"


GVS = R + "guide_vs_sdo_cpu.json"
HALF, TRAVEL_VIEWS = "freedom scale=0.5", "freedom scale=1.0 travel=3 in [10, 40] views"


def _over_seeds(text: str, row: str, column: str = "read", fmt: str = "{:.0f}") -> Claim:
    """A docs/video.md number from the moving-digits demo variants' table over seeds."""
    return Claim("docs/video.md", text, MOVING_MD, md_cell(OVER_SEEDS, row, column), fmt)


def _freedom(method, key):
    return json_at("freedom", where(method=method), key)


def _sdo_last(key, seconds=60.0):
    """The last SDO iterate within ``seconds`` of the run without views (the table's row)."""
    def read(path):
        curve = __import__("json").loads(open(path).read())["sdo"]
        return [c for c in curve if c["seconds"] <= seconds][-1][key]
    return read


def _x_full_range(path):
    """SDO's time to full's final reward over full's, per task of a latent table: "low-high"."""
    rows = __import__("json").loads(open(path).read())
    ratios = [r["seconds_to_full_final"] / f["seconds_to_full_final"] for r in rows for f in rows
              if r["estimator"] == "sdo" and f["estimator"] == "full" and r["task"] == f["task"]]
    return f"{min(ratios):.2f}-{max(ratios):.2f}"


def latent(estimator, key, task=DIGIT):
    return json_at(where(task=task, estimator=estimator), key)


def sd15(estimator, column):
    return csv_cell("estimator", estimator, column)


def mib(reader):
    return lambda path: float(reader(path)) / 2**20


CLAIMS = [
    # docs/video.md, bold moving digits
    Claim("docs/video.md", "**reached at step 50, after {} s of CPU**", R + "finetune_bold_moving_cpu.json",
          json_at("rows", where(step=50), "wall_clock"), "{:.0f}"),
    Claim("docs/video.md", "ink {} on the unseen classes (1.50x", R + "finetune_bold_moving_cpu.json",
          json_at("rows", where(step=50), "ink"), "{:.2f}"),
    # docs/video.md, moving-digits memory as steps grow
    Claim("docs/video.md", "Full backpropagation holds {} MiB at N = 50", R + "video_memory_moving_cpu.json",
          mib(json_at("rows", where(estimator="full", steps=50), "saved_bytes")), "{:.0f}"),
    Claim("docs/video.md", "SDO holds {} MiB at every N", R + "video_memory_moving_cpu.json",
          mib(json_at("rows", where(estimator="sdo", steps=50), "saved_bytes")), "{:.1f}"),
    # README.md, headline numbers
    Claim("README.md", "SDO saves one network graph whatever the number of steps: {} of full", N50,
          md_cell("## N = 50", "sdo", "x full saved"), "{:.1%}"),
    Claim("README.md", "guided at 7.5 as SD is run) {} MiB", GUIDED, mib(sd15("sdo", "saved_bytes")), "{:.0f}"),
    Claim("README.md", "against full's {} MiB", GUIDED, mib(sd15("full", "saved_bytes")), "{:,.0f}"),
    Claim("README.md", "at {}x plain sampling's time", GUIDED,
          ratio(sd15("sdo", "seconds_per_iter"), sd15("sampling", "seconds_per_iter")), "{:.2f}"),
    Claim("README.md", "against full's {}x. ([bench]", GUIDED,
          ratio(sd15("full", "seconds_per_iter"), sd15("sampling", "seconds_per_iter")), "{:.2f}"),
    Claim("README.md", "full backpropagation ends at in {}x full's time", TTR, md_cell(EQUAL, "sdo", "x full"), "{:.2f}"),
    Claim("README.md", "and ends at {} against full's", TTR, md_cell("### latent", "sdo", "final reward"), "{:.3f}"),
    Claim("README.md", "against full's {}. ([bench]", TTR, md_cell("### latent", "full", "final reward"), "{:.2f}"),
    Claim("README.md", "SDO costs {}x plain sampling", N50, md_cell("## N = 50", "sdo", "raw x sampling"), "{:.2f}"),
    Claim("README.md", "plain sampling and {}x full backpropagation", N50, md_cell("## N = 50", "sdo", "raw x full"), "{:.2f}"),
    Claim("README.md", "plain sampling alone is {}x full there", N50,
          md_cell("## N = 50", "sampling", "raw x full"), "{:.2f}"),
    Claim("README.md", "all three judges agree on only {} of", GVS, _freedom(HALF, "all_7"), "{:.0%}"),
    Claim("README.md", "realism {}x (3x: three times further", GVS, _freedom(HALF, "realism"), "{:.2f}"),
    Claim("README.md", "with {} of pixels at the rails. Only time", GVS, _freedom(HALF, "saturation"), "{:.0%}"),
    Claim("README.md", "read all eight as 7 ({} s), at realism", GVS, _freedom(TRAVEL_VIEWS, "seconds"), "{:.1f}"),
    Claim("README.md", "at realism {}x. SDO", GVS, _freedom(TRAVEL_VIEWS, "realism"), "{:.2f}"),
    Claim("README.md", "latent optimization ends at {} read as 7 by all three", GVS, _sdo_last("all_7"), "{:.0%}"),
    Claim("README.md", "after 60 s, at realism {}x", GVS, _sdo_last("realism"), "{:.2f}"),
    Claim("README.md", "but cost {}x and", R + "latent_table.json",
          ratio(latent("adjoint", "seconds_per_iter", ADV), latent("full", "seconds_per_iter", ADV)), "{:.1f}"),
    Claim("README.md", "and {}x full backpropagation's time per iteration", R + "latent_table.json",
          ratio(latent("doodl", "seconds_per_iter", ADV), latent("full", "seconds_per_iter", ADV)), "{:.1f}"),
    Claim("README.md", "and the 7s sit {}x further from the nearest real 7", R + "demo_seeds_cpu.json",
          json_at("rows", where(iters=40, seed=0), "realism"), "{:.2f}"),
    Claim("README.md", "reaches full backpropagation's final reward in {}x its time, and the judges", R + "latent_table_flow.json",
          _x_full_range),
    Claim("docs/latent.md", "reaches the reward `full` ends at in {}x `full`'s time", R + "latent_table_flow.json",
          _x_full_range),
    Claim("README.md", "the best are DRTune ({} of 8), SDO", R + "latent_table.json",
          json_at(where(task=DIGIT, estimator="drtune"), "panel", "read_by_all")),
    Claim("README.md", "SDO and FlowBP-Sparse ({} of 8)", R + "latent_table.json",
          json_at(where(task=DIGIT, estimator="sdo"), "panel", "read_by_all")),
    Claim("README.md", "as their class) in {} of training; Direct-Align", R + "finetune_bold_cpu.md",
          md_cell("At the end of the budget", "sdo:keep=random", "time to target"), "{:.0f} s"),
    Claim("README.md", "training; Direct-Align in {}, DRTune", R + "finetune_bold_cpu.md",
          md_cell("At the end of the budget", "direct-align", "time to target"), "{:.0f} s"),
    Claim("README.md", "DRTune and LeapAlign in {}, ReFL", R + "finetune_bold_cpu.md",
          md_cell("At the end of the budget", "drtune", "time to target"), "{:.0f} s"),
    Claim("README.md", "DRTune and LeapAlign in {}, ReFL", R + "finetune_bold_cpu.md",
          md_cell("At the end of the budget", "leapalign", "time to target"), "{:.0f} s"),
    Claim("README.md", "ReFL in {}, DRaFT-1", R + "finetune_bold_cpu.md",
          md_cell("At the end of the budget", "refl", "time to target"), "{:.0f} s"),
    Claim("README.md", "DRaFT-1 in {}, AlignProp", R + "finetune_bold_cpu.md",
          md_cell("At the end of the budget", "truncated:k=1", "time to target"), "{:.0f} s"),
    Claim("README.md", "AlignProp (as published) in {},", R + "finetune_bold_cpu.md",
          md_cell("At the end of the budget", "alignprop", "time to target"), "{:.0f} s"),
    Claim("README.md", "checkpointed full backpropagation in {}.", R + "finetune_bold_cpu.md",
          md_cell("At the end of the budget", "checkpointed", "time to target"), "{:.0f} s"),
    # docs/sampling.md, the gradcheck prose around the table
    Claim("docs/sampling.md", "SDO saves {} of full backpropagation's bytes at 50 steps", R + "gradcheck_methods_cpu.md",
          lambda p: _gradcheck(p, "sdo", 5) / _gradcheck(p, "full", 5), "{:.1%}"),
    Claim("docs/sampling.md", "initial noise (cosine {})", R + "gradcheck_methods_cpu.md",
          lambda p: _gradcheck(p, "sdo", 1), "{:.2f}"),
    Claim("docs/sampling.md", "and about {} times larger", R + "gradcheck_methods_cpu.md",
          lambda p: _gradcheck(p, "sdo", 2), "{:.0f}"),
    Claim("docs/sampling.md", "{} bytes at N = 10", R + "gradcheck_saved_bytes_cpu.json",
          json_at("runs", 0, "results", where(estimator="sdo"), "saved_bytes"), "{:,}"),
    Claim("docs/sampling.md", "{} at N = 100", R + "gradcheck_saved_bytes_cpu.json",
          json_at("runs", 1, "results", where(estimator="sdo"), "saved_bytes"), "{:,}"),
    Claim("docs/sampling.md", "full: {} MB", R + "gradcheck_saved_bytes_cpu.json",
          lambda p: json_at("runs", 0, "results", where(estimator="full"), "saved_bytes")(p) / 1e6, "{:.1f}"),
    Claim("docs/sampling.md", "and {} MB;", R + "gradcheck_saved_bytes_cpu.json",
          lambda p: json_at("runs", 1, "results", where(estimator="full"), "saved_bytes")(p) / 1e6, "{:.1f}"),
    # docs/latent.md
    Claim("docs/latent.md", "otherwise idle machine (`full`: {} s)", R + "latent_table.json",
          latent("full", "seconds_per_iter"), "{:.2f}"),
    Claim("docs/latent.md", "(adjoint cosine {} to full", R + "gradcheck_methods_cpu.md",
          lambda p: _gradcheck(p, "adjoint", 1), "{:.3f}"),
    Claim("docs/latent.md", "reward views gets all three judges to read all eight as 7 ({} s)", GVS,
          _freedom(TRAVEL_VIEWS, "seconds"), "{:.1f}"),
    # docs/testbed.md and docs/testing.md: the bundled model's own record
    Claim("docs/testbed.md", "**{} accuracy on the held-out digits**", TESTBED,
          json_at("classifier_held_out_accuracy"), "{:.1%}"),
    Claim("docs/testbed.md", "| bundled model, DDIM 50 | {} |", TESTBED,
          lambda p: "{:.2f} | {:.1%} | {:.2f}".format(*_metrics(p, "model_ddim50")), "{}"),
    Claim("docs/testbed.md", "| real training digits (reference) | {} |", TESTBED,
          lambda p: "{:.2f} | {:.1%} | {:.2f}".format(*_metrics(p, "real_train_digits")), "{}"),
    Claim("docs/video.md", "trained in {} s of process CPU time", MOVING, json_at("train_cpu_seconds"), "{:.0f}"),
    Claim("docs/video.md", "lr 2e-3) in {} s of process CPU time", MOVING, json_at("init_training", 0, "train_cpu_seconds"),
          "{:.0f}"),
    Claim("docs/video.md", "The second run took the frames read right from {} to", MOVING,
          json_at("init_training", 0, "metrics", "model_ddim50", "accuracy"), "{:.0%}"),
    Claim("docs/video.md", "and digits-FD from {} to", MOVING, json_at("init_training", 0, "metrics", "model_ddim50", "digits_fd"),
          "{:.0f}"),
    Claim("docs/video.md", "digits-FD from 33 to {} (the same evaluation)", MOVING_JSON,
          json_at("samples", "report", "model_ddim50", "digits_fd"), "{:.0f}"),
    Claim("docs/video.md", "frames read right from 73% to {} and digits-FD", MOVING_JSON,
          json_at("samples", "report", "model_ddim50", "accuracy"), "{:.0%}"),
    Claim("docs/video.md", "by all three judges {} of 40 times (31 at", MOVING_JSON,
          json_at("own", "own 7s, DDIM 20, guidance 4", "read_by_all")),
    Claim("docs/video.md", "yet the demo at `--guidance 4` reads {} of 8 on seed 0", MOVING_JSON,
          json_at("demo", "guidance 4", "read_by_all", 1)),
    _over_seeds("on seeds 0-2 the shipped settings read {} of 24 videos", "shipped settings"),
    _over_seeds("the digits demo's step (`--lr 0.15`), {} of 24", LR_VARIANT),
    _over_seeds("with one video {} px off its start's track", LR_VARIANT, "largest motion deviation (px)", "{:.2f}"),
    _over_seeds("`--guidance 4` reads {} of 24 within the tolerance", "guidance 4"),
    _over_seeds("full backpropagation (`--estimator full`) reads {} of 24", "full backpropagation"),
    _over_seeds("the best reads {} of 24 videos on seeds 0-2", LR_VARIANT),
    Claim("docs/video.md", "**Time**: {} s of process CPU time a run (the five seeds)", MOVING_JSON,
          lambda p: "{:.0f}-{:.0f}".format(*_demo_cpu_range(p))),
    Claim("docs/video.md", "and takes {}x SDO's CPU time", MOVING_JSON,
          ratio(json_at("demo", "full backpropagation", "cpu_seconds"), json_at("demo", "demo seed 0", "cpu_seconds")),
          "{:.1f}"),
    Claim("docs/testing.md", "reward's classifier, {} on real held-out digits", TESTBED,
          json_at("judge_held_out_accuracy"), "{:.0%}"),
]


def _demo_cpu_range(path) -> tuple:
    """The least and the most CPU seconds of the moving-digits demo's seed runs."""
    cpu = [row["cpu_seconds"] for name, row in json_at("demo")(path).items() if name.startswith("demo seed")]
    return min(cpu), max(cpu)


def _gradcheck(path, estimator: str, column: int) -> float:
    """One number of a row of `sdo gradcheck`'s printed table."""
    rows = [line.split() for line in path.read_text().splitlines()]
    return float(next(row for row in rows if row and row[0] == estimator)[column])


def _metrics(path, name: str) -> tuple:
    m = json_at("metrics", name)(path)
    return m["digits_fd"], m["accuracy"], m["diversity"]


ALIGNPROP_N50 = "alignprop (published: checkpointed, drawn per step)"
CALL_N50 = "alignprop:draw=call,checkpoint=0 (the earlier default)"
N50_ROWS = {"sampling": "sampling", "full": "full", ALIGNPROP_N50: "alignprop",
            CALL_N50: "alignprop:draw=call,checkpoint=0",
            "drtune (as published: stops early at a drawn step)": "drtune", "sdo": "sdo"}
N50_COLS = {"s/iter": "s/iter", "raw x sampling": "raw x sampling", "raw x full": "raw x full",
            "paired x sampling": "x sampling", "NFE fwd/bwd": "NFE fwd/bwd", "saved MiB": "saved MiB",
            "peak MB": "peak MB"}
TTR_COLS = {"final reward": "final reward", "class-FD": "class-FD", "time to 95% (-0.89)": "time to 95%"}
TTR_EQUAL = {"time to full's final reward (-2.43)": "time to full's final reward", "x full": "x full",
             "class-FD there": "class-FD there", "digits-FD there": "digits-FD there"}
ESTIMATORS_TTR = {name: name for name in ("full", "alignprop", "sdo")}

TABLES = [
    Table("docs/bench.md", "**Rerun at N = 50", N50, "## N = 50", rows=N50_ROWS, columns=N50_COLS),
    Table("docs/bench.md", "**Rerun at N = 50", N50, "## Gradient fidelity",
          rows={k: v for k, v in N50_ROWS.items() if k != "sampling"}, columns={"cos": "N = 50"}),
    Table("docs/bench.md", "seconds per", R + "bench_profile_n50_cpu.md", "## Where the time goes"),
    Table("docs/bench.md", "`docs/results/latent_time_to_reward_cpu.md`):", TTR, "### latent",
          rows=ESTIMATORS_TTR, columns=TTR_COLS),
    Table("docs/bench.md", "`docs/results/latent_time_to_reward_cpu.md`):", TTR, EQUAL,
          rows=ESTIMATORS_TTR, columns=TTR_EQUAL),
    Table("docs/latent.md", "[picard_time_to_reward_cpu.md](results/picard_time_to_reward_cpu.md), which",
          R + "picard_time_to_reward_cpu.md", "### over 3 seeds",
          rows={"sequential (`sdo`)": "sdo", "Picard, held predictions (earlier default)": "sdo+picard:extrapolate=0,secant=0",
                "Picard, extrapolated + secant (`sdo+picard`)": "sdo+picard",
                "the same, one step in 2 evaluated (`sdo+picard:stride=2`)": "sdo+picard:stride=2"},
          columns={c: c for c in ("final reward (mean)", "final reward (each seed)", "all judges read the goal",
                                  "realism (mean)", "iterations (mean)", "s/iter (median)")}),
    Table("docs/latent.md", "([picard_cost_cpu.md](results/picard_cost_cpu.md)):", R + "picard_cost_cpu.md",
          "Machine:"),
    Table("docs/latent.md", "[demo_tradeoff_cpu.md](results/demo_tradeoff_cpu.md))", R + "demo_tradeoff_cpu.md",
          "Command:"),
    Table("docs/video.md", "Samples of the bundled moving-digits model", MOVING_MD, "### samples"),
    Table("docs/video.md", "`sdo demo --model moving-digits` as measured", MOVING_MD, "### sdo demo"),
    Table("docs/video.md", "Each variant against the shipped settings on the same three seeds", MOVING_MD, OVER_SEEDS),
    Table("docs/video.md", "The model's own 7s, 40 videos conditioned on 7", MOVING_MD, "### the model's own 7s"),
    Table("docs/latent.md", "[picard_cosine_cpu.md](results/picard_cosine_cpu.md)), the cosine",
          R + "picard_cosine_cpu.md", "Machine:"),
    Table("docs/video.md", "[finetune_bold_moving_cpu.md](results/finetune_bold_moving_cpu.md))",
          R + "finetune_bold_moving_cpu.md", "Target:"),
    Table("docs/latent.md", "nothing else running (`docs/results/guide_vs_sdo_cpu.md`)",
          R + "guide_vs_sdo_cpu.md", "Reward: digit-class:7"),
    Table("docs/video.md", "configuration and run in", R + "video_memory_cpu.md", "KiB saved for backward"),
    Table("docs/video.md", "`docs/results/video_memory_moving_cpu.md`), KiB saved", R + "video_memory_moving_cpu.md",
          "KiB saved for backward"),
    Table("docs/latent.md", "[demo_seeds_cpu.md](results/demo_seeds_cpu.md)):", R + "demo_seeds_cpu.md", "Targets:"),
    Table("docs/latent.md", "**digits, digit-class 1->7**", R + "latent_table.md", "### digit-class"),
    Table("docs/latent.md", "**digits, style (ref #0)**", R + "latent_table.md", "### style"),
    Table("docs/latent.md", "**digits, adversarial 1->7**", R + "latent_table.md", "### adversarial"),
    Table("docs/latent.md", "**digits-flow, digit-class 1->7**", R + "latent_table_flow.md", "### digit-class"),
    Table("docs/latent.md", "**digits-flow, style (ref #0)**", R + "latent_table_flow.md", "### style"),
    Table("docs/latent.md", "**digits-flow, adversarial 1->7**", R + "latent_table_flow.md", "### adversarial"),
    Table("docs/finetune.md", "At the end of the budget", R + "finetune_bold_cpu.md", "At the end of the budget"),
    Table("docs/finetune.md", "The boldest evaluation", R + "finetune_bold_cpu.md", "The boldest evaluation"),
    Table("docs/finetune.md", "At the end of the budget (flow):", R + "finetune_bold_flow_cpu.md", "At the end of the budget"),
    Table("docs/finetune.md", "The boldest evaluation that still reads as its class, flow", R + "finetune_bold_flow_cpu.md",
          "The boldest evaluation"),
    Table("docs/finetune.md", "Time to 95% = to reach reward -0.0003", R + "finetune_table.md", "### digit-match"),
    Table("docs/finetune.md", "Time to 95% = to reach reward 0.9298", R + "finetune_table.md", "### ink"),
    Table("docs/video.md", "benchmarks/video_decode_memory.py --out", R + "video_decode_memory_cpu.md", "## Results"),
]

LINES = [Lines("docs/sampling.md", "which this block copies", R + "gradcheck_methods_cpu.md")]


@pytest.mark.parametrize("claim", CLAIMS, ids=lambda c: f"{c.doc}:{c.text[:40]}")
def test_documented_number_matches_its_results_file(claim):
    problem = claim.problem()
    assert problem is None, problem


@pytest.mark.parametrize("table", TABLES + LINES, ids=lambda t: f"{t.doc}:{t.after[:40]}")
def test_documented_table_matches_its_results_file(table):
    problems = table.problems()
    assert not problems, "\n".join(problems)


def test_the_checker_catches_a_drifted_number():
    from doc_numbers import same_number

    assert same_number("260.2", "260.15") and same_number("16.6 s", "16.60 s") and same_number("1,982", "1982.4")
    assert not same_number("0.08", "0.09") and not same_number("16.6 s", "16.6 MiB") and not same_number("-", "0.1")
    moved = Claim("README.md", "in {}x full's time", TTR, lambda path: 0.09, "{:.2f}")
    assert "should say \"in 0.09x full's time\"" in moved.problem()
