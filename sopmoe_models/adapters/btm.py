"""``sopmoe_btm``: a trained (or training-free) router over foundation and sft as an lm-eval model (DESIGN §4–5).

    lm_eval --model sopmoe_btm --model_args router=models/checkpoints/btm/best_router.safetensors --tasks sop_strict
    lm_eval --model sopmoe_btm --model_args router_type=posterior,foundation=DIR,sft=DIR --tasks sopmoe

Model arguments (besides :class:`~sopmoe_models.adapters.base.FusedHFLM`'s ``config``, ``device``, ``dtype`` ...):

- ``router=PATH``: a ``best_router.safetensors`` (or its folder) from ``sopmoe train-router``. The experts are the
  ones recorded in its ``router.json``; explicit ``foundation=``/``sft=`` override them (and must have the same
  fingerprints, else a clear error). Without ``router=``: the config's default router
  (:func:`sopmoe_models.factory.router_checkpoint`: ``distill.btm_router``, else
  ``<btm.output_dir>/best_router.safetensors``); ``router_type=posterior`` builds the uniform-prior router, which
  needs no checkpoint.
- ``force_gate=foundation|sft``: fix every gate to one expert (parity checks: equals that expert's ``--model hf``).
- ``stats_path=FILE``: also write the routing statistics there (JSON, rewritten after every request batch), and the
  drafter's acceptance rate under ``speculation`` with ``draft=`` (speculative generation, see ``FusedHFLM``).
- ``allow_missing_fingerprint=true``: run a router whose ``router.json`` records no expert fingerprint (unverified;
  refused otherwise).

Routing statistics: for every loglikelihood request the gates over its continuation tokens, for every generation
the gates over its generated tokens (up to EOS), accumulated per lm-eval task (token-weighted mean share of
foundation vs sft, per layer for ``layer_level``). They are written into lm-eval's own results JSON under
``config.sopmoe.routing`` (lm-eval records :meth:`get_model_info` after evaluating) and to ``stats_path`` if given.
Under ``accelerate launch`` every process's statistics are gathered after each request batch (the totals are over
all requests; :mod:`sopmoe_models.adapters.parallel`).
Gates of a scored request are matched to it through its token ids; the model is causal, so the gates of a row's
first n positions are those of any request whose input is that row's first n tokens.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, ClassVar

import torch

from sopmoe_models.adapters.base import FusedHFLM
from sopmoe_models.experts import ExpertPair
from sopmoe_models.factory import build_router_model, load_pair, router_checkpoint, router_experts_config
from sopmoe_models.routers import read_card
from sopmoe_models.routers.base import Router, resolve_checkpoint
from sopmoe_models.routers.stats import RoutingStats, generated_lengths

log = logging.getLogger(__name__)
FORCE = {"foundation": (1.0, 0.0), "sft": (0.0, 1.0)}


def _strip(ids: list[int]) -> tuple[int, ...]:
    """Row key without HFLM's right padding (zeros); see the module docstring for why prefixes are safe."""
    n = len(ids)
    while n and ids[n - 1] == 0:
        n -= 1
    return tuple(ids[:n])


class BTMLMEval(FusedHFLM):
    MODEL_ARGS: ClassVar[dict[str, str | None]] = {
        "router": None,
        "router_type": None,
        "force_gate": None,
        "stats_path": None,
        "allow_missing_fingerprint": None,
    }

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self._ll_store: dict[tuple[int, ...], torch.Tensor] | None = None
        self._gen_store: dict[tuple[int, ...], torch.Tensor] | None = None
        super().__init__(*args, **kwargs)
        self._rank_stats = RoutingStats(self.fused.gate_names())  # this process's requests
        self.stats = self._rank_stats  # every process's (one process: the same object)
        self.stats_path = self.options.get("stats_path")

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def resolve_config(cls, config, model_args):
        cfg, options = super().resolve_config(config, model_args)
        options["_explicit"] = {k for k in ("foundation", "sft") if model_args.get(k)}
        return cfg, options

    @classmethod
    def build_fused(cls, cfg, options: dict[str, Any], pair: ExpertPair | None) -> Router:
        router, rtype = options.get("router"), options.get("router_type")
        force = options.get("force_gate")
        if force is not None and force not in FORCE:
            raise ValueError(f"sopmoe_btm: force_gate must be foundation or sft, got {force!r}")
        if router is None and rtype in (None, "", "auto"):
            router = router_checkpoint(cfg)  # the one default (sopmoe_models.factory); None = posterior
            if router is not None and not Path(router).expanduser().exists():
                raise ValueError(f"sopmoe_btm: no router checkpoint at {router}; pass router=PATH "
                                 "(best_router.safetensors from `sopmoe train-router`) "
                                 "or router_type=posterior with foundation=DIR,sft=DIR")
        if router is not None:
            resolve_checkpoint(router)  # clear error for a missing file before anything loads
            card = read_card(router)
            if rtype and rtype != card["type"]:
                raise ValueError(f"sopmoe_btm: router_type={rtype} but {router} is a {card['type']} router")
            if pair is None:
                pair = cls._pair_for(cfg, router, options.get("_explicit", set()))
        elif rtype not in (None, "", "auto", "posterior"):
            raise ValueError(f"sopmoe_btm: router_type={rtype} must be trained first; pass router=PATH")
        allow = str(options.get("allow_missing_fingerprint", False)).strip().lower() in ("true", "1", "yes")
        fused = build_router_model(cfg, pair, router, allow_missing_fingerprint=allow, posterior=router is None)
        if force is not None:
            fused.force_gate(FORCE[force])
        return fused

    @staticmethod
    def _pair_for(cfg, router: str, explicit: set[str]) -> ExpertPair:
        """The experts of router.json, except those given explicitly as model arguments."""
        cfg = router_experts_config(cfg, router, pinned=explicit)
        for role in ("foundation", "sft"):
            if not getattr(cfg.models, role).path:
                raise ValueError(f"sopmoe_btm: no {role} path in router.json; pass {role}=DIR")
        return load_pair(cfg)

    def describe(self) -> dict[str, Any]:
        r = self.fused
        out = {"router_type": r.router_type, "router": getattr(r, "checkpoint", None), "kwargs": r.kwargs,
               "forced_gate": list(r.forced_gate) if r.forced_gate else None}
        if hasattr(self, "stats"):
            out["routing"] = self.stats.summary()
        return out

    # -- scoring with statistics -------------------------------------------------------------------------------
    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        if attn_mask is not None or labels is not None:
            raise NotImplementedError("fused models are decoder-only; seq2seq calls are not supported")
        with torch.inference_mode():
            out = self.fused(inps, torch.ones_like(inps))
        if self._ll_store is not None and out.gates is not None:
            for row, gates in zip(inps.tolist(), out.gates.float().cpu()):
                self._ll_store[_strip(row)] = gates
        return out.logprobs

    def loglikelihood(self, requests, disable_tqdm: bool = False):
        self._ll_store = {}
        try:  # the statistics are recorded in requests_done, before processes gather them
            results = super().loglikelihood(requests, disable_tqdm=disable_tqdm)
        finally:
            self._ll_store = None
        self._write_stats()
        return results

    def requests_done(self, kind: str, requests: list) -> None:
        """Record the batch's gates per request (padding repeats removed), matched through the stores."""
        if kind == "loglikelihood" and self._ll_store is not None:
            for req in requests:
                self._record_request(req)
        elif kind == "generate_until" and self._gen_store is not None:
            for req in requests:
                enc = tuple(self.tok_encode(req.args[0]))
                gates = self._gen_store.get(enc)
                if gates is None:  # left-truncated context: the stored key is a suffix of the full encoding
                    gates = next((g for k, g in self._gen_store.items() if k and enc[-len(k):] == k), None)
                if gates is not None:
                    self._rank_stats.add(req.task_name or "unknown", gates)

    def rank_statistics(self) -> dict[str, Any]:
        return {**super().rank_statistics(), "routing": self._rank_stats}

    def use_all_statistics(self, states: list[dict[str, Any]]) -> None:
        super().use_all_statistics(states)
        self.stats = RoutingStats.merged([state["routing"] for state in states])

    def _record_request(self, req) -> None:
        context, continuation = req.args
        if context == "":
            return  # rolling-style requests: not one of the sopmoe tasks
        ctx, cont = self._encode_pair(context, continuation)
        inp = (ctx + cont)[-(self.max_length + 1):][:-1]
        gates = self._ll_store.get(_strip(inp))
        if gates is None or len(inp) > gates.shape[0]:
            log.debug("no gates recorded for a %s request", req.task_name)
            return
        n = min(len(cont), len(inp))
        self._rank_stats.add(req.task_name or "unknown", gates[len(inp) - n : len(inp)])

    # -- generation with statistics ----------------------------------------------------------------------------
    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs):
        mask = generation_kwargs.get("attention_mask")
        self.fused.last_generation = None
        out = super()._model_generate(context, max_length, stop, **generation_kwargs)
        result = self.fused.last_generation
        if self._gen_store is not None and result is not None and result.gates is not None:
            pad = self.tokenizer.pad_token_id
            mask = mask if mask is not None else torch.ones_like(context)
            for ids, m, n, gates in zip(context.tolist(), mask.tolist(),
                                        generated_lengths(result.sequences, self._eos_ids(), pad), result.gates):
                self._gen_store[tuple(t for t, keep in zip(ids, m) if keep)] = gates[:n].float().cpu()
        return out

    def generate_until(self, requests, disable_tqdm: bool = False):
        self._gen_store = {}
        try:  # the statistics are recorded in requests_done, before processes gather them
            results = super().generate_until(requests, disable_tqdm=disable_tqdm)
        finally:
            self._gen_store = None
        self._write_stats()
        return results

    def _write_stats(self) -> None:
        if not self.stats_path or self.rank != 0:  # rank 0 holds every process's statistics
            return
        path = Path(self.stats_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        record = {"router": self.describe(), **self.describe_speculation()}
        tmp.write_text(json.dumps(record, indent=2, ensure_ascii=False), encoding="utf-8")
        tmp.replace(path)
