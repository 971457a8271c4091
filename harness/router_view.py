"""``sopmoe generate --model btm``: build the router, and show how it routed (statistics table, JSON, HTML view).

:func:`btm_config` fills ``models.*.path`` from the checkpoint's ``router.json`` when the config leaves them unset
(a router knows the experts it was trained beside); the model itself is built by :mod:`sopmoe_models.factory`. :class:`RoutingView` collects, per query, the gates of the
generated tokens (up to EOS) from each :class:`~sopmoe_models.fused.GenerationResult`, and turns them into the
per-query share of foundation vs sft (per layer for ``layer_level``: :func:`~sopmoe_models.routers.stats.gate_shares`),
a rich table (``--show_router_stats``) and an HTML page colouring every generated token by its gate
(``--route_html FILE``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sopmoe_models.console import new_console


def btm_config(cfg, router_checkpoint: str | None):
    """``cfg`` with the expert paths of the router's ``router.json`` where the config has none. The checkpoint is
    the factory's (:func:`sopmoe_models.factory.router_checkpoint`); a missing one is an error here, before any
    expert loads (None: the training-free posterior router over the config's experts)."""
    from sopmoe_models.factory import router_checkpoint as default_checkpoint
    from sopmoe_models.factory import router_experts_config

    path = default_checkpoint(cfg, router_checkpoint)
    if path is None:
        return cfg  # a posterior router needs no checkpoint: uniform prior over the config's experts
    if not Path(path).expanduser().exists():
        raise FileNotFoundError(f"router checkpoint {path} not found; train one with `sopmoe train-router` "
                                "or pass --router_checkpoint PATH")
    return router_experts_config(cfg, path)


class RoutingView:
    """Per-query routing records of one model's generations (pass :meth:`on_result` to ``generate_texts``)."""

    def __init__(self, model, prompts: list[str]):
        self.model = model
        self.prompts = prompts
        self.records: list[dict[str, Any] | None] = [None] * len(prompts)

    def on_result(self, idx: list[int], result) -> None:
        from sopmoe_models.routers.stats import gate_shares, generated_lengths, token_pieces

        if result.gates is None:
            return
        tok = self.model.tokenizer
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        names = self.model.gate_names()
        for row, (i, n) in enumerate(zip(idx, generated_lengths(result.sequences, [tok.eos_token_id], pad))):
            ids = result.sequences[row, :n].tolist()
            gates = result.gates[row, :n].float().cpu()
            self.records[i] = {"prompt": self.prompts[i], "tokens": token_pieces(tok, ids), "gates": gates,
                               "names": names, "shares": gate_shares(gates, names)}

    def shares(self, i: int) -> dict[str, Any] | None:
        rec = self.records[i]
        return rec["shares"] if rec else None

    def print_table(self, labels: list[str] | None = None, limit: int = 50) -> None:
        from rich.table import Table

        from harness.cli import escape

        names = self.model.gate_names() or []
        layer_cols = names if len(names) <= 6 else []  # deep models: a separate per-layer table below
        table = Table(title=f"routing ({escape(self.model.router_type)}): share of each expert over the generated tokens")
        for col in ("query", "tokens", "foundation", "sft"):
            table.add_column(col, justify="left" if col == "query" else "right")
        for nm in layer_cols:
            table.add_column(escape(f"sft@{nm}"), justify="right")
        for i, rec in enumerate(self.records[:limit]):
            if rec is None:
                continue
            s = rec["shares"]
            label = escape((labels[i] if labels else rec["prompt"])[:40].replace("\n", " "))
            cells = [label, str(s["n_tokens"]), _fmt(s["foundation"]), _fmt(s["sft"])]
            cells += [_fmt(s.get("per_layer", {}).get(nm, {}).get("sft")) for nm in layer_cols]
            table.add_row(*cells)
        console = new_console()
        console.print(table)
        done = [r for r in self.records if r is not None and r["shares"]["n_tokens"]]
        if names and not layer_cols and done:
            per_layer = Table(title="sft share per layer (mean over queries)")
            per_layer.add_column("gate")
            per_layer.add_column("sft", justify="right")
            for nm in names:
                per_layer.add_row(escape(nm), _fmt(sum(r["shares"]["per_layer"][nm]["sft"] for r in done) / len(done)))
            console.print(per_layer)

    def write_html(self, path: str | Path) -> Path:
        from sopmoe_models.routers.stats import write_route_html

        records = [r for r in self.records if r is not None]
        title = f"sopmoe routing: {self.model.router_type} router, {len(records)} generations"
        return write_route_html(path, records, title=title)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"
