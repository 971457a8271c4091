"""The one YAML config (``configs/config.yaml``), validated once into typed, frozen objects.

Unknown keys, wrong types and out-of-range values are errors that name the key (``btm.learning_rate: ...``).
Relative paths in the YAML resolve against the YAML file's folder, so a config works from any directory.
Round trip: ``SopmoeConfig.model_validate(cfg.to_dict()) == cfg``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from sopmoe_models.errors import UserError
from sopmoe_models.outputs import write_atomic

DEFAULT_CONFIG = Path("configs/config.yaml")
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
# The devices a model can be placed on; whether this machine has it is checked where it is used (and by `check`).
DEVICE = re.compile(r"^(auto|cpu|mps|meta|(cuda|xpu|npu)(:\d+)?)$")


class ConfigError(UserError):
    """The config is unusable; the message names the file and key."""


class _Section(BaseModel):
    # allow_inf_nan=False: a NaN or infinite number anywhere in the YAML or a flag is an error naming the key.
    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True, allow_inf_nan=False)


class ExpertConfig(_Section):
    path: str | None = Field(None, description="local folder of a transformers causal LM (never downloaded)")
    dtype: Dtype = Field("auto", description="auto = bfloat16 on GPU, float32 on CPU")
    device: str = Field("auto", description="'auto' (cuda:0 if present, else cpu), 'cpu', 'cuda:1', 'mps', ...")
    quantization: Literal["none", "int8", "int4"] = Field(
        "none", description="weight-only quantization at load (torchao: pip install 'sopmoe[quant]'): int8 halves "
        "bf16 weights on CPU or GPU, int4 quarters them (CUDA, bfloat16); for running, never for merges")

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not DEVICE.match(v):
            raise ValueError(f"{v!r} is not a device: use auto, cpu, cuda, cuda:N or mps")
        return v


class ModelsConfig(_Section):
    foundation: ExpertConfig = ExpertConfig()
    sft: ExpertConfig = ExpertConfig()


class DataConfig(_Section):
    train_file: str | None = Field(None, description="JSONL {input, output} the router, student, dispatch and replay learn from")
    train_kinds: list[str] | None = Field(
        None, description="row kinds (`category`) a trainer may see; null = every row. The test bed names "
        "sop_strict, reasoning, general: composition (mixed) stays zero-shot")
    eval_file: str | None = Field(None, description="dev JSONL: every choice (best epoch, merge --auto, dispatch) is "
                                  "made on it, never on the scored test data")
    dev_dir: str | None = Field(None, description="dev folder with sop_strict/reasoning/mixed/eval.jsonl: the "
                                "ensemble's weight sweep and the test bed's checks")
    task_data_dir: str | None = Field(None, description="test folder with sop_strict/reasoning/mixed/eval.jsonl that "
                                      "lm-eval scores (never used for a choice)")
    prompt_format: Literal["raw", "chat"] = "raw"
    max_length: int = Field(256, gt=8, description="tokens per training example (prompt is cut from the left)")


class EnsembleConfig(_Section):
    foundation_weight: float = Field(0.5, ge=0)
    sft_weight: float = Field(0.5, ge=0)
    mix: Literal["prob", "logit"] = Field("prob", description="prob: log(w_f p_f + w_s p_s); logit: log_softmax(w_f z_f + w_s z_s)")

    @model_validator(mode="after")
    def _not_both_zero(self):
        if self.foundation_weight + self.sft_weight <= 0:
            raise ValueError("foundation_weight and sft_weight are both 0; at least one must be positive")
        return self


class GenerationConfig(_Section):
    max_new_tokens: int = Field(96, gt=0)
    temperature: float = Field(0.0, ge=0, description="0 = greedy")
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    stop: list[str] = Field(default_factory=list, description="stop strings (EOS always stops)")
    batch_size: int = Field(8, gt=0, description="prompts per left-padded batch in `sopmoe generate --eval_file`")
    draft: str | None = Field(None, description="speculative decoding: a drafter model folder sharing the experts' "
                              "tokenizer, auto = <distill.output_dir>/best_student, or lookup = drafts copied from "
                              "the prompt and draft_corpus (no drafter model); None = off")
    draft_corpus: str | None = Field(None, description="draft: lookup: a JSONL (output/text fields) or text file whose "
                                     "n-grams are drafted from besides the prompt's, e.g. data/train/train.jsonl")
    num_draft_tokens: int = Field(8, gt=0, description="draft tokens per round (the first k of the heuristic schedule)")
    draft_schedule: Literal["constant", "heuristic"] = Field(
        "heuristic", description="constant k, or heuristic: k + 2 after a fully accepted round, else k - 1")
    draft_confidence: float = Field(0.0, ge=0, lt=1, description="stop a round's drafting once every row's draft "
                                     "has drafter probability below this (0 = off)")


class BtmConfig(_Section):
    router_type: str = Field("layer_level", description="posterior | token_level | layer_level (or a registered one)")
    router_hidden_size: int = Field(64, gt=0)
    num_epochs: int = Field(3, gt=0)
    batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    learning_rate: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    load_balance_weight: float = Field(0.01, ge=0)
    sparsity_weight: float = Field(0.0, ge=0)
    max_train_examples: int | None = Field(None, gt=0)
    seed: int = 0
    bf16: bool = Field(False, description="autocast the router step to bfloat16 (GPU)")
    output_dir: str = "models/checkpoints/btm"


class LoraConfig(_Section):
    enabled: bool = False
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )


class DistillConfig(_Section):
    teacher_type: Literal["ensemble", "btm", "none"] = Field(
        "ensemble", description="none = plain fine-tuning on the references (the replay baseline; distill_loss_weight 0)")
    btm_router: str | None = Field(None, description="router checkpoint when teacher_type is btm")
    student_init: str = Field("foundation", description="foundation | sft | a model folder")
    temperature: float = Field(2.0, gt=0)
    distill_loss_weight: float = Field(0.5, ge=0)
    task_loss_weight: float = Field(0.5, ge=0)
    kl: Literal["forward", "reverse", "jsd"] = "forward"
    jsd_beta: float = Field(0.5, gt=0, lt=1, description="kl: jsd mixes beta*teacher + (1-beta)*student (GKD)")
    learning_rate: float = Field(5e-4, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    warmup_ratio: float = Field(0.05, ge=0, le=1)
    num_epochs: int = Field(3, gt=0)
    batch_size: int = Field(8, gt=0)
    gradient_accumulation_steps: int = Field(1, gt=0)
    gradient_checkpointing: bool = False
    teacher_cache_topk: int | None = Field(None, gt=0, description="cache the teacher's top-k log-probs once")
    teacher_cache_dir: str | None = Field(None, description="where caches live (default <output_dir>/teacher_cache)")
    save_steps: int = Field(50, gt=0, description="checkpoint for --resume every N optimizer steps and each epoch")
    trainable: Literal["all", "router"] = Field(
        "all", description="all = every weight of the student (its LoRA adapters when lora.enabled); router = only an "
        "MoE student's routers (gates), plus its LoRA adapters when lora.enabled (BTX's fine-tuning stage)")
    router_top_k: int | None = Field(
        None, gt=0, description="MoE students: experts per token while training (None = all of them: with top-1 and "
        "normalised weights the chosen expert's weight is always 1 and the gate gets no gradient); the saved "
        "checkpoint keeps its own top-k")
    lora: LoraConfig = LoraConfig()
    max_train_examples: int | None = Field(None, gt=0)
    seed: int = 0
    bf16: bool = False
    output_dir: str = "models/checkpoints/distill"

    @model_validator(mode="after")
    def _teacher_none_is_plain_finetuning(self):
        if self.teacher_type == "none" and (self.distill_loss_weight != 0 or self.task_loss_weight <= 0):
            raise ValueError("teacher_type none is plain fine-tuning: set distill_loss_weight 0 and task_loss_weight > 0")
        return self


class MergeConfig(_Section):
    method: Literal["linear", "task_arithmetic", "ties", "dare"] = "linear"
    weight: float = Field(0.5, ge=0, le=1, description="linear: 0 = foundation, 1 = sft")
    scale: float = Field(1.0, description="lambda on the task vector sft - foundation")
    density: float = Field(0.5, gt=0, le=1, description="fraction of the task vector kept (TIES/DARE)")
    seed: int = 0
    output_dir: str = "models/merged"


class MoeConfig(_Section):
    """``sopmoe moe``: the pair as one Mixture-of-Experts checkpoint (BTX); ``sopmoe train-moe`` trains its gates."""

    attention: Literal["foundation", "sft", "mean"] = Field(
        "mean", description="source of the shared weights (embeddings, attention, norms, head); mean = BTX's average")
    top_k: Literal[1, 2] = Field(2, description="experts per token the checkpoint is served with (1 = a 1x fusion)")
    gate_init: Literal["zero", "hidden"] = Field(
        "zero", description="zero = 0.5/0.5 at top-2; hidden = each expert's gate row from the mean hidden state of the "
        "training prompts where that expert is the better one (mergekit-moe's idea)")
    router_aux_loss_coef: float = Field(0.01, ge=0, description="weight of transformers' Switch load-balancing loss "
                                        "in gate training (written into the checkpoint's config)")
    output_dir: str = "models/moe"


class EvaluationConfig(_Section):
    tasks: list[str] = Field(default_factory=lambda: ["sop_strict", "reasoning", "mixed", "eval"])
    models: list[str] = Field(default_factory=lambda: ["foundation", "sft", "ensemble", "btm", "distill", "merge"])
    batch_size: int = Field(16, gt=0)
    limit: int | None = Field(None, gt=0, description="examples per task (None = all)")
    output_dir: str = "results/runs/latest"


class SopmoeConfig(_Section):
    models: ModelsConfig = ModelsConfig()
    data: DataConfig = DataConfig()
    ensemble: EnsembleConfig = EnsembleConfig()
    generation: GenerationConfig = GenerationConfig()
    btm: BtmConfig = BtmConfig()
    distill: DistillConfig = DistillConfig()
    merge: MergeConfig = MergeConfig()
    moe: MoeConfig = MoeConfig()
    evaluation: EvaluationConfig = EvaluationConfig()

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def save(self, path: str | Path) -> None:
        """Write the resolved config (atomically) next to a result or checkpoint."""
        write_atomic(path, yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True))


# Keys whose string values are paths: resolved against the YAML's folder when relative.
PATH_KEYS = (
    "models.foundation.path",
    "models.sft.path",
    "data.train_file",
    "data.eval_file",
    "data.dev_dir",
    "data.task_data_dir",
    "distill.btm_router",
    "generation.draft",  # except the words auto and lookup
    "generation.draft_corpus",
)
NOT_PATHS = ("auto", "lookup", "none", "")


def _get(d: dict, dotted: str) -> Any:
    for part in dotted.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


def _set(d: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for part in parents:
        d = d.setdefault(part, {})
        if not isinstance(d, dict):
            raise ConfigError(f"cannot set '{dotted}': '{part}' is not a section")
    d[leaf] = value


def _format_errors(err: ValidationError, source: str, overridden: set[str] = frozenset()) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(x) for x in e["loc"] if not isinstance(x, int)) or "(top level)"
        msg = "unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, ")
        where = " (given as a flag or model argument)" if key in overridden else ""
        parts.append(f"{key}{where}: {msg}")
    return f"{source}: invalid config: " + "; ".join(parts)


def load_config(
    path: str | Path | None = None, overrides: dict[str, Any] | None = None, *, use_default: bool = True
) -> SopmoeConfig:
    """Read, resolve and validate the config. ``overrides`` maps dotted keys to values (CLI flags).

    ``path=None`` uses ``configs/config.yaml`` when it exists in the working directory (unless ``use_default`` is
    False, as for lm-eval model_args, where only an explicit ``config=`` is read), else the defaults.
    """
    raw: dict[str, Any] = {}
    base = Path.cwd()
    source = "<defaults>"
    if path is None and use_default and DEFAULT_CONFIG.is_file():
        path = DEFAULT_CONFIG
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError(f"{path}: not UTF-8 text (byte {e.start}); save the config as UTF-8") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({' '.join(str(e).split())})") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
        raw = loaded or {}
        base = path.resolve().parent
        source = str(path)
    for key in PATH_KEYS:
        value = _get(raw, key)
        if isinstance(value, str) and value.strip().lower() not in NOT_PATHS and not Path(value).expanduser().is_absolute():
            _set(raw, key, str((base / value).resolve()))
    for key, value in (overrides or {}).items():
        _set(raw, key, value)
    try:
        return SopmoeConfig.model_validate(raw)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source, set(overrides or {}))) from None
