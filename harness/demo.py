"""``sopmoe demo``: the whole pipeline on the embedded test bed, as the same subcommands a user would type.

Per seed: build the test bed, fit the three routers, the ``dispatch`` classifier and the ``replay_sft`` fine-tune (the
baselines a skeptic runs first), distil one student from the token-level router, merge, evaluate the zoo through
lm-eval on the test split; then one leaderboard (mean ± spread over seeds, paired bootstrap intervals) and the
regression check of the first seed against the committed baseline. Every choice is made on dev data (issue 11):
best epochs, merge parameters, the dispatch classifier's L2, and the ensemble's weight (the dev sweep of the test
bed, on the families the training data covers). Nothing is trained on a composition (``mixed``) row.

Every stage is a ``sopmoe`` subcommand run in-process (:func:`harness.cli.main`), so the demo exercises exactly the
code paths of the CLI; ``demo.json`` records each stage's command, exit code and time. The leaderboard goes to
``<out>/results``; only ``--update-baseline`` rewrites the committed ``results/`` (leaderboard, charts, baseline) and
the README's results section, so ``make demo`` leaves the working tree clean.

The demo owns its work folder (``--out``, marked ``.sopmoe.json`` / ``demo.json``): a rerun rebuilds everything in it,
so its stages pass ``--overwrite`` (``--reuse-testbed`` keeps a test bed built for the same seed and preset). A
non-empty folder the demo did not write is refused.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from sopmoe_models.cards import BedCard
from sopmoe_models.console import new_console
from sopmoe_models.outputs import write_json

log = logging.getLogger(__name__)

ROUTERS = ("posterior", "token_level", "layer_level")
MERGES = ("linear", "task_arithmetic", "ties", "dare")  # the 1x-cost baselines (issue 7), each searched on dev data
ENSEMBLE_CHOICE_FAMILIES = ("sop_strict", "reasoning")  # what the training data covers: no composition


@dataclass(frozen=True)
class BedPlan:
    """The training budgets of one bed: what differs between the test bed and the real bed; every stage is the same."""

    router_flags: dict[str, list[str]]
    distill_flags: list[str]
    replay_flags: list[str]
    merge_flags: dict[str, list[str]] = field(default_factory=dict)  # per merge method
    # The MoE checkpoint (BTX, issue 21): the grid of builds and gate learning rates chosen from on dev, and the gate
    # training budget. moe_lora: also BTX's fine-tuning stage (LoRA on attention) from the chosen gates, its own row.
    moe_grid: tuple[tuple[str, str, float], ...] = ()  # (shared weights, gate init, gate learning rate) per candidate
    moe_flags: list[str] = field(default_factory=list)
    moe_lora_flags: list[str] | None = None
    moe_dev_limit: int | None = None  # dev rows per family the MoE choice is scored on (None: all)


# What each bed scores: the real bed also has the reasoning family as format-free multiple choice (issue 22).
BED_TASKS = {"test": ["sop_strict", "reasoning", "mixed", "eval"],
             "real": ["sop_strict", "reasoning", "reasoning_mc", "mixed", "eval"]}
MOE_TOP_KS = (1, 2)  # the trained gates are served at each k on dev; top-1 wins ties (it is the cheaper)
# replay_sft: the standard forgetting fix, plain cross-entropy on the router's training mix from the foundation, with
# the student's budget (best epoch on dev).
REPLAY = ["--teacher_type", "none", "--distill_loss_weight", "0", "--task_loss_weight", "1", "--student_init",
          "foundation"]
PLANS = {
    # The CI-size test bed (2 CPU cores): enough to learn the routing, minutes not hours.
    "test": BedPlan(
        router_flags={"posterior": [], "token_level": ["--num_epochs", "2", "--learning_rate", "0.003"],
                      "layer_level": ["--num_epochs", "2", "--learning_rate", "0.003"]},
        distill_flags=["--num_epochs", "8", "--teacher_cache_topk", "32"],
        replay_flags=[*REPLAY, "--num_epochs", "8"],
        # BTX (issue 21): each source of the shared weights with zero gates, and hidden-state gates with BTX's mean;
        # a few thousand gate parameters settle within 400 rows (seed 0 dev: the same dev accuracy as 2 epochs on
        # all 1,200). moe_lora continues from the chosen gates with LoRA on attention.
        moe_grid=(("foundation", "zero", 0.01), ("sft", "zero", 0.01), ("mean", "zero", 0.01), ("mean", "hidden", 0.01)),
        moe_flags=["--num_epochs", "1", "--max_train_examples", "400", "--batch_size", "16"],
        moe_lora_flags=["--num_epochs", "1", "--max_train_examples", "600", "--batch_size", "16", "--learning_rate",
                        "0.001"]),
    # The real bed (135M parameters; issue 22's budget: one seed's whole run <= 60 min on 2 cores, not met on AVX2
    # CPUs computing in float32: ~3.4 core-hours for seed 0): the routers one epoch on 128 training rows; LoRA students
    # (the student and replay_sft alike) two epochs on 160 rows of the training mix, best epoch on dev; the merge
    # search on 24 dev examples, TIES/DARE on a 3 x 2 grid (density 0.2/0.5/0.8 x scale 0.5/1.0) instead of 5 x 4.
    "real": BedPlan(
        router_flags={"posterior": [],
                      "token_level": ["--num_epochs", "1", "--max_train_examples", "128", "--learning_rate", "0.003"],
                      "layer_level": ["--num_epochs", "1", "--max_train_examples", "128", "--learning_rate", "0.003"]},
        distill_flags=["--num_epochs", "2", "--max_train_examples", "160", "--teacher_cache_topk", "32", "--lora",
                       "--learning_rate", "0.001"],
        replay_flags=[*REPLAY, "--num_epochs", "2", "--max_train_examples", "160", "--lora", "--learning_rate", "0.001"],
        merge_flags={m: ["--dev_examples", "24", *(["--grid", "density=0.2,0.5,0.8", "--grid", "scale=0.5,1.0"]
                                                  if m in ("ties", "dare") else [])] for m in MERGES},
        # BTX on the real bed: the shared weights from the sft or BTX's mean, zero gates (the test bed's grid found no
        # difference from hidden-state gates), gates trained on 128 rows; the choice scored on 40 dev rows per family.
        moe_grid=(("sft", "zero", 0.01), ("mean", "zero", 0.01)),
        moe_flags=["--num_epochs", "1", "--max_train_examples", "128"],
        moe_lora_flags=["--num_epochs", "1", "--max_train_examples", "160", "--learning_rate", "0.001"],
        moe_dev_limit=40),
}
# Kept for readers of the test bed's budgets.
ROUTER_FLAGS, DISTILL_FLAGS, REPLAY_FLAGS = (PLANS["test"].router_flags, PLANS["test"].distill_flags,
                                             PLANS["test"].replay_flags)


class StageFailed(RuntimeError):
    pass


@dataclass
class Demo:
    out: Path
    results: Path
    baseline: Path
    seeds: list[int]
    size: str = "ci"
    preset: str = "partial"
    tasks: list[str] | None = None  # default: the bed's (BED_TASKS)
    limit: int | None = None
    readme: Path | None = None
    reuse_testbed: bool = False
    bed: str = "test"  # test (the tiny bed trained here) | real (SmolLM2-135M-Instruct and its SOP fine-tune)
    stages: list[dict] = field(default_factory=list)
    property_failures: list[int] = field(default_factory=list)

    def run_stage(self, title: str, argv: list[str], allowed: tuple[int, ...] = (0,)) -> int:
        from harness.cli import main

        new_console(stderr=True).rule(f"[bold]sopmoe demo[/] [{len(self.stages) + 1}] {title}")
        t_wall, t_cpu = time.perf_counter(), time.process_time()
        rc = main([str(a) for a in argv])
        record = {"stage": title, "command": "sopmoe " + " ".join(map(str, argv)), "rc": rc,
                  "wall_s": round(time.perf_counter() - t_wall, 1), "cpu_s": round(time.process_time() - t_cpu, 1)}
        self.stages.append(record)
        log.info("%s: exit %d in %.0f s", title, rc, record["wall_s"])
        if rc not in allowed:
            raise StageFailed(f"stage '{title}' failed (exit {rc}): {record['command']}")
        return rc

    def seed_dir(self, seed: int) -> Path:
        return self.out if len(self.seeds) == 1 else self.out / f"seed{seed}"

    def pipeline(self, seed: int) -> Path:
        """All stages for one seed; returns the evaluation run folder."""
        root = self.seed_dir(seed)
        tb = root / "testbed"
        cfg = ["--config", tb / "config.yaml"]
        # --threads 1: the same bits on any machine (a thread count changes float reductions), so CI reproduces the
        # committed baseline. Exit 1 = a property failed (everything was still written): the pipeline goes on and
        # the failure is reported in the summary and demo.json rather than hiding every later number.
        record = tb / "testbed.json"
        if self.reuse_testbed and record.is_file() and _same_bed(record, seed, "real" if self.bed == "real" else self.preset):
            log.info("reusing the test bed in %s (--reuse-testbed)", tb)
            if not BedCard.read(record).passed:
                self.property_failures.append(seed)
        elif self.bed == "real":
            rc = self.run_stage(f"real bed (seed {seed}, {self.size})",
                                ["realbed", "--out", tb, "--seed", seed, "--size", self.size, "--overwrite"],
                                allowed=(0, 1))
            if rc == 1:
                self.property_failures.append(seed)
        else:
            rc = self.run_stage(f"test bed (seed {seed}, {self.preset}, {self.size})",
                                ["testbed", "--out", tb, "--seed", seed, "--preset", self.preset, "--size", self.size,
                                 "--threads", 1, "--overwrite"], allowed=(0, 1))
            if rc == 1:
                self.property_failures.append(seed)
        plan = PLANS[self.bed]
        for router in ROUTERS:
            self.run_stage(f"router {router}", ["train-router", *cfg, "--router_type", router,
                                                 "--output_dir", root / "btm" / router, *plan.router_flags[router],
                                                 "--overwrite"])
        self.run_stage("dispatch baseline (prompt classifier, L2 chosen on dev)",
                       ["train-dispatch", *cfg, "--output_dir", root / "dispatch", "--overwrite"])
        self.run_stage("replay_sft baseline (plain fine-tuning on the router's data)",
                       ["distill", *cfg, *plan.replay_flags, "--output_dir", root / "replay_sft", "--overwrite"])
        teacher = root / "btm" / "token_level" / "best_router.safetensors"
        self.run_stage("distil a student from the token_level router",
                       ["distill", *cfg, "--teacher_type", "btm", "--btm_router", teacher, "--student_init",
                        "foundation", "--output_dir", root / "distill", *plan.distill_flags, "--overwrite"])
        for method in MERGES:
            self.run_stage(f"merge {method} (parameters chosen on dev data)",
                           ["merge", *cfg, "--method", method, "--auto", *plan.merge_flags.get(method, []), "--out", root / f"merge_{method}",
                            "--overwrite"])
        moe, moe_lora = self.moe_stages(root, tb, plan)
        best_w = best_ensemble_weight(tb / "testbed.json")
        models = [
            "foundation", "sft",
            f"ensemble=ensemble:foundation_weight={best_w:g},sft_weight={round(1 - best_w, 10):g}",  # dev-best weight
            *(f"{r}=btm:router={root / 'btm' / r / 'best_router.safetensors'}" for r in ROUTERS),
            f"dispatch=dispatch:classifier={root / 'dispatch'}",
            f"replay_sft=replay:pretrained={root / 'replay_sft' / 'best_student'}",
            f"distill=distill:pretrained={root / 'distill' / 'best_student'}",
            *(f"merge_{m}=hf:pretrained={root / f'merge_{m}'}" for m in MERGES),
            f"moe=moe:pretrained={moe}",
            *([f"moe_lora=moe:pretrained={moe_lora}"] if moe_lora else []),
        ]
        run_dir = root / "eval"
        tasks = self.tasks or BED_TASKS[self.bed]
        argv = ["evaluate", *cfg, "--models", *models, "--tasks", *tasks, "--output_dir", run_dir,
                "--log_samples", "--overwrite"]
        if self.limit:
            argv += ["--limit", self.limit]
        self.run_stage("evaluate the zoo through lm-eval", argv)
        return run_dir

    def moe_stages(self, root: Path, tb: Path, plan: BedPlan) -> tuple[Path, Path | None]:
        """The MoE checkpoint (issue 21): build each grid point (``sopmoe moe``, top-2), train its gates
        (``sopmoe train-moe``, best epoch on dev loss), score each trained checkpoint on dev at each top-k (the
        training kinds' families, as for the ensemble's weight), serve the best at its k (``sopmoe moe --from``).
        With ``moe_lora_flags``, BTX's fine-tuning stage continues from the chosen gates: its own row."""
        from sopmoe_models.cards import BedCard
        from training.moe_choice import Candidate, choose

        cfg = ["--config", tb / "config.yaml"]
        candidates, built = [], set()
        for attention, init, lr in plan.moe_grid:
            build = root / "moe" / f"{attention}-{init}"
            if build not in built:
                built.add(build)
                self.run_stage(f"moe build (shared weights {attention}, gates {init})",
                               ["moe", *cfg, "--attention", attention, "--gate_init", init, "--top_k", 2, "--out",
                                build, "--overwrite"])
            run = root / "moe" / f"{attention}-{init}-lr{lr:g}"
            self.run_stage(f"moe gates ({attention}, {init}, lr {lr:g})",
                           ["train-moe", *cfg, "--moe", build, "--output_dir", run, "--learning_rate", lr,
                            *plan.moe_flags, "--overwrite"])
            candidates.append(Candidate(run / "best_student", {"attention": attention, "gate_init": init,
                                                                "learning_rate": lr}))
        from sopmoe_models.config import load_config

        bed_cfg = load_config(tb / "config.yaml")
        t0, c0 = time.perf_counter(), time.process_time()
        best, k, table = choose(candidates, MOE_TOP_KS, bed_cfg.data.dev_dir, ENSEMBLE_CHOICE_FAMILIES,
                                style=bed_cfg.data.prompt_format, dtype=_score_dtype(bed_cfg), limit=plan.moe_dev_limit)
        write_json(root / "moe" / "choice.json", {
            "families": list(ENSEMBLE_CHOICE_FAMILIES), "split": "dev", "top_ks": list(MOE_TOP_KS),
            "chosen": {**best.settings, "top_k": k, "path": str(best.path), **best.dev[k]}, "grid": table,
            "bed_seed": BedCard.read(tb / "testbed.json").seed})
        self.stages.append({"stage": "moe: choose on dev", "command": "(in process) training.moe_choice.choose",
                            "rc": 0, "wall_s": round(time.perf_counter() - t0, 1),
                            "cpu_s": round(time.process_time() - c0, 1)})
        chosen = root / "moe" / "chosen"
        self.run_stage(f"moe: serve the dev choice ({best.settings['attention']}, {best.settings['gate_init']}, "
                       f"top-{k})", ["moe", "--from", best.path, "--top_k", k, "--out", chosen, "--overwrite"])
        if plan.moe_lora_flags is None:
            return chosen, None
        lora = root / "moe" / "lora"
        self.run_stage("moe_lora: the chosen gates + LoRA on attention (BTX's fine-tuning stage)",
                       ["train-moe", *cfg, "--moe", best.path, "--lora_attention", "--output_dir", lora,
                        *plan.moe_lora_flags, "--overwrite"])
        self.run_stage(f"moe_lora: served top-{k}", ["moe", "--from", lora / "best_student", "--top_k", k, "--out",
                                                   root / "moe" / "lora_chosen", "--overwrite"])
        return chosen, root / "moe" / "lora_chosen"

    def claim_folder(self) -> None:
        """Refuse a non-empty --out the demo did not write; mark it as the demo's."""
        from sopmoe_models.errors import UserError
        from sopmoe_models.outputs import has_content, write_marker, written_by

        if has_content(self.out) and not (written_by(self.out, "demo") or (self.out / "demo.json").is_file()):
            raise UserError(f"--out {self.out} is not empty and is not a demo folder (no demo.json); the demo rebuilds "
                            "everything in its folder: choose another --out")
        write_marker(self.out, "demo")

    def run(self, update_baseline: bool = False) -> int:
        self.claim_folder()
        t0 = time.perf_counter()
        ok = True
        try:
            runs = [self.pipeline(seed) for seed in self.seeds]
            results = self.results if update_baseline else self.out / "results"
            results.mkdir(parents=True, exist_ok=True)
            board = ["leaderboard", *runs, "--out", results / "LEADERBOARD.md", "--png", results / "leaderboard.png",
                     "--pareto", results / "pareto.png", "--json", results / "leaderboard.json"]
            if update_baseline and self.readme is not None:
                board += ["--readme", self.readme, "--readme-section", "real-results" if self.bed == "real" else "results"]
            self.run_stage("leaderboard", board)
            # The baseline is the first seed's run: CI's one-seed demo reproduces it bit for bit (one thread). The
            # real bed's baseline is its full run; its ci size is a smoke of the code path with nothing to compare.
            if self.bed == "real" and self.size != "full":
                log.info("real bed at size %s: a smoke run, no regression baseline to compare with", self.size)
            else:
                regress = ["regress", "--baseline", self.baseline, "--current", runs[0]]
                if update_baseline:
                    regress.append("--update")
                self.run_stage("regression check against the baseline", regress)
        except StageFailed as e:
            log.error("%s", e)
            ok = False
        finally:
            self.write_record(time.perf_counter() - t0, ok)
        self.print_summary()
        return 0 if ok else 1

    def write_record(self, wall_s: float, ok: bool) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        record = {"seeds": self.seeds, "size": self.size, "ok": ok, "wall_s": round(wall_s, 1),
                  "testbed_property_failures": self.property_failures, "stages": self.stages}
        write_json(self.out / "demo.json", record)

    def print_summary(self) -> None:
        from rich.markup import escape
        from rich.table import Table

        table = Table(title=escape(f"sopmoe demo ({self.out})"))
        for col in ("stage", "exit", "wall s", "cpu s"):
            table.add_column(col, justify="left" if col == "stage" else "right")
        for s in self.stages:
            table.add_row(escape(s["stage"]), "[green]0[/]" if s["rc"] == 0 else f"[red]{s['rc']}[/]",
                          f"{s['wall_s']:.0f}", f"{s['cpu_s']:.0f}")
        table.add_row("[bold]total[/]", "", f"{sum(s['wall_s'] for s in self.stages):.0f}",
                      f"{sum(s['cpu_s'] for s in self.stages):.0f}")
        console = new_console()
        console.print(table)
        if self.property_failures:
            console.print(f"[bold red]test-bed property check failed for seed(s) {self.property_failures}: "
                          "see testbed.json (fusion may have less to win there)[/]")
        for folder in (self.out / "results", self.results):
            board = folder / "LEADERBOARD.md"
            if board.is_file() and (folder != self.results or any(s["stage"] == "leaderboard" for s in self.stages)):
                console.print(escape(f"leaderboard: {board}  charts: {folder / 'leaderboard.png'}, "
                                     f"{folder / 'pareto.png'}"))
                break


def _score_dtype(cfg) -> str:
    """The dtype the bed's experts are scored in (its config; ``auto`` on a CPU is float32)."""
    d = cfg.models.foundation.dtype
    return "float32" if d == "auto" else d


def _same_bed(record: Path, seed: int, preset: str) -> bool:
    card = BedCard.read(record)
    return card.seed == seed and card.preset == preset


def best_ensemble_weight(testbed_json: Path, families=ENSEMBLE_CHOICE_FAMILIES) -> float:
    """The probability-mixture foundation weight with the best mean dev accuracy over ``families`` in the test bed's
    dev sweep (``testbed.json``): chosen like every other model, on dev data and without composition examples."""
    sweep = BedCard.read(testbed_json).sweep
    labels = [k for k in sweep[families[0]] if k.startswith("mix_")]
    best = max(labels, key=lambda k: sum(sweep[f][k]["acc"] for f in families))
    return float(best[len("mix_"):])
