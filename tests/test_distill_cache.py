"""The offline teacher cache: exact rows, reuse, and rebuild whenever teacher, data or files do not match."""

from __future__ import annotations

import json

import pytest
import torch

from sopmoe_models.data import collate, encode_example, load_jsonl
from sopmoe_models.ensemble import EnsembleLM
from training.distill_teacher import LiveTeacher, get_cache, teacher_fingerprint
from training.kd_losses import topk_teacher


@pytest.fixture(scope="module")
def accelerator():
    from accelerate import Accelerator

    return Accelerator(cpu=True)


def _features(tok, path):
    return [encode_example(tok, ex, max_length=64) for ex in load_jsonl(path)]


def _cache(teacher, feats, data_file, root, accelerator, k=5):
    return get_cache(teacher, feats, data_file=data_file, k=k, temperature=2.0, cache_root=root,
                     pad_id=teacher.tokenizer.pad_token_id, batch_size=3, accelerator=accelerator)


def test_cache_rows_are_the_live_teachers_topk(tiny_pair, tiny_data_dir, tmp_path, accelerator):
    teacher = EnsembleLM(tiny_pair, 0.7, 0.3)
    data = tiny_data_dir / "train" / "train.jsonl"
    feats = _features(tiny_pair.tokenizer, data)
    cache = _cache(teacher, feats, data, tmp_path, accelerator)
    assert cache.built
    idx = [4, 0]
    batch = collate([feats[i] for i in idx], tiny_pair.tokenizer.pad_token_id)
    want = topk_teacher(LiveTeacher(teacher)(idx, batch), 5, 2.0)
    got = cache(idx, batch)
    torch.testing.assert_close(got.logprobs, want.logprobs, rtol=1e-5, atol=1e-5)
    assert torch.equal(got.ids, want.ids)
    torch.testing.assert_close(got.tail, want.tail, rtol=1e-5, atol=1e-5)


def test_reused_then_rebuilt_when_anything_changes(tiny_pair, tiny_data_dir, tmp_path, accelerator, caplog):
    data = tiny_data_dir / "train" / "train.jsonl"
    feats = _features(tiny_pair.tokenizer, data)
    teacher = EnsembleLM(tiny_pair, 0.7, 0.3)
    first = _cache(teacher, feats, data, tmp_path, accelerator)
    again = _cache(teacher, feats, data, tmp_path, accelerator)
    assert first.built and not again.built and again.path == first.path
    assert torch.equal(again.logprobs, first.logprobs)

    # another teacher (weights, mix) -> another key, built anew
    other = _cache(EnsembleLM(tiny_pair, 0.3, 0.7), feats, data, tmp_path, accelerator)
    assert other.built and other.path != first.path
    assert _cache(EnsembleLM(tiny_pair, 0.7, 0.3, mix="logit"), feats, data, tmp_path, accelerator).path != first.path
    # another K or data file content -> another key
    assert _cache(teacher, feats, data, tmp_path, accelerator, k=4).path != first.path
    edited = tmp_path / "train_edited.jsonl"
    edited.write_text(data.read_text(encoding="utf-8").replace("12+7", "12+8"), encoding="utf-8")
    changed = _cache(teacher, _features(tiny_pair.tokenizer, edited), edited, tmp_path, accelerator)
    assert changed.built and changed.path != first.path

    # a manifest that does not match its folder (stale or tampered) is rebuilt, not trusted
    manifest = first.path / "cache.json"
    doc = json.loads(manifest.read_text())
    doc["key"] = "0" * 20
    manifest.write_text(json.dumps(doc))
    with caplog.at_level("WARNING"):
        rebuilt = _cache(teacher, feats, data, tmp_path, accelerator)
    assert rebuilt.built and "stale" in caplog.text
    # a corrupted part file too
    part = next(rebuilt.path.glob("part-*.safetensors"))
    part.write_bytes(b"not a safetensors file")
    assert _cache(teacher, feats, data, tmp_path, accelerator).built


def test_router_state_enters_the_fingerprint(tiny_pair):
    """A fusion's own tensors (e.g. router weights) are part of the teacher fingerprint."""
    teacher = EnsembleLM(tiny_pair, 0.5, 0.5)
    a = teacher_fingerprint(teacher)
    teacher.register_buffer("prior", torch.tensor([0.2, 0.8]))
    b = teacher_fingerprint(teacher)
    assert a["state_sha256"] != b["state_sha256"] and a["experts"] == b["experts"]
