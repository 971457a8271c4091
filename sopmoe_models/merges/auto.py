"""Choosing a merge's parameter on a few dev examples (``sopmoe merge --auto``).

Two recipes, both recorded:

- **LM-Cocktail** (Xiao et al. 2023, "LM-Cocktail: Resilient Tuning of Language Models via Model Merging", §3.2,
  https://arxiv.org/abs/2311.13534): each model's weight is softmax(−L_i / T) over the models, L_i its loss on a few
  dev examples (T = 5 in their code). With two models the sft's weight w_s becomes the linear α (or the task-vector
  scale λ for task arithmetic, TIES and DARE, whose density stays as given).
- **Grid search**: the method's own parameters (``SEARCH`` in its module: α for linear, λ for task arithmetic,
  density × λ for TIES/DARE) over a small grid; every point is merged and scored. Parameters the caller fixes are
  left out of the grid.

The chosen point is the lowest dev loss among the grid and the cocktail point (ties: the first evaluated).
Dev loss is the per-token negative log-likelihood of the output tokens (prompt masked, as lm-eval scores them),
through :func:`sopmoe_models.scoring.score_examples`.
"""

from __future__ import annotations

import copy
import itertools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from sopmoe_models.data import Example
from sopmoe_models.experts import ExpertPair
from sopmoe_models.merges import MergeParams, check_mergeable, merge_into
from sopmoe_models.scoring import accuracy, model_logprobs, score_examples

log = logging.getLogger(__name__)

COCKTAIL_TEMPERATURE = 5.0


@dataclass(frozen=True)
class DevScore:
    loss: float  # per-token NLL of the outputs
    acc: float  # fraction of outputs that are the greedy continuation (lm-eval acc)
    n_tokens: int

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)


@dataclass(frozen=True)
class SearchRow:
    source: str  # "grid" or "cocktail"
    params: MergeParams
    score: DevScore

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source, "parameters": self.params.used(), "dev_loss": self.score.loss,
                "dev_perplexity": self.score.perplexity, "dev_acc": self.score.acc}


@dataclass
class SearchResult:
    grid: dict[str, list[float]]
    rows: list[SearchRow] = field(default_factory=list)
    cocktail: dict[str, Any] = field(default_factory=dict)

    @property
    def best(self) -> SearchRow:
        return min(self.rows, key=lambda r: r.score.loss)  # min keeps the first of equal losses

    def to_json(self) -> dict[str, Any]:
        best = self.best
        return {
            "metric": "per-token NLL of the output tokens on the dev examples (lower is better)",
            "cocktail": self.cocktail,
            "grid": {"values": self.grid, "rows": [r.to_json() for r in self.rows if r.source == "grid"]},
            "chosen": best.to_json(),
        }


def cocktail_weights(losses: Sequence[float], temperature: float = COCKTAIL_TEMPERATURE) -> list[float]:
    """LM-Cocktail's model weights softmax(−L_i / T)."""
    if temperature <= 0:
        raise ValueError(f"cocktail temperature {temperature} must be > 0")
    return torch.softmax(-torch.tensor(losses, dtype=torch.float64) / temperature, dim=0).tolist()


def dev_score(model: torch.nn.Module, tokenizer: Any, examples: Sequence[Example], *, style: str = "raw",
              batch_size: int = 16) -> DevScore:
    device = next(model.parameters()).device
    scores = score_examples(model_logprobs(model), tokenizer, examples, style=style, batch_size=batch_size,
                            device=device)
    n = sum(s.n_tokens for s in scores)
    if n == 0:
        raise ValueError("the dev examples have no output tokens to score")
    return DevScore(-sum(s.loglik for s in scores) / n, accuracy(scores), n)


def cocktail_params(base: MergeParams, w_sft: float) -> MergeParams:
    """The cocktail weight as this method's parameter: α for linear, λ for the task-vector methods."""
    return base.with_(weight=w_sft) if base.method == "linear" else base.with_(scale=w_sft)


def auto_merge(
    pair: ExpertPair,
    base: MergeParams,
    examples: Sequence[Example],
    *,
    grid: Mapping[str, Sequence[float]] | None = None,
    temperature: float = COCKTAIL_TEMPERATURE,
    style: str = "raw",
    batch_size: int = 16,
    on_row: Callable[[SearchRow], None] | None = None,
) -> tuple[torch.nn.Module, SearchResult]:
    """Search ``base.method``'s parameters on ``examples``; return the merged model at the best point and the table.

    ``grid`` maps parameter names to values (default: the method's ``SEARCH``; the grid is their product); ``base``
    supplies the parameters that are not searched. One copy of the foundation is reused for every point.
    """
    if not examples:
        raise ValueError("--auto needs dev examples (data.eval_file or --dev_file)")
    check_mergeable(pair.foundation, pair.sft)
    grid = {k: [float(v) for v in vs] for k, vs in (base.module.SEARCH if grid is None else grid).items()}
    unknown = [k for k in grid if k not in base.module.PARAMETERS]
    if unknown or not grid or not all(grid.values()):
        raise ValueError(f"cannot search {unknown or 'nothing'} for {base.method} (parameters: "
                         f"{', '.join(base.module.PARAMETERS)})")
    score = lambda m: dev_score(m, pair.tokenizer, examples, style=style, batch_size=batch_size)  # noqa: E731

    losses = {"foundation": score(pair.foundation), "sft": score(pair.sft)}
    w_f, w_s = cocktail_weights([losses["foundation"].loss, losses["sft"].loss], temperature)
    cocktail = cocktail_params(base, w_s)
    result = SearchResult(grid, cocktail={
        "temperature": temperature,
        "dev_loss": {k: v.loss for k, v in losses.items()},
        "dev_acc": {k: v.acc for k, v in losses.items()},
        "weights": {"foundation": w_f, "sft": w_s},
        "parameters": cocktail.used(),
    })
    log.info("LM-Cocktail: dev loss foundation %.4f, sft %.4f -> weights %.3f / %.3f (T=%g)",
             losses["foundation"].loss, losses["sft"].loss, w_f, w_s, temperature)

    work = copy.deepcopy(pair.foundation)
    points = [dict(zip(grid, values)) for values in itertools.product(*grid.values())]
    candidates = [("grid", base.with_(**point)) for point in points] + [("cocktail", cocktail)]
    for source, params in candidates:
        merge_into(work, pair.foundation, pair.sft, params)
        row = SearchRow(source, params, score(work))
        result.rows.append(row)
        log.debug("%s %s: dev loss %.4f, acc %.3f", source, params.used(), row.score.loss, row.score.acc)
        if on_row:
            on_row(row)
    merge_into(work, pair.foundation, pair.sft, result.best.params)
    return work.eval().requires_grad_(False), result
