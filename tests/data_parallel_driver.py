"""Evaluate several sopmoe lm-eval models in one process, as ``accelerate launch -m lm_eval --model X`` does for one.

tests/test_data_parallel.py runs it twice: under ``accelerate launch`` (two CPU processes, gloo) and in-process (one),
so the adapters are compared with one start-up for all of them. Each model goes through ``lm_eval.simple_evaluate``
by name, as lm-eval's CLI calls it, on sopmoe's tasks only (lm-eval's 15k built-in tasks are not indexed). Rank 0
writes ``NAME.json`` (lm-eval's results, each document's filtered responses, the adapter's ``config.sopmoe``); every
process writes ``NAME.rankR.log``, the adapters' own per-process request lines.

    python tests/data_parallel_driver.py OUT DATA_DIR TASKS MODELS_JSON   # MODELS_JSON: [[name, model, args], ...]
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path


def evaluate(out: Path, data_dir: str, tasks: list[str], models: list[list]) -> None:
    import lm_eval
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    from sopmoe_models.lm_eval_plugin import register_all, tasks_dir

    register_all()
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger("lm_eval.sopmoe")
    logger.setLevel(logging.INFO)
    keep = Keep()
    logger.addHandler(keep)
    out.mkdir(parents=True, exist_ok=True)
    try:
        for name, model, args in models:
            lines.clear()
            # the model args in the tasks' metadata, as lm-eval's CLI puts them (the per-token perplexity finds the
            # tokenizer there)
            tm = TaskManager(include_path=tasks_dir(), include_defaults=False, metadata={**args, "data_dir": data_dir})
            res = lm_eval.simple_evaluate(model=model, model_args=dict(args), tasks=tasks, task_manager=tm,
                                          batch_size=1, device="cpu", log_samples=True)
            (out / f"{name}.rank{os.environ.get('RANK', '0')}.log").write_text("\n".join(lines), encoding="utf-8")
            if res is None:  # not rank 0: lm-eval gathered this process's metrics on rank 0
                continue
            docs = {task: {str(s["doc_id"]): s["filtered_resps"] for s in rows} for task, rows in res["samples"].items()}
            record = {"results": res["results"], "docs": docs, "sopmoe": res["config"].get("sopmoe")}
            (out / f"{name}.json").write_text(json.dumps(record, default=handle_non_serializable), encoding="utf-8")
    finally:
        logger.removeHandler(keep)


if __name__ == "__main__":
    out_dir, data, task_list, spec = sys.argv[1:5]
    evaluate(Path(out_dir), data, task_list.split(","), json.loads(spec))
