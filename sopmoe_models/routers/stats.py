"""Routing statistics: how much each query (and each task) relied on foundation vs sft, plus a per-token HTML view.

Per query, the *share* of expert e is its mean gate over the tokens that matter (the output/continuation tokens
when scoring, the generated tokens when generating): ``share_e = (1/N) Σ_t g_{t,e}``. Per-layer gates (B, T, L, 2)
give one share per named layer and an overall share = the mean over layers. :class:`RoutingStats` aggregates
queries per task, token-weighted (every scored token counts once).
"""

from __future__ import annotations

import html
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

EXPERTS = ("foundation", "sft")


def gate_shares(gates: torch.Tensor, names: list[str] | None = None) -> dict[str, Any]:
    """Shares for one query from its gates over the tokens that count: (N, 2) or (N, L, 2)."""
    g = gates.detach().float().cpu()
    n = int(g.shape[0])
    if n == 0:
        return {"n_tokens": 0, "foundation": None, "sft": None}
    mean = g.mean(0)  # (2,) or (L, 2)
    overall = mean if mean.dim() == 1 else mean.mean(0)
    out: dict[str, Any] = {"n_tokens": n, "foundation": float(overall[0]), "sft": float(overall[1])}
    if mean.dim() == 2:
        names = names or [f"gate_{i}" for i in range(mean.shape[0])]
        out["per_layer"] = {nm: {"foundation": float(m[0]), "sft": float(m[1])} for nm, m in zip(names, mean)}
    return out


def generated_lengths(sequences: torch.Tensor, eos_ids: list[int], pad_id: int | None) -> list[int]:
    """Tokens each row really generated (B, N): up to and including the first EOS, else without trailing pads."""
    out = []
    for row in sequences.tolist():
        n = next((i + 1 for i, t in enumerate(row) if t in eos_ids), None)
        if n is None:
            n = len(row)
            while n and pad_id is not None and pad_id not in eos_ids and row[n - 1] == pad_id:
                n -= 1
        out.append(n)
    return out


def token_pieces(tokenizer: Any, ids: list[int]) -> list[str]:
    """The text each token adds, by incremental decoding (multi-byte characters split over tokens stay whole)."""
    pieces, prev = [], ""
    for k in range(len(ids)):
        text = tokenizer.decode(ids[: k + 1], skip_special_tokens=False)
        pieces.append(text[len(prev):] if text.startswith(prev) else text)
        prev = text
    return pieces


class RoutingStats:
    """Accumulates per-query shares into per-task, token-weighted means."""

    def __init__(self, names: list[str] | None = None):
        self.names = names
        self._sums: dict[str, torch.Tensor] = {}
        self._tokens: dict[str, int] = defaultdict(int)
        self._queries: dict[str, int] = defaultdict(int)

    def add(self, task: str, gates: torch.Tensor) -> dict[str, Any]:
        """Record one query's gates (N, 2) or (N, L, 2); returns its :func:`gate_shares`."""
        g = gates.detach().float().cpu()
        self._queries[task] += 1
        if g.shape[0]:
            s = g.sum(0)
            self._sums[task] = self._sums[task] + s if task in self._sums else s
            self._tokens[task] += int(g.shape[0])
        return gate_shares(g, self.names)

    @classmethod
    def merged(cls, parts: list[RoutingStats]) -> RoutingStats:
        """The statistics of several processes' requests together (the sums add; the shares stay token-weighted)."""
        out = cls(parts[0].names if parts else None)
        for part in parts:
            for task, n in part._queries.items():
                out._queries[task] += n
            for task, n in part._tokens.items():
                out._tokens[task] += n
            for task, s in part._sums.items():
                out._sums[task] = out._sums[task] + s if task in out._sums else s.clone()
        return out

    def summary(self) -> dict[str, Any]:
        tasks = {}
        for task in sorted(self._queries):
            n = self._tokens[task]
            entry: dict[str, Any] = {"n_queries": self._queries[task], "n_tokens": n}
            if n:
                mean = self._sums[task] / n
                overall = mean if mean.dim() == 1 else mean.mean(0)
                entry.update(foundation=float(overall[0]), sft=float(overall[1]))
                if mean.dim() == 2:
                    names = self.names or [f"gate_{i}" for i in range(mean.shape[0])]
                    entry["per_layer"] = {nm: {"foundation": float(m[0]), "sft": float(m[1])} for nm, m in zip(names, mean)}
            tasks[task] = entry
        return {"experts": list(EXPERTS), "tasks": tasks}


def _colour(sft_share: float) -> str:
    """Blue (foundation) -> white (0.5) -> orange (sft) background for a token."""
    x = min(max(sft_share, 0.0), 1.0)
    base = (70, 130, 230) if x < 0.5 else (240, 140, 40)
    a = abs(x - 0.5) * 2  # 0 at an even split, 1 at a one-expert token
    r, g, b = (round(255 + (c - 255) * a) for c in base)
    return f"#{r:02x}{g:02x}{b:02x}"


def route_html(records: list[dict[str, Any]], title: str = "sopmoe routing") -> str:
    """An HTML page: each record = {prompt, tokens: [str], gates: (N, 2) or (N, L, 2), names?}; one block each.

    Every generated token is a ``<span class="tok" data-sft="0.731" title="...">`` coloured by its sft share (mean
    over layers for per-layer gates; the tooltip lists each layer's).
    """
    parts = [
        "<!DOCTYPE html>",
        '<html lang="zh"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        ".tok{white-space:pre-wrap;padding:1px 0;border-radius:2px}.prompt{color:#555}"
        ".legend span{padding:2px 6px;margin-right:4px}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        '<p class="legend"><span style="background:#4682e6;color:#fff">foundation</span>'
        '<span style="background:#ffffff;border:1px solid #ccc">even</span>'
        '<span style="background:#f08c28">sft</span> background = gate of each generated token</p>',
    ]
    for i, rec in enumerate(records):
        g = torch.as_tensor(rec["gates"]).detach().float().cpu()
        names = rec.get("names")
        shares = gate_shares(g, names)
        parts.append(f'<div class="query" id="q{i}"><h2>query {i + 1}</h2>')
        parts.append(f'<p class="prompt">{html.escape(rec.get("prompt", ""))}</p>')
        parts.append(
            f'<p class="share">foundation {shares["foundation"] or 0:.3f} · sft {shares["sft"] or 0:.3f} '
            f'over {shares["n_tokens"]} tokens</p>'
        )
        spans = []  # joined without separators: whitespace between spans would render as spaces between tokens
        for tok, gt in zip(rec["tokens"], g):
            sft = float(gt[..., 1].mean())
            tip = f"sft {sft:.3f}"
            if gt.dim() == 2:
                layer_names = names or [f"gate_{k}" for k in range(gt.shape[0])]
                tip += " | " + ", ".join(f"{nm} {float(v):.2f}" for nm, v in zip(layer_names, gt[:, 1]))
            spans.append(
                f'<span class="tok" data-sft="{sft:.4f}" title="{html.escape(tip)}" '
                f'style="background:{_colour(sft)}">{html.escape(tok)}</span>'
            )
        parts.append('<p class="output">' + "".join(spans) + "</p></div>")
    parts.append("</body></html>")
    return "\n".join(parts)


def write_route_html(path: str | Path, records: list[dict[str, Any]], title: str = "sopmoe routing") -> Path:
    """Write :func:`route_html` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(route_html(records, title), encoding="utf-8")
    tmp.replace(path)
    return path
