"""Distil the fused teacher into one student (DESIGN §6): KD + task loss, full fine-tune or LoRA, under accelerate.

Loss per optimizer step (training/kd_losses.py): ``distill_loss_weight · T² · D(p_T^(T) ‖ p_S^(T)) +
task_loss_weight · CE``, each averaged over the output tokens of the whole step (all micro-batches of the gradient
accumulation window, all processes), so the result does not depend on how a batch is split across devices.

Data parallel: ``distill.batch_size`` is the *global* batch. Every process builds the same seeded order for an
epoch and takes its contiguous slice of each batch (an empty slice becomes a dummy example with no output tokens,
so every rank joins every all-reduce); the teacher runs on each process's slice (or reads the cache). Each rank's
loss is normalised by the global token count of the step and multiplied by the number of processes because DDP
averages gradients. Dropout (LoRA dropout) is reseeded at each step from (seed, step, rank), so a run resumed from
a checkpoint continues exactly as an uninterrupted one would.

Entry point: :func:`train` (``sopmoe distill``; several processes with ``accelerate launch -m harness.cli distill``).

A run folder that already holds a trained student is never replaced silently
(:func:`training.distill_checkpoint.guard_run_folder`):
``resume=True`` continues its checkpoint (the best so far is kept unless a later epoch beats it; other settings or
training data are refused), ``overwrite=True`` discards it (the keyed teacher cache stays: it is reused only when
teacher and data match), anything else is an error.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sopmoe_models.cards import DistillCard
from sopmoe_models.console import new_progress
from sopmoe_models.data import IGNORE_INDEX, collate, encode_example, load_training_examples
from sopmoe_models.errors import UserError
from sopmoe_models.experts import check_same_tokenizer, load_tokenizer, output_rows, same_tokenizer_files
from sopmoe_models.factory import build_teacher
from sopmoe_models.moe import gate_parameters, is_moe_folder, moe_cost, moe_experts, router_balance_loss
from sopmoe_models.outputs import remove_leftovers
from training import distill_checkpoint as ckpt
from training.distill_teacher import (
    LiveTeacher,
    get_cache,
    n_output_tokens,
    teacher_fingerprint,
)
from training.kd_losses import distill_loss
from training.toolkit import TrainingDiverged, atomic_path, lr_factor

if TYPE_CHECKING:
    from sopmoe_models.config import SopmoeConfig

log = logging.getLogger(__name__)

DUMMY = -1  # index of the placeholder example of a process whose slice of a batch is empty


# --- pieces ----------------------------------------------------------------------------------------------------


def student_path(cfg: SopmoeConfig) -> str:
    init = cfg.distill.student_init
    path = {"foundation": cfg.models.foundation.path, "sft": cfg.models.sft.path}.get(init, init)
    if not path:
        raise ValueError(f"student_init {init!r}: models.{init}.path is not set (config or --{init})")
    p = Path(path).expanduser()
    if not (p / "config.json").is_file():
        raise FileNotFoundError(f"--student_init {init}: {p} is not a model folder (no config.json)")
    return str(p)


def load_student(cfg: SopmoeConfig, teacher_tokenizer, device: torch.device) -> torch.nn.Module:
    """A trainable copy of the chosen init (never the teacher's expert objects); LoRA-wrapped when enabled."""
    from transformers import AutoModelForCausalLM

    d = cfg.distill
    path = student_path(cfg)
    foundation = cfg.models.foundation.path
    if not (foundation and same_tokenizer_files(Path(path), Path(foundation))):  # identical files: one tokenizer
        check_same_tokenizer(load_tokenizer(path), teacher_tokenizer, "student", "teacher")
    dtype = torch.bfloat16 if (d.lora.enabled and d.bf16) else torch.float32  # full FT keeps fp32 master weights
    moe = is_moe_folder(path)
    if d.trainable == "router" and not moe:
        raise UserError(f"distill.trainable router: the student {path} is not a Mixture-of-Experts checkpoint; make one "
                        "with `sopmoe moe` (or train every weight: distill.trainable all)")
    # An MoE student trains with router_top_k experts per token (default: all, soft routing); its saved checkpoint
    # keeps the top-k it was built with (the config.json it came with, see ckpt.save_student).
    extra = {"num_experts_per_tok": d.router_top_k or moe_experts(path)} if moe else {}
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=False, **extra).to(device)
    if d.gradient_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers 5: the old name warns (gone in v6)
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if d.lora.enabled:
        from peft import LoraConfig, get_peft_model

        lc = d.lora
        model = get_peft_model(
            model, LoraConfig(r=lc.r, lora_alpha=lc.alpha, lora_dropout=lc.dropout, target_modules=list(lc.target_modules),
                              task_type="CAUSAL_LM")
        )
    if d.trainable == "router":  # the routers only (BTX), plus the LoRA adapters peft left trainable
        gates = {n for n, _ in gate_parameters(model)}
        for n, p in model.named_parameters():
            p.requires_grad_(n in gates or (d.lora.enabled and "lora_" in n))
    model.train()
    return model


def encode_file(path: str, tokenizer, cfg: SopmoeConfig, limit: int | None = None) -> list[dict[str, list[int]]]:
    examples = load_training_examples(path, cfg.data.train_kinds)
    examples = examples[:limit] if limit else examples
    return [encode_example(tokenizer, ex, style=cfg.data.prompt_format, max_length=cfg.data.max_length) for ex in examples]


def epoch_batches(n: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed * 100_003 + epoch)
    order = torch.randperm(n, generator=g).tolist()
    return [order[i : i + batch_size] for i in range(0, n, batch_size)]


def rank_slice(indices: list[int], world: int, rank: int) -> list[int]:
    per = -(-len(indices) // world)
    return indices[rank * per : (rank + 1) * per] or [DUMMY]


def make_batch(features: list[dict], indices: list[int], pad_id: int, device) -> dict[str, torch.Tensor]:
    dummy = {"input_ids": [pad_id], "labels": [IGNORE_INDEX]}
    rows = [features[i] if i != DUMMY else dummy for i in indices]
    return {k: v.to(device) for k, v in collate(rows, pad_id).items()}


def _loss_kwargs(cfg: SopmoeConfig) -> dict[str, Any]:
    d = cfg.distill
    return dict(temperature=d.temperature, distill_loss_weight=d.distill_loss_weight, task_loss_weight=d.task_loss_weight,
                kind=d.kl, beta=d.jsd_beta)


@torch.no_grad()
def evaluate(model, targets, features, cfg: SopmoeConfig, accelerator, pad_id: int) -> dict[str, float]:
    """Per-token KD, CE and weighted loss on ``features`` (each process scores its slice; sums are all-reduced)."""
    model.eval()
    world, rank = accelerator.num_processes, accelerator.process_index
    mine = rank_slice(list(range(len(features))), world, rank)
    sums = torch.zeros(3, device=accelerator.device, dtype=torch.float64)  # kd, ce, tokens
    for start in range(0, len(mine), cfg.distill.batch_size):
        idx = mine[start : start + cfg.distill.batch_size]
        batch = make_batch(features, idx, pad_id, accelerator.device)
        with accelerator.autocast():
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        out = distill_loss(logits, batch["labels"], targets(idx, batch), normalizer=1.0, **_loss_kwargs(cfg))
        sums += torch.tensor([out.kd.item(), out.ce.item(), out.n_tokens], device=sums.device, dtype=sums.dtype)
    sums = accelerator.reduce(sums, "sum")
    model.train()
    n = max(float(sums[2]), 1.0)
    kd, ce = float(sums[0]) / n, float(sums[1]) / n
    d = cfg.distill
    return {"loss": d.distill_loss_weight * kd + d.task_loss_weight * ce, "kd": kd, "ce": ce, "tokens": int(sums[2])}


def _no_teacher(indices: list[int], batch: dict[str, torch.Tensor]) -> None:
    return None


def _teacher_targets(teacher, features, data_file, cfg: SopmoeConfig, accelerator, out_dir: Path, fp: dict, what: str):
    k = cfg.distill.teacher_cache_topk
    if not k:
        return LiveTeacher(teacher), None
    root = Path(cfg.distill.teacher_cache_dir) if cfg.distill.teacher_cache_dir else out_dir / "teacher_cache"
    t0 = time.time()
    cache = get_cache(teacher, features, data_file=data_file, k=k, temperature=cfg.distill.temperature, cache_root=root,
                      pad_id=teacher.tokenizer.pad_token_id, batch_size=cfg.distill.batch_size, accelerator=accelerator,
                      teacher_fp=fp)
    info = {"path": str(cache.path), "built": cache.built, "seconds": round(time.time() - t0, 3), "rows": len(cache.tail)}
    log.info("teacher cache (%s): %s %s in %.1fs", what, "built" if cache.built else "reused", cache.path, info["seconds"])
    return cache, info


def _same_run(saved: dict, cfg: SopmoeConfig, saved_data: dict | None = None) -> None:
    """Refuse to resume a checkpoint written under other settings or data (it would not continue the same run)."""
    if saved_data is not None:
        now_data = ckpt.data_identity(cfg)
        for key, name in (("train_file_sha256", "data.train_file"), ("eval_file_sha256", "data.eval_file")):
            if saved_data.get(key) != now_data[key]:
                raise UserError(f"--resume: {name} has other content than the file the checkpoint was trained on "
                                "(its bytes are checked, not only its path); resume with the same data or drop --resume")
    now = cfg.to_dict()
    for section in ("models", "data", "ensemble", "distill"):
        a, b = dict(saved.get(section, {})), dict(now.get(section, {}))
        for volatile in ("output_dir", "save_steps", "task_data_dir"):
            a.pop(volatile, None), b.pop(volatile, None)
        diff = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        if diff:
            raise UserError(f"--resume: the checkpoint was written with other {section}.{diff[0]} "
                             f"({a.get(diff[0])!r} vs {b.get(diff[0])!r}); use the same config or drop --resume")


# --- the run -----------------------------------------------------------------------------------------------------
# train() reads as its steps: the run folder, the models and data (_setup), the state to start from (_start_state),
# then per epoch the optimizer steps (_optimizer_step) and the epoch's evaluation and best (_end_of_epoch), and the
# final student (_finish). _Run holds what stays fixed from setup to the end.


@dataclass
class _Run:
    cfg: SopmoeConfig
    accelerator: Any
    out_dir: Path
    wall0: float  # when the run (this process) started: wall clock and CPU
    cpu0: float
    tok: Any = None
    pad_id: int = 0
    fp: dict = field(default_factory=dict)  # the teacher's fingerprint
    train_feats: list = field(default_factory=list)
    eval_feats: list = field(default_factory=list)
    train_targets: Any = None
    eval_targets: Any = None
    caches: dict = field(default_factory=dict)  # teacher caches: {"train": info, "eval": info}
    model: Any = None  # the student (wrapped by accelerate once prepared)
    optimizer: Any = None
    params: list = field(default_factory=list)
    total_steps: int = 0
    warmup: int = 0
    loss_kw: dict = field(default_factory=dict)
    writer: Any = None
    moe_source: Path | None = None  # an MoE student's checkpoint: its config.json and dtype are kept on save
    balance: float = 0.0  # an MoE student's router balance weight (0: none)
    n_experts: int = 0

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def save(self, state: dict, wall_base: float, cpu_base: float) -> None:
        """Checkpoint for --resume (times so far included), written by the main process; every process waits."""
        state["wall_s"] = wall_base + time.time() - self.wall0
        state["cpu_s"] = cpu_base + time.process_time() - self.cpu0
        if self.main:
            ckpt.save_checkpoint(self.out_dir, self.accelerator.unwrap_model(self.model), self.optimizer, state)
        self.accelerator.wait_for_everyone()


def _accelerator(mixed_precision: str, *, cpu: bool):
    """An ``Accelerator`` at ``mixed_precision``. accelerate keeps one state per process and refuses a second
    precision; one process may train several students in turn (``sopmoe demo`` runs its stages in process; so does a
    test session), so a single, non-distributed process drops the old state first. accelerate has no public call for
    this: ``AcceleratorState._reset_state`` is what its own test utilities use."""
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    old = AcceleratorState._shared_state.get("_mixed_precision")
    if old is not None and old != mixed_precision and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        AcceleratorState._reset_state()
    return Accelerator(mixed_precision=mixed_precision, cpu=cpu)


def train(cfg: SopmoeConfig, *, resume: bool = False, overwrite: bool = False, allow_missing_fingerprint: bool = False,
          on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Run (or resume) distillation as configured; returns the ``distill.json`` card of the best student."""

    d = cfg.distill
    wall0, cpu0 = time.time(), time.process_time()
    # Several processes without CUDA (torchrun / accelerate launch on a CPU machine): DDP over gloo on the CPU.
    cpu_ddp = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    accelerator = _accelerator("bf16" if d.bf16 else "no", cpu=cpu_ddp)
    run = _Run(cfg, accelerator, _run_folder(cfg, accelerator, resume=resume, overwrite=overwrite), wall0, cpu0)
    torch.manual_seed(d.seed)
    _setup(run, allow_missing_fingerprint=allow_missing_fingerprint)
    state = _start_state(run, resume=resume)
    run.model, run.optimizer = accelerator.prepare(run.model, run.optimizer)
    if run.main:
        from torch.utils.tensorboard import SummaryWriter

        run.writer = SummaryWriter(str(Path("outputs/tensorboard") / f"distill-{run.out_dir.name}"))
    log.info("distilling %s teacher into %s (%s, %d trainable params) on %d process(es): %d examples, %d steps",
             d.teacher_type, d.student_init, _finetuning(d), sum(p.numel() for p in run.params),
             run.world, len(run.train_feats), run.total_steps)
    run.loss_kw = _loss_kwargs(cfg)

    wall_base, cpu_base = state["wall_s"], state["cpu_s"]

    with new_progress(disable=not run.main, transient=False) as progress:
        while state["epoch"] < d.num_epochs and not state["done"]:
            epoch = state["epoch"]
            batches = epoch_batches(len(run.train_feats), d.batch_size, d.seed, epoch)
            bar = progress.add_task(f"epoch {epoch + 1}/{d.num_epochs}", total=len(batches), completed=state["batch"])
            t_epoch = time.time()
            while state["batch"] < len(batches):
                loss = _optimizer_step(run, state, batches[state["batch"] : state["batch"] + d.gradient_accumulation_steps])
                progress.update(bar, completed=state["batch"], description=f"epoch {epoch + 1}/{d.num_epochs} loss {loss:.4f}")
                if state["step"] % d.save_steps == 0 and state["batch"] < len(batches):
                    run.save(state, wall_base, cpu_base)
                if on_step is not None:
                    on_step(state["step"])
            _end_of_epoch(run, state, t_epoch)
            run.save(state, wall_base, cpu_base)

    state["done"] = True
    run.save(state, wall_base, cpu_base)
    return _finish(run, state)


def _run_folder(cfg: SopmoeConfig, accelerator, *, resume: bool, overwrite: bool) -> Path:
    """The checked run folder (``distill.output_dir``), created, with unfinished temporary folders cleared."""
    d = cfg.distill
    world, main = accelerator.num_processes, accelerator.is_main_process
    if d.batch_size < world:
        raise ValueError(f"distill.batch_size ({d.batch_size}) is the global batch; it must be >= the {world} processes")
    if not cfg.data.train_file:
        raise UserError("data.train_file is not set (a JSONL of {input, output} to distil on)")
    out_dir = Path(d.output_dir)
    ckpt.guard_run_folder(cfg, out_dir, resume=resume, overwrite=overwrite, main=main)
    accelerator.wait_for_everyone()
    out_dir.mkdir(parents=True, exist_ok=True)
    if main:
        for name in (ckpt.CHECKPOINT, ckpt.BEST_STUDENT):
            remove_leftovers(out_dir, name)
    return out_dir


def _setup(run: _Run, *, allow_missing_fingerprint: bool) -> None:
    """Teacher (unless plain fine-tuning), student, encoded data, teacher targets, optimizer and schedule."""
    cfg, accelerator = run.cfg, run.accelerator
    d = cfg.distill
    if d.teacher_type == "none":  # plain fine-tuning (replay): no teacher is loaded or run
        teacher, run.fp = None, {"class": None, "name": "none (plain fine-tuning on the references)"}
        run.tok = load_tokenizer(student_path(cfg))  # cross-entropy over all the student's output rows
    else:
        teacher = build_teacher(cfg, accelerator.device, allow_missing_fingerprint=allow_missing_fingerprint)
        run.fp = teacher_fingerprint(teacher)
        run.tok = teacher.tokenizer
    run.pad_id = run.tok.pad_token_id
    student = load_student(cfg, run.tok, accelerator.device)
    if is_moe_folder(student_path(cfg)):  # the checkpoint's own balance weight (sopmoe moe --router_aux_loss_coef)
        run.moe_source = Path(student_path(cfg))
        run.balance = float(getattr(student.config, "router_aux_loss_coef", 0.0) or 0.0)
        run.n_experts = moe_experts(run.moe_source)
    if teacher is not None and output_rows(student) < teacher.width:
        raise ValueError(f"the student ({student_path(cfg)}) has {output_rows(student)} output rows but the teacher's "
                         f"distribution covers {teacher.width} (the experts' padded lm_head); use a student with them all")
    run.train_feats = encode_file(cfg.data.train_file, run.tok, cfg, d.max_train_examples)
    run.eval_feats = encode_file(cfg.data.eval_file, run.tok, cfg) if cfg.data.eval_file else []
    if not run.eval_feats:
        log.warning("data.eval_file is not set: the best student is chosen by training loss")
    train_cache = eval_cache = None
    if teacher is None:
        run.train_targets, run.eval_targets = _no_teacher, _no_teacher
    else:
        run.train_targets, train_cache = _teacher_targets(teacher, run.train_feats, cfg.data.train_file, cfg,
                                                          accelerator, run.out_dir, run.fp, "train")
        run.eval_targets, eval_cache = (
            _teacher_targets(teacher, run.eval_feats, cfg.data.eval_file, cfg, accelerator, run.out_dir, run.fp, "eval")
            if run.eval_feats else (None, None)
        )
    run.caches = {"train": train_cache, "eval": eval_cache}
    run.model = student
    run.params = [p for p in student.parameters() if p.requires_grad]
    run.optimizer = torch.optim.AdamW(run.params, lr=d.learning_rate, weight_decay=d.weight_decay)
    n_batches = math.ceil(len(run.train_feats) / d.batch_size)
    steps_per_epoch = math.ceil(n_batches / d.gradient_accumulation_steps)
    run.total_steps = steps_per_epoch * d.num_epochs
    run.warmup = math.ceil(d.warmup_ratio * run.total_steps)


def _start_state(run: _Run, *, resume: bool) -> dict[str, Any]:
    """A fresh state, or the checkpoint's (student and optimizer restored) when resuming the same run."""
    cfg = run.cfg
    state: dict[str, Any] = {"epoch": 0, "batch": 0, "step": 0, "sums": [0.0, 0.0, 0.0, 0], "history": [],
                             "best": None, "wall_s": 0.0, "cpu_s": 0.0, "done": False, "config": cfg.to_dict(),
                             "data": ckpt.data_identity(cfg)}
    if not resume:
        return state
    loaded = ckpt.load_checkpoint(run.out_dir, run.model, run.optimizer)
    if loaded is None:
        log.warning("--resume: no checkpoint in %s; starting from the beginning", run.out_dir)
        return state
    if "data" not in loaded:
        log.warning("--resume: %s predates data checks; cannot verify the training file is the same", run.out_dir)
    _same_run(loaded["config"], cfg, loaded.get("data"))
    state = {**loaded, "data": ckpt.data_identity(cfg)}
    log.info("resumed from %s: epoch %d, batch %d, step %d", run.out_dir / ckpt.CHECKPOINT, state["epoch"] + 1,
             state["batch"], state["step"])
    return state


def _optimizer_step(run: _Run, state: dict[str, Any], window: list[list[int]]) -> float:
    """One optimizer step over the micro-batches of ``window`` (gradient accumulation), on every process; the
    divergence guard stops before a non-finite step is applied. Advances ``state``; returns the step's loss."""
    d, accelerator, model, optimizer = run.cfg.distill, run.accelerator, run.model, run.optimizer
    world, rank = run.world, run.rank
    n_window = sum(n_output_tokens(run.train_feats[i]) for b in window for i in b)
    torch.manual_seed(d.seed * 1_000_003 + state["step"] * 9973 + rank)  # dropout: a function of the step
    for g in optimizer.param_groups:
        g["lr"] = d.learning_rate * lr_factor(state["step"], run.total_steps, run.warmup)
    acc = torch.zeros(3, device=accelerator.device, dtype=torch.float64)
    for j, global_batch in enumerate(window):
        idx = rank_slice(global_batch, world, rank)
        batch = make_batch(run.train_feats, idx, run.pad_id, accelerator.device)
        sync = nullcontext() if j == len(window) - 1 else accelerator.no_sync(model)
        with sync:
            moe_kw = {"output_router_logits": True} if run.balance else {}
            output = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], **moe_kw)
            out = distill_loss(output.logits, batch["labels"], run.train_targets(idx, batch),
                               normalizer=max(n_window, 1), **run.loss_kw)
            loss = out.loss * world  # DDP averages over ranks; the loss is already global
            if run.balance:  # an MoE student: the Switch balance term, a per-rank mean (DDP's average is right)
                balance = router_balance_loss(output.router_logits, batch["attention_mask"], run.n_experts)
                loss = loss + run.balance * balance / len(window)
            accelerator.backward(loss)
        acc += torch.tensor([out.loss.item(), out.kd.item(), out.ce.item()], device=acc.device, dtype=acc.dtype)
    acc = accelerator.reduce(acc, "sum")
    if not bool(torch.isfinite(acc).all()):
        where = f"epoch {state['epoch'] + 1}, step {state['step'] + 1}"
        log.error("non-finite loss (%s) at %s; stopping. Last good checkpoint kept in %s", acc[0].item(), where,
                  run.out_dir / ckpt.CHECKPOINT)
        raise TrainingDiverged(f"loss became {acc[0].item()} at {where}; last good checkpoint kept in "
                               f"{run.out_dir / ckpt.CHECKPOINT} (lower distill.learning_rate and rerun)")
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state["step"] += 1
    state["batch"] += len(window)
    s = state["sums"]
    state["sums"] = [s[0] + float(acc[0]), s[1] + float(acc[1]), s[2] + float(acc[2]), s[3] + 1]
    if run.writer:
        run.writer.add_scalar("train/loss", float(acc[0]), state["step"])
        run.writer.add_scalar("train/kd", float(acc[1]), state["step"])
        run.writer.add_scalar("train/ce", float(acc[2]), state["step"])
        run.writer.add_scalar("train/lr", optimizer.param_groups[0]["lr"], state["step"])
    return float(acc[0])


def _end_of_epoch(run: _Run, state: dict[str, Any], t_epoch: float) -> None:
    """Evaluate, record the epoch in the history, keep the best student; ``state`` moves to the next epoch."""
    epoch, accelerator = state["epoch"], run.accelerator
    s = state["sums"]
    train_m = {"loss": s[0] / max(s[3], 1), "kd": s[1] / max(s[3], 1), "ce": s[2] / max(s[3], 1)}
    eval_m = (evaluate(accelerator.unwrap_model(run.model), run.eval_targets, run.eval_feats, run.cfg, accelerator,
                       run.pad_id) if run.eval_feats else None)
    score = eval_m["loss"] if eval_m else train_m["loss"]
    rec = {"epoch": epoch + 1, "step": state["step"], "train": train_m, "eval": eval_m,
           "lr": run.optimizer.param_groups[0]["lr"], "epoch_wall_s": round(time.time() - t_epoch, 3)}
    state["history"].append(rec)
    log.info("epoch %d: train loss %.4f (kd %.4f, ce %.4f)%s", epoch + 1, train_m["loss"], train_m["kd"], train_m["ce"],
             f"; eval loss {eval_m['loss']:.4f} (kd {eval_m['kd']:.4f}, ce {eval_m['ce']:.4f})" if eval_m else "")
    if run.writer and eval_m:
        for k_ in ("loss", "kd", "ce"):
            run.writer.add_scalar(f"eval/{k_}", eval_m[k_], epoch + 1)
    if state["best"] is None or score < state["best"]["score"]:
        state["best"] = {"epoch": epoch + 1, "score": score, "metric": "eval_loss" if eval_m else "train_loss"}
        if run.main:
            _save_best(accelerator.unwrap_model(run.model), run.tok, run.out_dir, run.cfg, state, run.fp, run.moe_source)
    state.update(epoch=epoch + 1, batch=0, sums=[0.0, 0.0, 0.0, 0])


def _finish(run: _Run, state: dict[str, Any]) -> dict[str, Any]:
    """Write the best student (LoRA merged into its base) with its card, and the run's card and config."""
    cfg, out_dir = run.cfg, run.out_dir
    card = _card(cfg, state, run.fp, run.world, run.caches)
    if run.main:
        unwrapped = run.accelerator.unwrap_model(run.model)
        final = ckpt.merged_student(unwrapped, out_dir / ckpt.BEST_ADAPTER) if cfg.distill.lora.enabled else None
        if final is not None:
            ckpt.save_student(final, run.tok, out_dir, card, moe_source=run.moe_source)
        else:
            card.write(out_dir / ckpt.BEST_STUDENT / ckpt.CARD)
        card.write(out_dir / ckpt.CARD)
        cfg.save(out_dir / "config.yaml")
        run.writer.close()
    run.accelerator.wait_for_everyone()
    log.info("best student (epoch %d, %s %.4f) in %s", state["best"]["epoch"], state["best"]["metric"],
             state["best"]["score"], out_dir / ckpt.BEST_STUDENT)
    return card.to_dict()


def _save_best(model, tok, out_dir: Path, cfg: SopmoeConfig, state: dict, fp: dict,
               moe_source: Path | None = None) -> None:
    if cfg.distill.lora.enabled:  # keep the LoRA tensors; merged into the base once, when the run ends
        from safetensors.torch import save_file

        with atomic_path(out_dir / ckpt.BEST_ADAPTER) as tmp:
            save_file(ckpt.trainable_state(model), str(tmp))
    else:
        ckpt.save_student(model, tok, out_dir, _card(cfg, state, fp, None, None), moe_source=moe_source)


def _finetuning(d) -> str:
    """What trained: full | lora | router (an MoE's gates) | router+lora (BTX's fine-tuning stage)."""
    if d.trainable == "router":
        return "router+lora" if d.lora.enabled else "router"
    return "lora" if d.lora.enabled else "full"


def _card(cfg: SopmoeConfig, state: dict, fp: dict, world: int | None, caches: dict | None) -> DistillCard:
    d = cfg.distill
    return DistillCard.new(
        kind="sopmoe_distill",
        teacher={"type": d.teacher_type, "btm_router": d.btm_router, "fingerprint": fp},
        student_init=d.student_init,
        student_init_path=student_path(cfg),
        finetuning=_finetuning(d),
        inference_cost=moe_cost(student_path(cfg)),
        best=state["best"],
        epochs=state["history"],
        wall_time_s=round(state["wall_s"], 3),
        cpu_time_s=round(state["cpu_s"], 3),
        num_processes=world,
        teacher_cache=caches,
        config=cfg.to_dict(),
    )
