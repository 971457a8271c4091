"""``sopmoe distill``: distil the fused teacher (ensemble or BTM router) into one student at 1x inference cost.

The seed's ``--teacher_type btm|ensemble --student_init foundation|sft|PATH``. Writes ``<output_dir>/best_student``
(a plain HF folder: ``lm_eval --model hf`` or ``--model sopmoe_distill``) with ``distill.json``, the last checkpoint
for ``--resume``, ``logs/distill.log`` and TensorBoard scalars under ``outputs/tensorboard/``. Data parallel with
``accelerate launch -m harness.cli distill ...`` (``distill.batch_size`` is the global batch). A folder that already
holds a distillation run is refused unless ``--resume`` (continue it) or ``--overwrite`` (replace it).
"""

from __future__ import annotations

import argparse
import os

from harness.cli import finite_float

NAME = "distill"
HELP = "distil the ensemble or BTM teacher into one student (KD + task loss, full or LoRA)"
EXAMPLES = [
    "sopmoe distill --config configs/config.yaml --teacher_type ensemble --student_init sft",
    "sopmoe distill --config configs/config.yaml --teacher_type btm --btm_router models/checkpoints/btm "
    "--student_init foundation --lora --teacher_cache_topk 32",
    "sopmoe distill --teacher_type none --distill_loss_weight 0 --task_loss_weight 1 --output_dir runs/replay_sft",
    "accelerate launch --num_processes 2 -m harness.cli distill --config configs/config.yaml --resume",
]
ORDER = 40


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--teacher_type", dest="distill.teacher_type", choices=["ensemble", "btm", "none"],
                   help="the fused teacher; none = plain fine-tuning on the references (the replay_sft baseline: "
                   "--distill_loss_weight 0 --task_loss_weight 1)")
    p.add_argument("--btm_router", dest="distill.btm_router", help="router checkpoint (folder or .safetensors) for btm")
    p.add_argument("--student_init", dest="distill.student_init", help="foundation | sft | a model folder")
    p.add_argument("--output_dir", dest="distill.output_dir", help="run folder (default: distill.output_dir)")
    p.add_argument("--foundation_weight", dest="ensemble.foundation_weight", type=finite_float, help="ensemble teacher weight")
    p.add_argument("--sft_weight", dest="ensemble.sft_weight", type=finite_float, help="ensemble teacher weight")
    p.add_argument("--mix", dest="ensemble.mix", choices=["prob", "logit"], help="ensemble teacher mixing rule")
    p.add_argument("--temperature", dest="distill.temperature", type=finite_float, help="KD temperature T")
    p.add_argument("--distill_loss_weight", dest="distill.distill_loss_weight", type=finite_float, help="weight of T²·KL")
    p.add_argument("--task_loss_weight", dest="distill.task_loss_weight", type=finite_float, help="weight of the task CE")
    p.add_argument("--kl", dest="distill.kl", choices=["forward", "reverse", "jsd"], help="divergence")
    p.add_argument("--learning_rate", dest="distill.learning_rate", type=finite_float)
    p.add_argument("--num_epochs", dest="distill.num_epochs", type=int)
    p.add_argument("--batch_size", dest="distill.batch_size", type=int, help="global batch (over all processes)")
    p.add_argument("--max_train_examples", dest="distill.max_train_examples", type=int)
    p.add_argument("--teacher_cache_topk", dest="distill.teacher_cache_topk", type=int,
                   help="cache the teacher's top-k log-probs once and reuse them (default: live teacher)")
    p.add_argument("--lora", dest="distill.lora.enabled", action="store_const", const=True, help="train LoRA adapters")
    p.add_argument("--seed", dest="distill.seed", type=int)
    p.add_argument("--resume", action="store_true",
                   help="continue from <output_dir>/checkpoint (same settings and data; the best so far is kept)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the distillation run already in --output_dir (refused without --resume or this flag)")
    p.add_argument("--allow_missing_fingerprint", action="store_true",
                   help="run a btm teacher whose router.json records no expert fingerprint (unverified)")
    p.add_argument("--log-file", default="logs/distill.log", help="log file (default: logs/distill.log)")


def run(args: argparse.Namespace) -> int:
    from harness.cli import config_from_args, setup_logging

    rank = int(os.environ.get("RANK", "0"))
    # Only the main process logs at the requested level and to the file; the others report warnings and errors.
    setup_logging(args.log_level if rank == 0 else "WARNING", args.log_file if rank == 0 else None)
    cfg = config_from_args(args)
    from training.distill_trainer import train

    card = train(cfg, resume=args.resume, overwrite=args.overwrite,
                 allow_missing_fingerprint=args.allow_missing_fingerprint)
    if rank == 0:
        best = card["best"]
        print(f"best student: {cfg.distill.output_dir}/best_student (epoch {best['epoch']}, {best['metric']} {best['score']:.4f})")
    return 0
