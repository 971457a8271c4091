"""``FusedHFLM``: lm-eval's ``HFLM`` over any :class:`~sopmoe_models.fused.FusedLM` (the seam lm-eval's own
``SteeredModel(HFLM)`` uses: change the forward pass, inherit everything else).

Only two methods are ours: :meth:`FusedHFLM._model_call` returns the fused next-token log-probs and
:meth:`FusedHFLM._model_generate` runs the fused model's KV-cached generation. Batching, request sorting, rolling
log-likelihood, multiple choice, ``--batch_size auto``, stop-string post-processing and result bookkeeping are
HFLM's. HFLM receives the already-loaded foundation model object and the shared tokenizer, so no throwaway model is
ever loaded; the foundation's config gives HFLM its max length and device.

Model arguments come from ``config=PATH`` (a sopmoe YAML), overridden by explicit arguments::

    foundation=DIR, sft=DIR, device=cpu|cuda:0|auto, dtype=auto|float32|bfloat16|float16, sft_device=, sft_dtype=,
    quantization=none|int8|int4, sft_quantization=

plus each subclass's own (:attr:`FusedHFLM.MODEL_ARGS`, e.g. ``foundation_weight`` -> ``ensemble.foundation_weight``),
plus speculative decoding of generation requests (:mod:`sopmoe_models.speculative`; the same greedy output)::

    draft=DIR|auto|lookup, num_draft_tokens=8, draft_schedule=constant|heuristic, draft_confidence=0.0,
    draft_corpus=FILE

(``auto``: the distilled student ``<distill.output_dir>/best_student`` of the config, when it exists; ``lookup``: no
drafter model, drafts copied from the request's own text and ``draft_corpus``, :mod:`sopmoe_models.lookup`). The drafter's
acceptance rate is recorded in lm-eval's results under ``config.sopmoe.speculation``.
A subclass implements one hook, :meth:`FusedHFLM.build_fused`, that builds its fused model from the resolved config.
In-process callers (``sopmoe sweep``) may pass a ready ``fused=`` model to reuse loaded experts.
"""

from __future__ import annotations

import logging
import math
from contextlib import contextmanager
from typing import Any, ClassVar

import torch
from lm_eval.models.huggingface import HFLM

from sopmoe_models.adapters.parallel import DataParallel, process_device
from sopmoe_models.experts import ExpertPair, fingerprint, quantization_of
from sopmoe_models.fused import FusedLM
from sopmoe_models.speculative import SpeculationStats

log = logging.getLogger(__name__)

# model_args every fused adapter accepts -> the config keys they set (later entries override earlier ones).
COMMON_ARGS: dict[str, tuple[str, ...]] = {
    "foundation": ("models.foundation.path",),
    "sft": ("models.sft.path",),
    "device": ("models.foundation.device", "models.sft.device"),
    "dtype": ("models.foundation.dtype", "models.sft.dtype"),
    "sft_device": ("models.sft.device",),
    "sft_dtype": ("models.sft.dtype",),
    "quantization": ("models.foundation.quantization", "models.sft.quantization"),
    "sft_quantization": ("models.sft.quantization",),
    "draft": ("generation.draft",),
    "num_draft_tokens": ("generation.num_draft_tokens",),
    "draft_schedule": ("generation.draft_schedule",),
    "draft_confidence": ("generation.draft_confidence",),
    "draft_corpus": ("generation.draft_corpus",),
}
# HFLM's own options that still mean something for a pre-loaded model.
HFLM_ARGS = ("max_length", "truncation", "logits_cache", "add_bos_token", "prefix_token_id", "softmax_dtype")
# Task metadata (read by tasks/utils.py from model_args), not model options: accepted and ignored here.
TASK_ARGS = ("data_dir", "prompt_format", "tokenizer")
# Generation kwargs a task may set that are no-ops for greedy/top-p decoding at these values.
NEUTRAL_GEN_KWARGS: dict[str, tuple[Any, ...]] = {
    "top_k": (None, 0),
    "num_beams": (None, 1),
    "repetition_penalty": (None, 1, 1.0),
    "use_cache": (None, True),
    "min_p": (None, 0, 0.0),
}


def device_available(device: str) -> bool:
    """Whether ``device`` ("auto", "cpu", "cuda", "cuda:1", "mps", ...) exists on this machine."""
    if device == "auto":
        return True
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ValueError(f"device={device!r} is not a torch device (auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda":
        return torch.cuda.is_available() and (dev.index is None or dev.index < torch.cuda.device_count())
    if dev.type == "mps":
        return torch.backends.mps.is_available()
    return True


@contextmanager
def quiet_preloaded_warnings():
    """HFLM warns twice that a model object was passed; that is the design here, not a user mistake."""
    hf_log = logging.getLogger("lm_eval.models.huggingface")

    def drop(record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "already-initialized model" not in msg and "not of type `str`" not in msg

    hf_log.addFilter(drop)
    try:
        yield
    finally:
        hf_log.removeFilter(drop)


def accepted_args(model_args: dict[str, str | None]) -> list[str]:
    """Every model argument an adapter with these extra ``model_args`` accepts (for error messages)."""
    return ["config", *COMMON_ARGS, *model_args, *HFLM_ARGS, "batch_size", "max_batch_size"]


def resolve_model_args(name: str, config: str | None, model_args: dict[str, Any],
                       extra: dict[str, str | None]) -> tuple[Any, dict[str, Any]]:
    """(SopmoeConfig, options) of a sopmoe adapter: the YAML named by ``config`` with the explicit ``model_args``
    applied on top. ``extra`` maps the adapter's own arguments to a dotted config key, or to None (returned in
    ``options``). ``name`` names the adapter in errors. Only an explicit ``config=`` is read: an lm-eval run means
    what its model_args say, from any working directory."""
    from sopmoe_models.config import load_config  # lazy: pydantic + yaml only when a config is read

    overrides: dict[str, Any] = {}
    options: dict[str, Any] = {}
    model_args = placement_args(config, dict(model_args))
    for key, value in model_args.items():
        if key in TASK_ARGS or (key == "trust_remote_code" and not value):
            continue
        if key == "trust_remote_code":
            raise ValueError("sopmoe never enables trust_remote_code; load local transformers checkpoints")
        if key == "pretrained":
            raise ValueError(f"{name} takes foundation=DIR,sft=DIR (or config=YAML), not pretrained=")
        if key in COMMON_ARGS:
            if key in ("quantization", "sft_quantization") and value is None:
                value = "none"  # lm-eval's argument parser reads the word none as None
            for dotted in COMMON_ARGS[key]:
                overrides[dotted] = str(value) if value is not None else None
        elif key in extra:
            if extra[key] is None:
                options[key] = value
            else:
                overrides[extra[key]] = value
        else:
            raise ValueError(f"{name}: unknown model argument {key!r}; accepted: {', '.join(accepted_args(extra))}")
    return load_config(config, overrides, use_default=False), options


def placement_args(config: str | None, model_args: dict[str, Any]) -> dict[str, Any]:
    """Resolve ``device``/``sft_device`` as HFLM resolves ``device``, plus the two-device layout.

    lm-eval always passes ``device`` (its CLI default is ``cuda:0``). A device this machine lacks is dropped with
    a warning (the config's, default ``auto``, applies), as HFLM falls back to CPU. ``device`` places the sft too,
    unless ``sft_device`` is given or the config puts the sft on another device than the foundation on purpose.
    Under a multi-process launch each process puts both experts on its own device (``cuda:LOCAL_RANK`` or ``cpu``,
    :mod:`sopmoe_models.adapters.parallel`), as HFLM does with a model it loads.
    """
    from sopmoe_models.config import load_config

    for key in ("device", "sft_device"):
        value = model_args.get(key)
        if value is not None and not device_available(str(value)):
            log.warning("%s=%s is not available on this machine; using the config's device (auto: %s)",
                        key, value, "cuda:0" if torch.cuda.is_available() else "cpu")
            del model_args[key]
    if "device" in model_args and "sft_device" not in model_args and config is not None:
        m = load_config(config, use_default=False).models
        if m.sft.device not in ("auto", m.foundation.device):
            model_args["sft_device"] = m.sft.device  # keep the config's one-expert-per-device layout
    own = process_device()
    if own is not None:  # one of several launched processes (data parallel): both experts on this process's device
        asked = {model_args.get(k) for k in ("device", "sft_device")} - {None, own}
        if asked:
            log.info("data parallel: both experts on this process's device %s, not %s", own, ", ".join(map(str, asked)))
        model_args["device"] = model_args["sft_device"] = own
    return model_args


class FusedHFLM(DataParallel, HFLM):
    """Base lm-eval adapter for any fused model; subclasses set :attr:`MODEL_ARGS` and :meth:`build_fused`.
    Data parallel under ``accelerate launch`` (:class:`~sopmoe_models.adapters.parallel.DataParallel`)."""

    #: extra model_args of this adapter: name -> dotted config key, or None (passed to build_fused in ``options``)
    MODEL_ARGS: ClassVar[dict[str, str | None]] = {}

    def __init__(
        self,
        fused: FusedLM | None = None,
        *,
        pair: ExpertPair | None = None,
        config: str | None = None,
        batch_size: int | str = 1,
        max_batch_size: int = 64,
        drafter: Any = None,
        **model_args: Any,
    ) -> None:
        hf_kwargs = {k: model_args.pop(k) for k in HFLM_ARGS if k in model_args}
        self.options: dict[str, Any] = {}
        if fused is None:
            cfg, self.options = self.resolve_config(config, model_args)
            fused = self.build_fused(cfg, self.options, pair)
            if drafter is None:
                drafter = self.build_drafter(cfg, fused)
        elif model_args or config is not None:
            raise ValueError(f"{type(self).__name__}: pass either a built fused model or model arguments, not both")
        self.fused = fused
        self.drafter = drafter  # a speculative.Drafter for generation requests, or None
        with quiet_preloaded_warnings():
            super().__init__(
                pretrained=fused.pair.foundation,
                tokenizer=fused.tokenizer,
                backend="causal",
                batch_size=batch_size,
                max_batch_size=max_batch_size,
                **hf_kwargs,
            )
        self._speculation_all: SpeculationStats | None = None  # every process's, under data parallelism
        self.join_launched_processes()

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def accepted_args(cls) -> list[str]:
        return accepted_args(cls.MODEL_ARGS)

    @classmethod
    def resolve_config(cls, config: str | None, model_args: dict[str, Any]):
        """(SopmoeConfig, options): the YAML named by ``config`` with the explicit ``model_args`` applied on top."""
        return resolve_model_args(cls.__name__, config, model_args, cls.MODEL_ARGS)

    @staticmethod
    def _placement_args(config: str | None, model_args: dict[str, Any]) -> dict[str, Any]:
        return placement_args(config, model_args)

    @classmethod
    def build_fused(cls, cfg, options: dict[str, Any], pair: ExpertPair | None) -> FusedLM:
        """Build the fused model from the resolved config (reuse ``pair`` when given instead of loading)."""
        raise NotImplementedError(f"{cls.__name__} must implement build_fused(cfg, options, pair)")

    @staticmethod
    def build_drafter(cfg, fused: FusedLM):
        """The drafter of ``generation.draft`` (model arg ``draft=``), next to the fused model's experts; or None."""
        from sopmoe_models.factory import build_drafter

        return build_drafter(cfg, fused.pair)

    def describe(self) -> dict[str, Any]:
        """The fusion's settings, recorded in lm-eval's results under ``config.sopmoe``."""
        return {}

    def describe_speculation(self) -> dict[str, Any]:
        """``{"speculation": drafter, k, counts, acceptance rate}`` when generation is speculative, else {}."""
        if getattr(self, "drafter", None) is None:
            return {}
        every = getattr(self, "_speculation_all", None)
        return {"speculation": {**self.drafter.describe(), **(every.as_dict() if every is not None else {})}}

    def rank_statistics(self) -> dict[str, Any]:
        return {"speculation": self.drafter.stats if self.drafter is not None else None}

    def use_all_statistics(self, states: list[dict[str, Any]]) -> None:
        if self.drafter is not None:
            total = SpeculationStats()
            for state in states:
                total.add(state["speculation"])
            self._speculation_all = total

    # -- the two seams -----------------------------------------------------------------------------------------
    def _model_call(self, inps: torch.Tensor, attn_mask=None, labels=None) -> torch.Tensor:
        """Fused next-token log-probs (B, T, W) float32 over every output row (the parity rule). HFLM's log_softmax
        on them is a no-op in value (idempotent), though it makes one float32 copy."""
        if attn_mask is not None or labels is not None:
            raise NotImplementedError("fused models are decoder-only; seq2seq calls are not supported")
        with torch.inference_mode():
            return self.fused.logprobs(inps)

    def _model_generate(self, context: torch.Tensor, max_length: int, stop: list[str], **generation_kwargs):
        """HFLM's contract: return context + continuation ids (B, T_ctx + N); HFLM decodes and cuts at ``stop``."""
        attention_mask = generation_kwargs.pop("attention_mask", None)
        do_sample = generation_kwargs.pop("do_sample", None)
        temperature = float(generation_kwargs.pop("temperature", 0.0) or 0.0)
        top_p = generation_kwargs.pop("top_p", None)
        top_p = 1.0 if top_p is None else float(top_p)
        seed = generation_kwargs.pop("seed", None)
        for key, value in generation_kwargs.items():
            if value not in NEUTRAL_GEN_KWARGS.get(key, ()):
                raise ValueError(
                    f"{type(self).__name__}: generation kwarg {key}={value!r} is not supported "
                    "(supported: until, max_gen_toks, do_sample, temperature, top_p)"
                )
        if not do_sample:
            temperature = 0.0
        elif temperature <= 0 or math.isnan(temperature):
            temperature = 1.0  # transformers' default when sampling without a temperature
        max_new_tokens = max_length - context.shape[1]
        if max_new_tokens <= 0:
            return context
        eos_ids = self._eos_ids()
        eos_texts = {self.tokenizer.decode([i], skip_special_tokens=False) for i in eos_ids}
        result = self.fused.generate(
            context,
            attention_mask,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            stop=[s for s in stop if s not in eos_texts],  # EOS ids stop rows already
            eos_token_id=eos_ids,
            draft=self.drafter,
        )
        return torch.cat([context, result.sequences.to(context.device)], dim=1)

    def _eos_ids(self) -> list[int]:
        """The tokenizer's EOS plus the foundation's generation-config EOS ids (chat models have several)."""
        ids = [self.tokenizer.eos_token_id] if self.tokenizer.eos_token_id is not None else []
        gen_eos = getattr(getattr(self.model, "generation_config", None), "eos_token_id", None)
        for i in [gen_eos] if isinstance(gen_eos, int) else list(gen_eos or []):
            if i not in ids and i < self.fused.vocab_size:
                ids.append(i)
        return ids

    # -- provenance --------------------------------------------------------------------------------------------
    def get_model_info(self) -> dict:
        pair = self.fused.pair
        n_params = sum(p.numel() for m in pair.experts for p in m.parameters())
        n_params += sum(p.numel() for p in self.fused.parameters())
        experts = {}
        for name, path in (("foundation", pair.foundation_path), ("sft", pair.sft_path)):
            experts[name] = {"path": path, "fingerprint": fingerprint(path) if path else None,
                             "quantization": quantization_of(getattr(pair, name))}
        return {
            "model_num_parameters": n_params,
            "model_dtype": str(pair.foundation.dtype),
            "model_revision": None,
            "model_sha": "",
            "sopmoe": {"method": self.fused.name, **self.describe(), **self.describe_speculation(), "experts": experts},
        }
