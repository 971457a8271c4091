"""Fit the ``dispatch`` baseline (:mod:`sopmoe_models.dispatch`) on the router's training data.

1. Both experts score every training and dev request's reference answer (teacher-forced, output tokens only); the
   request's label is the expert with the lower per-token NLL.
2. The foundation's final hidden states of each prompt give the features (mean ‖ last token), standardised with the
   training mean and standard deviation.
3. Logistic regression (full-batch L-BFGS) for each L2 strength of ``L2_GRID``; the one whose routing gives the lowest
   dev NLL (each dev request scored by the expert it is sent to) is kept. Dev makes the choice; test is never read.
"""

from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from sopmoe_models.data import Example, load_training_examples
from sopmoe_models.dispatch import FEATURES, Dispatcher, prompt_features
from sopmoe_models.experts import ExpertPair
from sopmoe_models.prompt import format_prompt
from sopmoe_models.scoring import model_logprobs, score_examples

if TYPE_CHECKING:
    from sopmoe_models.config import SopmoeConfig

log = logging.getLogger(__name__)

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)


def expert_nll(pair: ExpertPair, examples: list[Example], style: str, batch_size: int) -> torch.Tensor:
    """(N, 2) per-token NLL of each example's reference under (foundation, sft)."""
    cols = []
    for model in pair.experts:
        scores = score_examples(model_logprobs(model), pair.tokenizer, examples, style=style, batch_size=batch_size,
                                device=model.get_input_embeddings().weight.device)
        cols.append(torch.tensor([-s.loglik / max(s.n_tokens, 1) for s in scores]))
    return torch.stack(cols, dim=1)


def features(pair: ExpertPair, examples: list[Example], style: str, batch_size: int) -> torch.Tensor:
    tok = pair.tokenizer
    prompts = [tok(format_prompt(ex.input, style, tok), add_special_tokens=False)["input_ids"] for ex in examples]
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    return prompt_features(pair.foundation, prompts, pad, batch_size)


def fit_logistic(x: torch.Tensor, y: torch.Tensor, l2: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Weights and bias minimising mean BCE + l2·|w|² (x standardised), full-batch L-BFGS (deterministic)."""
    torch.manual_seed(seed)
    w = torch.zeros(x.shape[1], requires_grad=True)
    b = torch.zeros((), requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


def routed_nll(choice: torch.Tensor, nll: torch.Tensor) -> float:
    """Mean per-token NLL when each request is scored by the expert it is sent to (choice 0/1 per request)."""
    return float(nll.gather(1, choice.long().unsqueeze(1)).mean())


def train_dispatch(cfg: SopmoeConfig, pair: ExpertPair, out_dir: str | Path, *, batch_size: int = 32) -> dict[str, Any]:
    """Fit, choose on dev, write the classifier into ``out_dir``; returns its card."""
    t0, c0 = time.perf_counter(), time.process_time()
    d = cfg.data
    if not d.train_file:
        raise ValueError("data.train_file is not set (config or --train_file): the classifier learns from it")
    if not d.eval_file:
        raise ValueError("data.eval_file is not set: the dispatch classifier's L2 strength is chosen on dev data")
    train = load_training_examples(d.train_file, d.train_kinds)
    dev = load_training_examples(d.eval_file, d.train_kinds)
    style = d.prompt_format
    log.info("dispatch: %d train / %d dev requests (kinds %s)", len(train), len(dev), d.train_kinds or "all")
    nll_train, nll_dev = (expert_nll(pair, exs, style, batch_size) for exs in (train, dev))
    x_train, x_dev = (features(pair, exs, style, batch_size) for exs in (train, dev))
    y_train = (nll_train[:, 1] < nll_train[:, 0]).float()
    y_dev = (nll_dev[:, 1] < nll_dev[:, 0]).float()
    mean, std = x_train.mean(0), x_train.std(0).clamp(min=1e-6)
    z_train, z_dev = (x_train - mean) / std, (x_dev - mean) / std
    grid = []
    for l2 in L2_GRID:
        w, b = fit_logistic(z_train, y_train, l2)
        choice = (z_dev @ w + b > 0).long()
        grid.append({"l2": l2, "dev_nll": routed_nll(choice, nll_dev), "dev_agreement": float((choice == y_dev).float().mean()),
                     "train_agreement": float(((z_train @ w + b > 0).float() == y_train).float().mean()),
                     "w": w, "b": b})
        log.info("dispatch l2 %g: dev routed NLL %.4f, dev agreement with the better expert %.3f", l2,
                 grid[-1]["dev_nll"], grid[-1]["dev_agreement"])
    best = min(grid, key=lambda g: (g["dev_nll"], -g["l2"]))
    if not math.isfinite(best["dev_nll"]):
        raise ValueError("dispatch: the experts' dev NLL is not finite; check the experts and the dev file")
    oracle = float(nll_dev.min(1).values.mean())
    card = {
        "type": "dispatch",
        "features": FEATURES,
        "label": "the expert with the lower per-token NLL of the reference answer",
        "experts": {role: {"path": getattr(pair, f"{role}_path"), "fingerprint": fp}
                    for role, fp in pair.fingerprints().items()},
        "training": {"train_file": str(Path(d.train_file).resolve()), "eval_file": str(Path(d.eval_file).resolve()),
                     "train_kinds": list(d.train_kinds) if d.train_kinds else None, "prompt_format": style,
                     "n_train": len(train), "n_dev": len(dev), "sft_share_train": float(y_train.mean()),
                     "l2_grid": [{k: v for k, v in g.items() if k not in ("w", "b")} for g in grid],
                     "chosen_l2": best["l2"], "chosen_by": "lowest dev routed NLL"},
        "metrics": {"dev_routed_nll": best["dev_nll"], "dev_oracle_nll": oracle,
                    "dev_agreement": best["dev_agreement"], "train_agreement": best["train_agreement"]},
        "inference_cost": "1 expert forward per token + 1 foundation prefill of the prompt",
        "train_seconds": round(time.perf_counter() - t0, 3),
        "cpu_seconds": round(time.process_time() - c0, 3),
    }
    Dispatcher(best["w"], best["b"], mean, std).save(out_dir, card)
    return card
