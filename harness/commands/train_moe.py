"""``sopmoe train-moe``: train the routers (gates) of an MoE checkpoint written by ``sopmoe moe`` (BTX's router step).

It is ``sopmoe distill`` with the MoE as its student (one training loop: accelerate with several processes, the best
epoch on dev loss, ``--resume`` / ``--overwrite``, the same run-folder layout and ``distill.json``), with the defaults of
gate training, which a flag overrides:

- only the routers train (``distill.trainable router``): 2 x hidden numbers per layer; the experts, attention and head
  stay the experts' own;
- plain cross-entropy on ``data.train_file`` (the kinds ``data.train_kinds`` allows; no composition row), or KD from a
  router teacher with ``--teacher_type btm --btm_router R --distill_loss_weight W``;
- learning rate 1e-2 (a few thousand parameters);
- soft routing while training (all experts, ``distill.router_top_k``): with top-1 the chosen expert's normalised weight
  is always 1 and the gate gets no gradient. The saved checkpoint keeps the top-k it was built with; re-serve it at
  another k with ``sopmoe moe --from DIR --top_k K``;
- transformers' Switch load-balancing loss at the checkpoint's ``router_aux_loss_coef``.

``--lora_attention`` adds BTX's fine-tuning stage: LoRA on the attention projections, trained with the gates, merged on
save. It changes more than the fusion's routing, so its row is labelled apart (``moe_lora``), never mixed in.
Writes ``<output_dir>/best_student``: the trained MoE, a standard checkpoint (``moe.json`` records the training).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from harness.commands import distill

NAME = "train-moe"
HELP = "train the gates of an MoE checkpoint made by `sopmoe moe` (only the routers by default; distill's loop)"
EXAMPLES = [
    "sopmoe train-moe --config configs/config.yaml --moe models/moe --output_dir models/moe-trained",
    "sopmoe train-moe --moe models/moe --lora_attention --output_dir models/moe-lora  # BTX's fine-tuning stage",
]
ORDER = 46
# Gate training's defaults, applied where neither a flag nor this command's own config keys say otherwise.
DEFAULTS = {"distill.teacher_type": "none", "distill.distill_loss_weight": 0.0, "distill.task_loss_weight": 1.0,
            "distill.trainable": "router", "distill.learning_rate": 1e-2}
ATTENTION_PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def add_arguments(p: argparse.ArgumentParser) -> None:
    distill.add_arguments(p)
    p.add_argument("--moe", dest="distill.student_init",
                   help="the MoE checkpoint to train (default: moe.output_dir, what `sopmoe moe` wrote)")
    p.add_argument("--trainable", dest="distill.trainable", choices=["router", "all"],
                   help="router (default: the gates only) or all (every weight of the MoE)")
    p.add_argument("--router_top_k", dest="distill.router_top_k", type=int,
                   help="experts per token while training (default: all of them, soft routing)")
    p.add_argument("--train_file", dest="data.train_file", help="training JSONL (default: data.train_file)")
    p.add_argument("--eval_file", dest="data.eval_file", help="dev JSONL for the best epoch (default: data.eval_file)")
    p.add_argument("--lora_attention", action="store_true",
                   help="also train LoRA on the attention projections (BTX's fine-tuning stage; its own leaderboard row)")
    p.set_defaults(log_file="logs/train-moe.log")


def run(args: argparse.Namespace) -> int:
    from harness.cli import config_from_args

    for key, value in DEFAULTS.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.lora_attention:
        setattr(args, "distill.lora.enabled", True)
        setattr(args, "distill.lora.target_modules", ATTENTION_PROJECTIONS)
    cfg = config_from_args(args)
    if getattr(args, "distill.student_init") is None:
        setattr(args, "distill.student_init", cfg.moe.output_dir)
    if getattr(args, "distill.output_dir") is None:
        setattr(args, "distill.output_dir", str(Path(cfg.moe.output_dir).with_name(Path(cfg.moe.output_dir).name + "-trained")))
    return distill.run(args)
