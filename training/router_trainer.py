"""Train a router over two frozen experts (DESIGN §6; losses in :mod:`sopmoe_models.routers.losses`).

``train_router(cfg)`` reads the ``btm`` and ``data`` sections: mixture NLL on output tokens + ``load_balance_weight``
× Switch balance + ``sparsity_weight`` × gate entropy, AdamW on the router's parameters only (the experts have
``requires_grad=False`` and no optimizer state), gradient accumulation, linear warmup (``warmup_ratio``) then
linear decay, gradient-norm clipping at 1, an eval NLL on ``data.eval_file`` after every epoch, the best epoch kept
as ``best_router.safetensors`` + ``router.json``, and ``last/`` for ``resume=True`` (see
:mod:`training.router_state`): a run stopped mid-epoch and resumed ends with the same router as an uninterrupted
one, because the batch order is a pure function of (seed, epoch). A NaN/inf loss stops training before the
optimizer step, keeping the last good checkpoints. ``posterior`` has nothing to learn by gradient: training
estimates its prior on the training data (EM, :func:`~sopmoe_models.routers.posterior.estimate_prior`).

An output folder that already holds a trained router is never replaced silently (:func:`guard_output_dir`):
``resume=True`` continues it (with the best recorded so far, so only a better epoch replaces the best checkpoint; a
different router type, trajectory setting, expert or training/eval file is refused), ``overwrite=True`` discards it
and starts again; anything else is an error.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sopmoe_models.cards import RouterCard
from sopmoe_models.console import new_progress
from sopmoe_models.data import Example, collate, encode_example, load_training_examples
from sopmoe_models.errors import UserError
from sopmoe_models.experts import load_experts_from_config
from sopmoe_models.outputs import file_sha256, leftovers, overlaps, remove_leftovers
from sopmoe_models.routers import build_router, check_fingerprints, router_kwargs
from sopmoe_models.routers.base import BEST, CARD, parse_card
from sopmoe_models.routers.losses import gate_means, router_loss, shifted_targets
from sopmoe_models.routers.posterior import estimate_prior
from training.router_state import LAST, load_last, save_last
from training.toolkit import TrainingDiverged, lr_factor, output_mask, restore_optimizer

if TYPE_CHECKING:
    from sopmoe_models.config import SopmoeConfig

log = logging.getLogger(__name__)

MAX_GRAD_NORM = 1.0
# Settings that fix the trajectory: resuming with any of them changed could not reproduce the run.
TRAJECTORY_KEYS = ("router_type", "router_hidden_size", "num_epochs", "batch_size", "gradient_accumulation_steps",
                   "learning_rate", "weight_decay", "warmup_ratio", "load_balance_weight", "sparsity_weight",
                   "max_train_examples", "seed")


def guard_output_dir(out_dir: Path, router_type: str, *, resume: bool, overwrite: bool,
                     inputs: tuple = ()) -> None:
    """Refuse to replace a trained router in ``out_dir`` unless asked: ``resume`` continues the same router type,
    ``overwrite`` discards it (only sopmoe's own router files are deleted). ``out_dir`` may not be or hold an input."""
    hit = overlaps(out_dir, inputs)
    if hit:
        raise UserError(f"--output_dir {out_dir} is or contains an input ({hit[0]}); choose another folder")
    if resume and overwrite:
        raise UserError("--resume and --overwrite contradict each other: continue the run, or replace it")
    card_path, last = out_dir / CARD, out_dir / LAST
    trained = card_path.is_file() or (out_dir / BEST).is_file() or last.is_dir() or bool(leftovers(out_dir, LAST, "old"))
    if not trained:
        return
    try:
        card = parse_card(card_path) if card_path.is_file() else {}
    except UserError:
        if not overwrite:
            raise
        card = {}  # a damaged card may still be replaced when asked
    what = f"a trained {card.get('type', 'router')} router"
    best = (card.get("metrics") or {}).get("best_epoch")
    if best is not None:
        what += f" (best epoch {best})"
    if overwrite:
        log.warning("--overwrite: replacing %s in %s", what, out_dir)
        for name in (BEST, CARD):
            (out_dir / name).unlink(missing_ok=True)
        for p in [last, *leftovers(out_dir, LAST, "old")]:
            if p.is_dir():
                shutil.rmtree(p)
        return
    if not resume:
        raise UserError(f"{out_dir} already holds {what}; pass --resume to continue that run, --overwrite to "
                        "replace it, or choose another --output_dir")
    if card.get("type") and card["type"] != router_type:
        raise UserError(f"--resume: {out_dir} holds a {card['type']} router, not {router_type}; resume it with "
                        f"--router_type {card['type']}, or replace it with --overwrite")
    if router_type == "posterior":
        raise UserError(f"--resume: a posterior router has nothing to resume ({out_dir} holds one); refit it with "
                        "--overwrite")


def data_identity(cfg: SopmoeConfig) -> dict[str, Any]:
    """What the training data is: the files' bytes and how they are tokenised (a resume must see the same)."""
    d = cfg.data
    return {"train_file_sha256": file_sha256(d.train_file), "eval_file_sha256": file_sha256(d.eval_file)
            if d.eval_file else None, "prompt_format": d.prompt_format, "max_length": d.max_length,
            "train_kinds": list(d.train_kinds) if d.train_kinds else None}


def select_examples(path: str, limit: int | None, seed: int, kinds: list[str] | None = None) -> list[Example]:
    """The examples of ``path`` of the allowed ``kinds`` (all when None), or a seeded random subset of ``limit``
    (files are often ordered by family)."""
    examples = load_training_examples(path, kinds)
    if limit is not None and limit < len(examples):
        idx = torch.randperm(len(examples), generator=torch.Generator().manual_seed(seed))[:limit]
        examples = [examples[i] for i in sorted(idx.tolist())]
    return examples


def epoch_groups(n: int, batch_size: int, accum: int, seed: int, epoch: int) -> list[list[list[int]]]:
    """Optimizer steps of one epoch: each a list of micro-batches of example indices (seeded per epoch)."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 10007 + epoch)).tolist()
    batches = [order[i : i + batch_size] for i in range(0, n, batch_size)]
    return [batches[i : i + accum] for i in range(0, len(batches), accum)]


def _batch(router, encoded: list[dict], idx: list[int]) -> dict[str, torch.Tensor]:
    pad = router.tokenizer.pad_token_id if router.tokenizer.pad_token_id is not None else 0
    b = collate([encoded[i] for i in idx], pad_token_id=pad, padding_side="right")
    return {k: v.to(router.device) for k, v in b.items()}


def batch_loss(router, batch: dict[str, torch.Tensor], lb_w: float, sp_w: float) -> dict[str, torch.Tensor]:
    """Loss parts of one micro-batch, plus ``gates`` (detached mean per expert over output tokens)."""
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    lp, gates = router.target_logprobs(ids, mask, shifted_targets(labels))
    m = output_mask(labels).to(lp.device, torch.float32)
    parts = router_loss(lp, gates, m, load_balance_weight=lb_w, sparsity_weight=sp_w)
    means = gate_means(gates.detach(), m)
    parts["gates"] = means if means.dim() == 1 else means.mean(0)
    return parts


@torch.inference_mode()
def evaluate(router, encoded: list[dict], batch_size: int) -> dict[str, Any]:
    """Token-weighted mixture NLL and mean gates over the output tokens of ``encoded``."""
    nll_sum, tok, gate_sum = 0.0, 0.0, None
    for start in range(0, len(encoded), batch_size):
        batch = _batch(router, encoded, list(range(start, min(start + batch_size, len(encoded)))))
        lp, gates = router.target_logprobs(batch["input_ids"], batch["attention_mask"], shifted_targets(batch["labels"]))
        m = output_mask(batch["labels"]).to(lp.device, torch.float32)
        n = float(m.sum())
        nll_sum += float(-(lp * m).sum())
        g = gate_means(gates, m) * n
        gate_sum = g if gate_sum is None else gate_sum + g
        tok += n
    means = (gate_sum / max(tok, 1.0)).cpu()
    overall = means if means.dim() == 1 else means.mean(0)
    out = {"nll": nll_sum / max(tok, 1.0), "n_tokens": int(tok), "gate_foundation": float(overall[0]),
           "gate_sft": float(overall[1])}
    if means.dim() == 2:
        out["gate_sft_per_layer"] = [round(float(x), 4) for x in means[:, 1]]
    return out


def _tensorboard(run_dir: Path):
    from torch.utils.tensorboard import SummaryWriter

    run_dir.mkdir(parents=True, exist_ok=True)
    return SummaryWriter(log_dir=str(run_dir))


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    return new_progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        TextColumn("{task.fields[info]}"), disable=not enabled)


def train_router(
    cfg: SopmoeConfig,
    *,
    router_type: str | None = None,
    output_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    max_steps: int | None = None,
    save_steps: int = 50,
    pair=None,
    progress: bool = True,
    tensorboard_dir: str | Path = "outputs/tensorboard",
    run_name: str | None = None,
) -> dict[str, Any]:
    """Train (or, for posterior, fit the prior of) a router; returns a summary (paths, metrics, status)."""
    b = cfg.btm
    router_type = router_type or b.router_type
    out_dir = Path(output_dir or b.output_dir)
    if not cfg.data.train_file:
        raise UserError("data.train_file is not set (config or --train_file): the router learns from it")
    guard_output_dir(out_dir, router_type, resume=resume, overwrite=overwrite,
                     inputs=(cfg.models.foundation.path, cfg.models.sft.path, cfg.data.train_file, cfg.data.eval_file))
    remove_leftovers(out_dir, LAST)
    pair = pair or load_experts_from_config(cfg)
    torch.manual_seed(b.seed)
    router = build_router(router_type, pair, **router_kwargs(router_type, {"hidden_size": b.router_hidden_size}))
    style, max_len = cfg.data.prompt_format, cfg.data.max_length
    tok = pair.tokenizer
    train = [encode_example(tok, ex, style=style, max_length=max_len)
             for ex in select_examples(cfg.data.train_file, b.max_train_examples, b.seed, cfg.data.train_kinds)]
    evals = ([encode_example(tok, ex, style=style, max_length=max_len)
              for ex in load_training_examples(cfg.data.eval_file, cfg.data.train_kinds)]
             if cfg.data.eval_file else [])
    training = {"btm": {**b.model_dump(mode="json"), "router_type": router_type, "output_dir": str(out_dir)},
                "data": cfg.data.model_dump(mode="json")}
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.save(out_dir / "config.yaml")
    log.info("router %s: %d trainable parameters, %d train / %d eval examples -> %s", router_type,
             sum(p.numel() for p in router.parameters() if p.requires_grad), len(train), len(evals), out_dir)
    t0 = time.perf_counter()
    if not router.trainable:
        return _fit_prior(router, train, evals, b, out_dir, training, t0)

    opt = torch.optim.AdamW(router.parameters(), lr=b.learning_rate, weight_decay=b.weight_decay)
    steps_per_epoch = len(epoch_groups(len(train), b.batch_size, b.gradient_accumulation_steps, b.seed, 0))
    total = steps_per_epoch * b.num_epochs
    warmup = max(1, math.ceil(b.warmup_ratio * total)) if b.warmup_ratio > 0 else 0
    traj = {k: training["btm"][k] for k in TRAJECTORY_KEYS}
    data_id = data_identity(cfg)
    state: dict[str, Any] = {"epoch": 0, "group": 0, "global_step": 0, "best_eval_nll": None, "best_epoch": None,
                             "history": [], "trajectory": traj, "data": data_id, "train_seconds": 0.0}
    if resume:
        router_t, opt_t, saved = load_last(out_dir)
        changed = {k: (saved["trajectory"].get(k), v) for k, v in traj.items() if saved["trajectory"].get(k) != v}
        if changed:
            raise UserError(f"--resume: settings differ from the interrupted run in {out_dir} (was, now): {changed}; "
                            "resume with the same settings or start a new output_dir")
        _same_data(saved.get("data"), data_id, out_dir)
        check_fingerprints(parse_card(out_dir / LAST / CARD), pair, str(out_dir / LAST))
        saved.pop("files", None)
        router.load_state_dict(router_t)
        restore_optimizer(opt, opt_t, saved.pop("param_groups"))
        state.update(saved)
        log.info("resumed %s at epoch %d, step %d", out_dir / "last", state["epoch"], state["global_step"])

    run_name = run_name or f"btm_{router_type}_{time.strftime('%Y%m%d-%H%M%S')}"
    writer = _tensorboard(Path(tensorboard_dir) / run_name)
    status = "completed"
    t_resume = time.perf_counter() - state["train_seconds"]
    router.train()
    try:
        with _progress(progress) as bar:
            task = bar.add_task(f"train {router_type}", total=total, completed=state["global_step"], info="")
            while state["epoch"] < b.num_epochs:
                epoch = state["epoch"]
                groups = epoch_groups(len(train), b.batch_size, b.gradient_accumulation_steps, b.seed, epoch)
                while state["epoch"] == epoch and state["group"] < len(groups):
                    parts = _optimizer_step(router, opt, train, groups[state["group"]], b,
                                            b.learning_rate * lr_factor(state["global_step"], total, warmup))
                    if parts is None:
                        status = "diverged"
                        raise TrainingDiverged(
                            f"loss became NaN/inf at epoch {epoch + 1}, step {state['global_step'] + 1}; stopped "
                            f"without applying it. Last good checkpoints: {out_dir / 'last'} and the best in {out_dir}. "
                            "Lower btm.learning_rate and rerun (or --resume)")
                    state["group"] += 1
                    state["global_step"] += 1
                    _log_scalars(writer, "train", parts, state["global_step"])
                    bar.update(task, advance=1, info=f"loss {parts['loss']:.4f}")
                    if state["group"] == len(groups):
                        state["train_seconds"] = time.perf_counter() - t_resume
                        _end_epoch(router, evals, train, b, state, writer, out_dir, training)
                    stop = max_steps is not None and state["global_step"] >= max_steps
                    if stop or state["global_step"] % save_steps == 0 or state["group"] == 0:
                        state["train_seconds"] = time.perf_counter() - t_resume
                        save_last(out_dir, router, opt, state, training)
                    if stop:
                        status = "max_steps"
                        break
                if status == "max_steps":
                    break
    except KeyboardInterrupt:
        state["train_seconds"] = time.perf_counter() - t_resume
        save_last(out_dir, router, opt, state, training)
        log.warning("interrupted: state saved to %s (continue with --resume)", out_dir / "last")
        raise
    finally:
        writer.close()
        router.eval()
    return _finish(out_dir, state, status, router_type)


def _same_data(saved: dict | None, now: dict, out_dir: Path) -> None:
    """Refuse to resume on other training/eval data than the interrupted run saw (same path, other bytes too)."""
    if saved is None:
        log.warning("--resume: %s predates data checks; cannot verify the training file is the same", out_dir / LAST)
        return
    names = {"train_file_sha256": "data.train_file (--train_file)", "eval_file_sha256": "data.eval_file (--eval_file)",
             "prompt_format": "data.prompt_format", "max_length": "data.max_length"}
    for key, name in names.items():
        if saved.get(key) != now.get(key):
            raise UserError(f"--resume: {name} differs from the one the interrupted run in {out_dir} trained on "
                            "(its content is checked, not only its path); resume with the same data, or start again "
                            "with --overwrite")


def _optimizer_step(router, opt, train, group, b, lr) -> dict[str, float] | None:
    """Accumulate gradients over the micro-batches of ``group`` and step; None (no step) on a non-finite loss."""
    opt.zero_grad(set_to_none=True)
    sums: dict[str, float] = {}
    autocast = torch.autocast(router.device.type, dtype=torch.bfloat16, enabled=b.bf16 and router.device.type == "cuda")
    for idx in group:
        with autocast:
            parts = batch_loss(router, _batch(router, train, idx), b.load_balance_weight, b.sparsity_weight)
        if not torch.isfinite(parts["loss"]):
            opt.zero_grad(set_to_none=True)
            return None
        (parts["loss"] / len(group)).backward()
        for k in ("loss", "nll", "balance", "entropy"):
            sums[k] = sums.get(k, 0.0) + float(parts[k].detach()) / len(group)
        for e, name in enumerate(("gate_foundation", "gate_sft")):
            sums[name] = sums.get(name, 0.0) + float(parts["gates"][e]) / len(group)
    for g in opt.param_groups:
        g["lr"] = lr
    torch.nn.utils.clip_grad_norm_(router.parameters(), MAX_GRAD_NORM)
    opt.step()
    sums["lr"] = lr
    return sums


def _log_scalars(writer, prefix: str, values: dict[str, Any], step: int) -> None:
    for k, v in values.items():
        if isinstance(v, (int, float)):
            writer.add_scalar(f"{prefix}/{k}", v, step)


def _end_epoch(router, evals, train, b, state, writer, out_dir: Path, training) -> None:
    """Eval NLL (on data.eval_file, else the training data), history, best checkpoint; advances the epoch."""
    epoch = state["epoch"] + 1
    metrics = evaluate(router, evals or train, b.batch_size)
    router.train()
    _log_scalars(writer, "eval", metrics, state["global_step"])
    state["history"].append({"epoch": epoch, "step": state["global_step"], **metrics})
    log.info("epoch %d/%d: eval nll %.4f, gates foundation %.3f / sft %.3f", epoch, b.num_epochs, metrics["nll"],
             metrics["gate_foundation"], metrics["gate_sft"])
    if state["best_eval_nll"] is None or metrics["nll"] < state["best_eval_nll"]:
        state["best_eval_nll"], state["best_epoch"] = metrics["nll"], epoch
        router.save_router(out_dir, training=training, metrics={"best_epoch": epoch, "eval": metrics,
                                                                "history": state["history"]})
        log.info("new best router (epoch %d) -> %s", epoch, out_dir / "best_router.safetensors")
    state["epoch"], state["group"] = epoch, 0


def _finish(out_dir: Path, state: dict, status: str, router_type: str) -> dict[str, Any]:
    card_path = out_dir / CARD
    if card_path.is_file() and status == "completed":
        card = RouterCard.read(card_path)
        card.metrics.update(history=state["history"], train_seconds=round(state["train_seconds"], 2),
                            steps=state["global_step"])
        card.write(card_path)
    return {"router_type": router_type, "status": status, "output_dir": str(out_dir),
            "best": str(out_dir / "best_router.safetensors"), "best_epoch": state["best_epoch"],
            "best_eval_nll": state["best_eval_nll"], "steps": state["global_step"],
            "train_seconds": round(state["train_seconds"], 2), "history": state["history"]}


def _fit_prior(router, train, evals, b, out_dir: Path, training, t0: float) -> dict[str, Any]:
    """Posterior router: EM prior on the training sequences (prompt + output), then eval and save."""
    lls = []
    for start in range(0, len(train), b.batch_size):
        batch = _batch(router, train, list(range(start, min(start + b.batch_size, len(train)))))
        lls.append(router.sequence_loglik(batch["input_ids"], batch["attention_mask"]).cpu())
    prior = estimate_prior(torch.cat(lls))
    router.set_prior(prior)
    metrics = evaluate(router, evals or train, b.batch_size)
    seconds = time.perf_counter() - t0
    log.info("posterior prior foundation %.3f / sft %.3f; eval nll %.4f", prior[0], prior[1], metrics["nll"])
    router.save_router(out_dir, training=training, metrics={"prior": prior.tolist(), "eval": metrics,
                                                            "train_seconds": round(seconds, 2)})
    return {"router_type": router.router_type, "status": "completed", "output_dir": str(out_dir),
            "best": str(out_dir / "best_router.safetensors"), "best_epoch": None, "best_eval_nll": metrics["nll"],
            "steps": 0, "train_seconds": round(seconds, 2), "prior": prior.tolist(), "history": [metrics]}
