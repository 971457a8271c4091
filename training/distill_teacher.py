"""The distillation teacher: build it from the config, fingerprint it, and serve its targets live or from a cache.

Teacher = any :class:`~sopmoe_models.fused.FusedLM` (``ensemble``: :class:`~sopmoe_models.ensemble.EnsembleLM` at the
configured weights; ``btm``: a saved router), built by :func:`sopmoe_models.factory.build_teacher`, frozen, always called under
``torch.inference_mode()``; its outputs are inference tensors, so they are ``.clone()``d before entering autograd.

Offline cache (``distill.teacher_cache_topk: K``): for every example, one row per output token with the tempered
teacher's top-K log-probs, their ids and the log tail mass (:class:`training.kd_losses.TopKTeacher`), written once
as safetensors parts plus ``cache.json`` under ``<cache_root>/<key>/``. The key hashes the teacher fingerprint (class,
expert fingerprints, mixture weights and mix or router type/kwargs, and every tensor of the fusion's own state, e.g.
router weights), the data file's bytes, the tokenised examples (prompt format, max_length, tokenizer), K and the
temperature. A changed teacher or data therefore looks in another folder; a folder whose manifest does not match
(stale, partial, corrupted) is deleted and rebuilt, never reused. With several processes each builds its slice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sopmoe_models.data import collate, output_mask
from sopmoe_models.fused import FusedLM
from training.kd_losses import TopKTeacher, select_output_positions, topk_teacher

log = logging.getLogger(__name__)

# 2: the teacher's distribution covers the experts' full output width (padded rows included), not the tokenizer's
CACHE_FORMAT = 2
MANIFEST = "cache.json"


def _sha256_file(path: str | Path) -> str:
    from sopmoe_models.outputs import file_sha256

    return file_sha256(path)


def teacher_fingerprint(teacher: FusedLM) -> dict[str, Any]:
    """Everything that determines the teacher's outputs, as plain JSON (stored in distill.json and cache keys)."""
    h = hashlib.sha256()
    for name, t in sorted(teacher.state_dict().items()):  # the fusion's own tensors (router weights, priors)
        h.update(name.encode())
        h.update(t.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    fp: dict[str, Any] = {
        "class": type(teacher).__name__,
        "name": getattr(teacher, "name", None),
        "experts": teacher.pair.fingerprints(),
        "expert_paths": {"foundation": teacher.pair.foundation_path, "sft": teacher.pair.sft_path},
        "state_sha256": h.hexdigest()[:16],
    }
    if hasattr(teacher, "weights"):
        fp["weights"] = [float(w) for w in teacher.weights]
    if hasattr(teacher, "mix"):
        fp["mix"] = teacher.mix
    card = getattr(teacher, "card_data", None)
    if card:
        fp["router"] = {"path": getattr(teacher, "router_path", None), "type": card.get("type"), "kwargs": card.get("kwargs")}
    return fp


def features_sha256(features: list[dict[str, list[int]]]) -> str:
    h = hashlib.sha256()
    for f in features:
        h.update(json.dumps([f["input_ids"], f["labels"]]).encode())
    return h.hexdigest()


def cache_key(teacher_fp: dict, data_file: str | Path, features: list[dict], k: int, temperature: float) -> str:
    blob = {
        "format": CACHE_FORMAT,
        "teacher": teacher_fp,
        "data_sha256": _sha256_file(data_file),
        "features_sha256": features_sha256(features),
        "k": int(k),
        "temperature": float(temperature),
    }
    return hashlib.sha256(json.dumps(blob, sort_keys=True).encode()).hexdigest()[:20]


def n_output_tokens(feature: dict[str, list[int]]) -> int:
    """Rows an example contributes: positions t whose next label is an output token."""
    return sum(1 for y in feature["labels"][1:] if y != -100)


# --- targets the trainer asks for ------------------------------------------------------------------------------


class LiveTeacher:
    """Runs the teacher on each batch: full log-probs (N, V) of the output positions."""

    def __init__(self, teacher: FusedLM):
        self.teacher = teacher

    def __call__(self, indices: list[int], batch: dict[str, torch.Tensor]) -> torch.Tensor:
        with torch.inference_mode():
            lp = self.teacher(batch["input_ids"], batch["attention_mask"]).logprobs  # (B, T, V)
            rows, _ = select_output_positions(lp, batch["labels"])
        return rows.clone()  # an ordinary tensor: inference tensors cannot enter autograd expressions


@dataclass
class TeacherCache:
    """All rows of one cache, in example order; ``offsets[i]:offsets[i+1]`` are example i's rows."""

    logprobs: torch.Tensor  # (R, K) float32
    ids: torch.Tensor  # (R, K) int64
    tail: torch.Tensor  # (R,) float32
    offsets: torch.Tensor  # (n_examples + 1,) int64
    path: Path
    built: bool = False  # True when this run computed it

    def __call__(self, indices: list[int], batch: dict[str, torch.Tensor]) -> TopKTeacher:
        device = batch["input_ids"].device
        idx = [torch.arange(int(self.offsets[i]), int(self.offsets[i + 1])) for i in indices if i >= 0]
        rows = torch.cat(idx) if idx else torch.zeros(0, dtype=torch.long)
        return TopKTeacher(self.logprobs[rows].to(device), self.ids[rows].to(device), self.tail[rows].to(device))


def _read_cache(path: Path, key: str, features: list[dict], k: int) -> TeacherCache | None:
    """Load and verify a cache folder; None (with the reason logged) when it does not match."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        man = json.loads((path / MANIFEST).read_text())
        if man.get("key") != key or man.get("k") != k or man.get("n_examples") != len(features):
            log.warning("teacher cache %s does not match this teacher/data (stale): rebuilding", path)
            return None
        parts = [load_file(str(path / p["file"])) for p in man["parts"]]
        counts = torch.cat([p["counts"] for p in parts])
        want = torch.tensor([n_output_tokens(f) for f in features])
        if counts.shape != want.shape or not bool((counts == want).all()):
            log.warning("teacher cache %s has other token counts than the data (stale): rebuilding", path)
            return None
        offsets = torch.zeros(len(features) + 1, dtype=torch.long)
        offsets[1:] = counts.cumsum(0)
        return TeacherCache(
            torch.cat([p["logprobs"] for p in parts]).float(),
            torch.cat([p["ids"] for p in parts]).long(),
            torch.cat([p["tail"] for p in parts]).float(),
            offsets,
            path,
        )
    except (OSError, ValueError, KeyError, RuntimeError, SafetensorError) as e:
        log.warning("teacher cache %s is unreadable (%s): rebuilding", path, e)
        return None


@torch.inference_mode()
def _compute_part(teacher: FusedLM, features: list[dict], k: int, temperature: float, pad_id: int, batch_size: int,
                  device: torch.device, progress=None) -> dict[str, torch.Tensor]:
    """Top-k rows for ``features`` (in their order), batched by similar length."""
    order = sorted(range(len(features)), key=lambda i: len(features[i]["input_ids"]))
    per_example: list[TopKTeacher | None] = [None] * len(features)
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        batch = {k_: v.to(device) for k_, v in collate([features[i] for i in chunk], pad_id).items()}
        lp = teacher(batch["input_ids"], batch["attention_mask"]).logprobs
        rows, _ = select_output_positions(lp, batch["labels"])
        top = topk_teacher(rows, k, temperature)
        counts = output_mask(batch["labels"]).sum(1).tolist()
        pos = 0
        for i, n in zip(chunk, counts):
            per_example[i] = TopKTeacher(top.logprobs[pos : pos + n], top.ids[pos : pos + n], top.tail[pos : pos + n])
            pos += n
        if progress is not None:
            progress(len(chunk))
    kk = min(k, teacher.width)
    cat = lambda xs, shape: torch.cat(xs) if xs else torch.zeros(shape)  # noqa: E731
    return {
        "logprobs": cat([t.logprobs.float().cpu() for t in per_example], (0, kk)).contiguous(),
        "ids": cat([t.ids.cpu().to(torch.int32) for t in per_example], (0, kk)).to(torch.int32).contiguous(),
        "tail": cat([t.tail.float().cpu() for t in per_example], (0,)).contiguous(),
        "counts": torch.tensor([len(t) for t in per_example], dtype=torch.long),
    }


def get_cache(
    teacher: FusedLM,
    features: list[dict],
    *,
    data_file: str | Path,
    k: int,
    temperature: float,
    cache_root: str | Path,
    pad_id: int,
    batch_size: int,
    accelerator,
    teacher_fp: dict | None = None,
    progress=None,
) -> TeacherCache:
    """Reuse the matching cache under ``cache_root`` or build it (each process computes its slice of examples)."""
    from safetensors.torch import save_file

    teacher_fp = teacher_fp or teacher_fingerprint(teacher)
    key = cache_key(teacher_fp, data_file, features, k, temperature)
    path = Path(cache_root) / key
    if path.is_dir():
        cache = _read_cache(path, key, features, k)
        if cache is not None:
            log.info("teacher cache: reusing %s (%d rows, k=%d)", path, len(cache.tail), k)
            return cache
    accelerator.wait_for_everyone()  # every process has decided to rebuild before anyone deletes
    building = path.with_name(key + ".building")
    if accelerator.is_main_process:
        shutil.rmtree(path, ignore_errors=True)
        shutil.rmtree(building, ignore_errors=True)
        building.mkdir(parents=True)
    accelerator.wait_for_everyone()
    world, rank = accelerator.num_processes, accelerator.process_index
    per = -(-len(features) // world)
    lo, hi = min(rank * per, len(features)), min((rank + 1) * per, len(features))
    log.info("teacher cache: computing top-%d for %d examples into %s", k, len(features), path)
    part = _compute_part(teacher, features[lo:hi], k, temperature, pad_id, batch_size, accelerator.device, progress)
    name = f"part-{rank:04d}-of-{world:04d}.safetensors"
    save_file(part, str(building / name), metadata={"start": str(lo), "end": str(hi)})
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        manifest = {
            "key": key, "format": CACHE_FORMAT, "k": k, "temperature": temperature, "n_examples": len(features),
            "data_file": str(data_file), "teacher": teacher_fp,
            "parts": [{"file": f"part-{r:04d}-of-{world:04d}.safetensors"} for r in range(world)],
        }
        (building / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # last: marks the folder complete
        building.replace(path)
    accelerator.wait_for_everyone()
    cache = _read_cache(path, key, features, k)
    if cache is None:
        raise RuntimeError(f"teacher cache {path} failed verification right after it was written")
    cache.built = True
    return cache
