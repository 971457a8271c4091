"""The plain ``lm_eval`` CLI finds sopmoe's tasks and models from any directory, with no extra flags.

Fast: the hook's two halves (tasks on every TaskManager's include path, models in the registry) and the explicit
registration ``sopmoe-lm-eval`` uses, each in a fresh interpreter, on an index of our tasks only. Slow (``-m slow``):
the same against lm-eval's full index of ~15k built-in tasks (~12 s to build), and the two real command lines run
end to end on the tiny pair.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def env(**extra):
    e = dict(os.environ, HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    e.pop("SOPMOE_NO_LM_EVAL_HOOK", None)
    e.update(extra)
    return e


def test_hook_is_cheap_at_startup():
    out = subprocess.run(
        [sys.executable, "-c", "import sys; print('torch' in sys.modules, 'lm_eval' in sys.modules)"],
        capture_output=True, text=True, env=env(), cwd="/", check=True,
    )
    assert out.stdout.split() == ["False", "False"]


OUR_TASKS = ("sopmoe", "sop_strict", "reasoning", "mixed", "eval", "sop_strict_gen", "mixed_gen")
# include_defaults=False: the index holds only what the hook put on the include path (lm-eval's own tasks are left
# out); the slow variants build lm-eval's full index, as its CLI does.
FULL_INDEX = [pytest.param(False, id="our-tasks"), pytest.param(True, id="full-index", marks=pytest.mark.slow)]


@pytest.mark.parametrize("include_defaults", FULL_INDEX)
def test_task_index_includes_sopmoe(include_defaults):
    code = ("from lm_eval.tasks import TaskManager; "
            f"tm = TaskManager(include_defaults={include_defaults}); "
            "print(sorted(t for t in tm.all_tasks if 'sop' in t or t in ('reasoning','mixed','eval','mixed_gen')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd="/", check=True)
    names = eval(out.stdout.strip().splitlines()[-1])
    for t in OUR_TASKS:
        assert t in names


@pytest.mark.parametrize("include_defaults", FULL_INDEX)
def test_opt_out_variable_hides_tasks(include_defaults):
    code = f"from lm_eval.tasks import TaskManager; print('sop_strict' in TaskManager(include_defaults={include_defaults}).all_tasks)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env(SOPMOE_NO_LM_EVAL_HOOK="1"), cwd="/", check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_explicit_registration_without_the_hook():
    """What ``sopmoe-lm-eval`` (:func:`sopmoe_models.lm_eval_plugin.cli`) does before handing over to lm-eval's CLI:
    with the hook switched off, :func:`register_all` alone registers our models (beside ``hf``) and tasks."""
    code = ("from sopmoe_models.lm_eval_plugin import register_all; register_all(); "
            "from lm_eval.api.registry import model_registry; from lm_eval.tasks import TaskManager; "
            "tm = TaskManager(include_defaults=False); "
            f"print(all(t in tm.all_tasks for t in {OUR_TASKS!r}), "
            "all(m in model_registry for m in ('hf','sopmoe_ensemble','sopmoe_btm','sopmoe_merge','sopmoe_distill')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env(SOPMOE_NO_LM_EVAL_HOOK="1"), cwd="/", check=True)
    assert out.stdout.strip().splitlines()[-1] == "True True"


def test_models_registered_and_hf_kept():
    code = ("from lm_eval.api.registry import model_registry; import lm_eval.models; "
            "print(all(m in model_registry for m in ('hf','sopmoe_ensemble','sopmoe_btm','sopmoe_merge','sopmoe_distill')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env(), cwd="/", check=True)
    assert out.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.slow  # ~30 s each: fast coverage above (hook, registration) and in test_adapter_ensemble (the tasks)
@pytest.mark.parametrize("cli", ["lm_eval", "sopmoe-lm-eval"])
def test_real_cli_runs_sopmoe_group_outside_checkout(tmp_path, tiny_pair_dirs, cli):
    foundation = tiny_pair_dirs[0]
    cmd = [str(BIN / cli), "--model", "hf", "--model_args", f"pretrained={foundation}", "--tasks", "sopmoe",
           "--device", "cpu", "--batch_size", "4", "--limit", "4", "--output_path", str(tmp_path / "out")]
    extra = {"SOPMOE_NO_LM_EVAL_HOOK": "1"} if cli == "sopmoe-lm-eval" else {}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env(**extra), cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(next((tmp_path / "out").rglob("results_*.json")).read_text())["results"]
    assert {"sop_strict", "reasoning", "mixed", "eval", "sop_strict_gen", "mixed_gen"} <= set(results)
    r = results["sop_strict"]
    assert 0.0 <= r["acc,none"] <= 1.0
    # per-token perplexity of a random model is about the vocabulary size (~176), never per-document (~e^40)
    assert 20 < r["perplexity,none"] < 2000
