"""``sopmoe moe``: write the expert pair as one standard Mixture-of-Experts checkpoint (Branch-Train-MiX).

The experts' feed-forward blocks become the two experts of one MoE layer in every decoder layer, the other weights
come from ``--attention`` (foundation, sft or their mean), and each layer gets a router (``--gate_init zero`` or
``hidden``). Qwen3 -> Qwen3-MoE, Llama/Mistral -> Mixtral, Qwen2 -> Qwen2-MoE, in the hub's per-expert tensor names:
``AutoModelForCausalLM.from_pretrained(DIR)``, ``lm_eval --model hf`` and vLLM load it with no sopmoe code
(:mod:`sopmoe_models.moe`). Train its gates with ``sopmoe train-moe``; ``--from DIR --top_k 1`` re-serves a (trained)
MoE with another number of experts per token, the weights unchanged.

``--gate_init hidden`` reads ``data.train_file`` (the kinds ``data.train_kinds`` allows): each training request is
labelled with the expert whose per-token loss on its reference is lower (the rule ``sopmoe train-dispatch`` uses), and
each expert's gate row is the mean hidden state of its requests' prompts.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.cli import finite_float

NAME = "moe"
HELP = "write foundation + sft as one Mixture-of-Experts checkpoint (BTX) that transformers, lm-eval hf and vLLM load"
EXAMPLES = [
    "sopmoe moe --foundation F --sft S --out models/moe --attention mean --top_k 2",
    "sopmoe moe --config configs/config.yaml --gate_init hidden --out models/moe_hidden",
    "sopmoe moe --from models/moe_trained/best_student --top_k 1 --out models/moe_top1  # serve trained gates top-1",
]
ORDER = 45


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", dest="moe.output_dir", help="output folder (default: moe.output_dir)")
    p.add_argument("--attention", dest="moe.attention", choices=["foundation", "sft", "mean"],
                   help="source of the shared weights: embeddings, attention, norms, head (default: moe.attention)")
    p.add_argument("--top_k", dest="moe.top_k", type=int, choices=[1, 2],
                   help="experts per token when served (default: moe.top_k)")
    p.add_argument("--gate_init", dest="moe.gate_init", choices=["zero", "hidden"],
                   help="zero (0.5/0.5 at top-2) or hidden (each expert's mean prompt state; reads data.train_file)")
    p.add_argument("--router_aux_loss_coef", dest="moe.router_aux_loss_coef", type=finite_float,
                   help="load-balancing weight written into the checkpoint for gate training")
    p.add_argument("--from", dest="from_moe", type=Path, default=None,
                   help="re-serve this MoE folder with --top_k (same weights) instead of building one")
    p.add_argument("--train_file", dest="data.train_file", help="prompts for --gate_init hidden (data.train_file)")
    p.add_argument("--batch_size", type=int, default=16, help="requests per forward for --gate_init hidden")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out when sopmoe moe wrote it (anything else is refused)")


def gate_prompts(cfg, batch_size: int) -> list[tuple[str, int]]:
    """(formatted prompt, expert index) of every training request, labelled with the expert whose per-token loss on
    the reference is lower (``sopmoe train-dispatch``'s rule)."""
    from sopmoe_models.data import load_training_examples
    from sopmoe_models.errors import UserError
    from sopmoe_models.factory import load_pair
    from sopmoe_models.prompt import format_prompt
    from training.dispatch_trainer import expert_nll

    if not cfg.data.train_file:
        raise UserError("--gate_init hidden: data.train_file is not set (the prompts each expert's gate row is made of)")
    examples = load_training_examples(cfg.data.train_file, cfg.data.train_kinds)
    pair = load_pair(cfg)
    nll = expert_nll(pair, examples, cfg.data.prompt_format, batch_size)
    labels = nll.argmin(dim=1).tolist()
    return [(format_prompt(e.input, cfg.data.prompt_format, pair.tokenizer), int(y)) for e, y in zip(examples, labels)]


def run(args: argparse.Namespace) -> int:
    from harness.cli import config_from_args, setup_logging
    from sopmoe_models.errors import UserError
    from sopmoe_models.moe import build_moe, with_top_k

    setup_logging(args.log_level, "logs/moe.log")
    cfg = config_from_args(args)
    m = cfg.moe
    out = Path(m.output_dir).expanduser()
    if args.from_moe is not None:
        if args.__dict__.get("moe.top_k") is None:
            raise UserError("--from needs --top_k: the number of experts per token to serve the checkpoint with")
        with_top_k(args.from_moe, out, m.top_k, overwrite=args.overwrite)
        print(f"moe: {args.from_moe} served top-{m.top_k} -> {out}")
        return 0
    if not cfg.models.foundation.path or not cfg.models.sft.path:
        raise UserError("models.foundation.path and models.sft.path must be set (config, or --foundation/--sft)")
    prompts = gate_prompts(cfg, args.batch_size) if m.gate_init == "hidden" else None
    card = build_moe(cfg.models.foundation.path, cfg.models.sft.path, out, attention=m.attention, top_k=m.top_k,
                     gate_init=m.gate_init, gate_prompts=prompts, aux_loss_coef=m.router_aux_loss_coef,
                     overwrite=args.overwrite, provenance={"config": cfg.to_dict()["moe"]})
    print(f"moe: {card['architecture']} (shared weights: {m.attention}, top-{m.top_k}, gates {m.gate_init}, "
          f"{card['inference_cost']}x one expert's multiply-adds per token) -> {out}")
    return 0
