"""``sopmoe export-llamafactory``: the training data and a config for LlamaFactory's SFT, the seed's baseline path.

Writes into ``--output_dir``:
- ``sopmoe_train.jsonl``: ``{"input": prompt, "output": response}`` per training example. With ``prompt_format:
  raw`` the prompt already carries our separator (``format_prompt``) and the yaml uses LlamaFactory's ``empty``
  template, so LlamaFactory trains on exactly the tokens ``sopmoe distill`` does. With ``--teacher_outputs`` the
  response is the fused teacher's greedy output instead of the reference: sequence-level knowledge distillation
  (Kim & Rush 2016, "Sequence-Level Knowledge Distillation"), generated in KV-cached batches by
  ``FusedLM.generate``.
- ``dataset_info.json``: the dataset entry (alpaca formatting, columns ``prompt: input``, ``response: output``).
- ``llamafactory_distill.yaml``: model path (the student init), template, finetuning type (LoRA settings),
  dataset, output dir and the optimisation settings of our ``distill`` section.
Run it with ``llamafactory-cli train DIR/llamafactory_distill.yaml``.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from harness.cli import finite_float
from sopmoe_models.console import new_progress
from sopmoe_models.outputs import write_atomic

NAME = "export-llamafactory"
HELP = "write dataset_info.json, the training JSONL (optionally teacher outputs) and a LlamaFactory SFT yaml"
EXAMPLES = [
    "sopmoe export-llamafactory --config configs/config.yaml --output_dir exports/llamafactory",
    "sopmoe export-llamafactory --config configs/config.yaml --output_dir exports/seqkd --teacher_outputs",
]
ORDER = 45
DATASET = "sopmoe_distill"
DATA_FILE = "sopmoe_train.jsonl"
YAML_FILE = "llamafactory_distill.yaml"

log = logging.getLogger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output_dir", required=True, type=Path, help="folder for the exported files")
    p.add_argument("--teacher_outputs", action="store_true", help="responses = the teacher's greedy outputs (seq-KD)")
    p.add_argument("--teacher_type", dest="distill.teacher_type", choices=["ensemble", "btm"], help="the fused teacher")
    p.add_argument("--btm_router", dest="distill.btm_router", help="router checkpoint for --teacher_type btm")
    p.add_argument("--foundation_weight", dest="ensemble.foundation_weight", type=finite_float)
    p.add_argument("--sft_weight", dest="ensemble.sft_weight", type=finite_float)
    p.add_argument("--student_init", dest="distill.student_init", help="foundation | sft | a model folder")
    p.add_argument("--max_train_examples", dest="distill.max_train_examples", type=int)
    p.add_argument("--max_new_tokens", dest="generation.max_new_tokens", type=int, help="teacher output length cap")
    p.add_argument("--template", default=None, help="LlamaFactory template (default: empty for raw prompts, qwen3 for chat)")
    p.add_argument("--batch_size", type=int, default=16, help="teacher generation batch size")
    p.add_argument("--overwrite", action="store_true", help="replace an existing export in --output_dir")
    p.add_argument("--allow_missing_fingerprint", action="store_true",
                   help="run a btm teacher whose router.json records no expert fingerprint (unverified)")


def teacher_responses(teacher, examples, cfg, batch_size: int) -> list[str]:
    """Greedy outputs of the fused teacher for each example's prompt (left-padded, KV-cached batches)."""

    from sopmoe_models.prompt import format_prompt

    tok = teacher.tokenizer
    tok.padding_side = "left"
    prompts = [format_prompt(ex.input, cfg.data.prompt_format, tok) for ex in examples]
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: list[str] = [""] * len(prompts)
    g = cfg.generation
    with new_progress() as progress:
        task = progress.add_task("teacher outputs", total=len(prompts))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            res = teacher.generate(enc["input_ids"].to(teacher.device), enc["attention_mask"].to(teacher.device),
                                   max_new_tokens=g.max_new_tokens, temperature=0.0, stop=list(g.stop))
            for i, text in zip(idx, res.texts):
                out[i] = text.strip()
            progress.update(task, advance=len(idx))
    return out


def llamafactory_yaml(cfg, out_dir: Path, model_path: str, template: str) -> dict:
    d = cfg.distill
    doc = {
        "model_name_or_path": model_path,
        "trust_remote_code": False,
        "stage": "sft",
        "do_train": True,
        "finetuning_type": "lora" if d.lora.enabled else "full",
    }
    if d.lora.enabled:
        doc.update(lora_rank=d.lora.r, lora_alpha=d.lora.alpha, lora_dropout=d.lora.dropout,
                   lora_target=",".join(d.lora.target_modules))
    doc.update({
        "dataset": DATASET,
        "dataset_dir": str(out_dir.resolve()),
        "template": template,
        "cutoff_len": cfg.data.max_length,
        "overwrite_cache": True,
        "output_dir": str(Path(d.output_dir).resolve() / "llamafactory"),
        "logging_steps": 10,
        "save_strategy": "epoch",
        "plot_loss": True,
        "overwrite_output_dir": True,
        "per_device_train_batch_size": d.batch_size,
        "gradient_accumulation_steps": d.gradient_accumulation_steps,
        "learning_rate": d.learning_rate,
        "num_train_epochs": float(d.num_epochs),
        "lr_scheduler_type": "linear",
        "warmup_ratio": d.warmup_ratio,
        "weight_decay": d.weight_decay,
        "bf16": d.bf16,
        "seed": d.seed,
        "disable_gradient_checkpointing": not d.gradient_checkpointing,
    })
    return doc


def run(args: argparse.Namespace) -> int:
    import yaml

    from harness.cli import config_from_args
    from sopmoe_models.data import Example, load_training_examples, write_jsonl
    from sopmoe_models.prompt import format_prompt
    from training.distill_trainer import student_path

    cfg = config_from_args(args)
    if not cfg.data.train_file:
        raise ValueError("data.train_file is not set (the JSONL to export)")
    examples = load_training_examples(cfg.data.train_file, cfg.data.train_kinds)
    if cfg.distill.max_train_examples:
        examples = examples[: cfg.distill.max_train_examples]
    model_path = student_path(cfg)
    raw = cfg.data.prompt_format == "raw"
    template = args.template or ("empty" if raw else "qwen3")
    out_dir: Path = args.output_dir
    if not args.overwrite:
        from sopmoe_models.outputs import refuse_existing

        for name in (DATA_FILE, "dataset_info.json", YAML_FILE):
            refuse_existing(out_dir / name, "an export")
    responses = [ex.output for ex in examples]
    source = "reference"
    if args.teacher_outputs:
        from sopmoe_models.factory import build_teacher

        teacher = build_teacher(cfg, allow_missing_fingerprint=args.allow_missing_fingerprint)
        responses = teacher_responses(teacher, examples, cfg, args.batch_size)
        source = f"teacher:{cfg.distill.teacher_type}"
    # raw: the separator is part of the prompt text (LlamaFactory's `empty` template adds nothing);
    # chat: the template adds the chat markup, so the prompt is the user's text.
    rows = [Example(format_prompt(ex.input, "raw") if raw else ex.input, resp, id=ex.id, category=ex.category)
            for ex, resp in zip(examples, responses) if resp.strip()]
    if len(rows) < len(examples):
        log.warning("dropped %d of %d examples whose teacher output is empty", len(examples) - len(rows), len(examples))
    if not rows:
        raise ValueError("every teacher output is empty; nothing to export (check the teacher and max_new_tokens)")
    write_jsonl(out_dir / DATA_FILE, rows)
    info = {DATASET: {"file_name": DATA_FILE, "formatting": "alpaca", "columns": {"prompt": "input", "response": "output"}}}
    for name, text in (("dataset_info.json", json.dumps(info, indent=2, ensure_ascii=False) + "\n"),
                       (YAML_FILE, yaml.safe_dump(llamafactory_yaml(cfg, out_dir, model_path, template), sort_keys=False,
                                                  allow_unicode=True))):
        write_atomic(out_dir / name, text)
    print(f"wrote {len(rows)} examples ({source} responses) and {YAML_FILE} to {out_dir}; "
          f"run: llamafactory-cli train {out_dir / YAML_FILE}")
    return 0
