"""``lm_eval --model sopmoe_distill`` on a student written by ``sopmoe distill`` equals ``--model hf`` on it."""

from __future__ import annotations

import pytest

TASKS = ["sop_strict", "reasoning"]


@pytest.fixture(scope="module")
def student_dir(tmp_path_factory, tiny_pair_dirs, tiny_data_dir):
    import os

    from tests.test_distill import make_cfg
    from training.distill_trainer import train

    root = tmp_path_factory.mktemp("distill_student")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        train(make_cfg(tiny_pair_dirs, tiny_data_dir, root / "run", distill__num_epochs=1,
                       distill__max_train_examples=4))
    finally:
        os.chdir(cwd)
    return root / "run" / "best_student"


def _evaluate(model: str, model_args: str, data_dir):
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import simple_parse_args_string

    from sopmoe_models.lm_eval_plugin import register_all, tasks_dir

    register_all()
    # the model args in the tasks' metadata, as simple_evaluate puts them there itself without a task manager: the
    # per-token perplexity counts the model's own tokens
    meta = simple_parse_args_string(model_args) | {"data_dir": str(data_dir / "eval")}
    tm = TaskManager(include_path=tasks_dir(), include_defaults=False, metadata=meta)
    out = lm_eval.simple_evaluate(model=model, model_args=model_args, tasks=TASKS, device="cpu", batch_size=4,
                                  task_manager=tm, limit=3, log_samples=True)
    lls = {t: [s["resps"][0][0][0] for s in sorted(out["samples"][t], key=lambda s: s["doc_id"])] for t in TASKS}
    return out["results"], lls


def test_sopmoe_distill_equals_hf(student_dir, tiny_data_dir):
    res_d, ll_d = _evaluate("sopmoe_distill", f"pretrained={student_dir}", tiny_data_dir)
    res_h, ll_h = _evaluate("hf", f"pretrained={student_dir}", tiny_data_dir)
    for t in TASKS:
        assert ll_d[t] == ll_h[t]  # the same model and code path: identical log-likelihoods
        assert res_d[t]["acc,none"] == res_h[t]["acc,none"]
        assert res_d[t]["perplexity,none"] == res_h[t]["perplexity,none"]


def test_provenance_and_errors(student_dir, tmp_path):
    from sopmoe_models.adapters.distill import DistillLMEval, read_card

    card = read_card(student_dir)
    assert card["teacher"]["type"] == "ensemble" and card["best"]["epoch"] == 1
    lm = DistillLMEval(student=str(student_dir), device="cpu", batch_size=1)
    assert lm.distill_card == card
    with pytest.raises(FileNotFoundError, match="not a model folder"):
        DistillLMEval(pretrained=str(tmp_path), device="cpu")
    with pytest.raises(ValueError, match="pretrained=DIR"):
        DistillLMEval(device="cpu")
