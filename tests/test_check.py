"""``sopmoe check`` gives a one-line reason and a non-zero exit for each kind of bad input."""

import shutil

import pytest

from harness.cli import main
from tests import tiny


def run(capsys, *argv):
    rc = main(["check", *argv])
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


def good_args(tiny_pair_dirs, tiny_data_dir, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        f"data:\n  train_file: {tiny_data_dir}/train/train.jsonl\n  eval_file: {tiny_data_dir}/eval/eval_all.jsonl\n"
        f"  task_data_dir: {tiny_data_dir}/eval\n",
        encoding="utf-8",
    )
    f, s = tiny_pair_dirs
    return ["--config", str(cfg), "--foundation", str(f), "--sft", str(s)]


def test_good_setup_passes(capsys, tiny_pair_dirs, tiny_data_dir, tmp_path):
    rc, err = run(capsys, *good_args(tiny_pair_dirs, tiny_data_dir, tmp_path))
    assert rc == 0 and err == []


def test_bad_config_key(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models:\n  foundaton: {}\n", encoding="utf-8")
    rc, err = run(capsys, "--config", str(cfg))
    assert rc == 2 and len(err) == 1 and "models.foundaton: unknown key" in err[0]


def test_missing_model_path(capsys, tiny_pair_dirs, tiny_data_dir, tmp_path):
    args = good_args(tiny_pair_dirs, tiny_data_dir, tmp_path)
    args[args.index("--foundation") + 1] = str(tmp_path / "nowhere")
    rc, err = run(capsys, *args)
    assert rc == 1 and len(err) == 1 and "nowhere does not exist" in err[0]


@pytest.mark.parametrize("content, reason", [(b"", "empty data file"), (b"{oops\n", ":1: malformed JSON"),
                                             (b'{"input": "\xfe", "output": "x"}\n', ":1: invalid UTF-8")])
def test_bad_data_file(capsys, tiny_pair_dirs, tiny_data_dir, tmp_path, content, reason):
    args = good_args(tiny_pair_dirs, tiny_data_dir, tmp_path)
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(content)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(cfg.read_text().replace(f"{tiny_data_dir}/train/train.jsonl", str(bad)), encoding="utf-8")
    rc, err = run(capsys, *args)
    assert rc == 1 and len(err) == 1 and str(bad) in err[0] and reason in err[0]


def test_mismatched_tokenizers(capsys, tiny_pair_dirs, tiny_data_dir, tmp_path):
    other = tmp_path / "other_sft"
    shutil.copytree(tiny_pair_dirs[1], other)
    tiny.make_tokenizer(extra_chars="ΩΨ").save_pretrained(other)
    args = good_args(tiny_pair_dirs, tiny_data_dir, tmp_path)
    args[args.index("--sft") + 1] = str(other)
    rc, err = run(capsys, *args)
    assert rc == 1 and len(err) == 1 and "tokenizers differ" in err[0]
