"""``sopmoe evaluate``: run lm-eval on the sopmoe tasks for each named model and keep its own results.

Each model is one in-process ``lm_eval.simple_evaluate`` call through the same registered models as the CLI
(``hf``, ``sopmoe_ensemble``, ``sopmoe_btm``, ``sopmoe_distill``, ``sopmoe_merge``); which model and arguments a
``--models`` entry means is :mod:`harness.model_specs`. The run folder layout is in :mod:`harness.runs`.

Inference cost is recorded two ways in ``meta.json``: ``expert_forwards_per_token`` (by construction: 1 for
``hf``/``sopmoe_merge``/``sopmoe_distill``, 2 for ``sopmoe_ensemble``/``sopmoe_btm``) and ``requests_s``, the seconds
(and ``requests_cpu_s``, CPU seconds) spent inside the model's lm-eval request methods (loglikelihood /
generate_until; no task building or loading), whose ratio to ``foundation``'s in the same run is the measured cost
(``requests_s_vs_foundation``, ``requests_cpu_s_vs_foundation``). On CPU the CPU-seconds ratio is the one to read:
wall time on a shared machine measures the neighbours too.
Training cost is the wall-clock recorded by the artefact that produced the model
(:func:`harness.model_specs.training_cost`).

A run folder that already holds results is never replaced silently: ``append`` adds models to it (same tasks and
limit; a model of the same name is re-run), ``overwrite`` replaces it (only a folder sopmoe wrote: its
``summary.json`` or marker says so), anything else is an error. Each model's sub-folder is written whole and renamed
into place.

Jobs started together into one run folder (one ``--append`` job per model on a cluster) lose nothing: every change to
the folder's shared state (moving a model folder into place, ``summary.json``, the cost ratios against foundation)
is a read-modify-write of what is on disk now, under the folder's lock (:func:`sopmoe_models.outputs.folder_lock`).
The summary a job writes is the one on disk with its own models merged in, never its own copy from the start.
"""

from __future__ import annotations

import gc
import json
import logging
import shutil
import time
from pathlib import Path
from typing import Any

from harness.model_specs import (
    ModelSpec,
    Planned,
    device_for,
    parse_model_spec,
    plan,
    training_cost,
    training_data,
)
from harness.runs import META, RESULTS, ROUTING, RUN_FORMAT, SUMMARY, write_json
from sopmoe_models.console import new_console, new_progress
from sopmoe_models.errors import UserError
from sopmoe_models.outputs import (
    folder_lock,
    has_content,
    new_temp_dir,
    read_marker,
    replace_dir,
    write_marker,
)

log = logging.getLogger(__name__)
REQUEST_TYPES = ("loglikelihood", "loglikelihood_rolling", "generate_until")


def _request_key(request) -> str:
    """What lm-eval's answer to a request depends on: its type and arguments (context, continuation or generation
    settings)."""
    return json.dumps([getattr(request, "request_type", None), request.args], sort_keys=True, default=str)


def _timed(fn, clock: dict[str, float], cpu: dict[str, float], counts: dict[str, int], name: str):
    """``fn`` timed, with every distinct request computed once: the ``eval`` family re-asks rows of the other
    families word for word, and lm-eval's answer depends only on the request (up to the float rounding of the batch
    it lands in), so the repeats take the first answer instead of a second forward."""
    def wrapper(requests, *args, **kwargs):
        t, c = time.perf_counter(), time.process_time()
        try:
            keys = [_request_key(r) for r in requests]
            first: dict[str, int] = {}
            for i, k in enumerate(keys):
                first.setdefault(k, i)
            if len(first) == len(requests):
                return fn(requests, *args, **kwargs)
            order = list(first.values())
            answers = dict(zip(first, fn([requests[i] for i in order], *args, **kwargs)))
            counts[f"{name}_repeats"] = counts.get(f"{name}_repeats", 0) + len(requests) - len(order)
            return [answers[k] for k in keys]
        finally:
            clock[name] = clock.get(name, 0.0) + time.perf_counter() - t
            cpu[name] = cpu.get(name, 0.0) + time.process_time() - c
            counts[name] = counts.get(name, 0) + len(requests)

    return wrapper


def _routing_statistics(lm, results: dict) -> dict | None:
    """Routing statistics the adapter kept: lm-eval's results ``config.sopmoe.routing`` (where ``sopmoe_btm`` puts
    them through ``get_model_info``), else an adapter's ``routing_statistics()`` or ``stats.summary()``."""
    stats = (results.get("config", {}).get("sopmoe") or {}).get("routing")
    if stats is None:
        stats = getattr(lm, "routing_statistics", None)
        stats = stats() if callable(stats) else stats
    if stats is None and hasattr(getattr(lm, "stats", None), "summary"):
        stats = lm.stats.summary()
    return stats if isinstance(stats, dict) and stats else None


def sopmoe_task_manager(task_manager_cls, tasks: list[str], meta: dict[str, Any]):
    """lm-eval's TaskManager with the model args in the tasks' metadata (as ``simple_evaluate`` does for a model
    given by name: the per-token perplexity finds the tokenizer there). Indexing lm-eval's ~15k built-in tasks
    costs ~12 s per model, so they are left out when every requested task is one of ours."""
    ours = task_manager_cls(include_defaults=False, metadata=meta)
    if all(t in ours.all_tasks for t in tasks):
        return ours
    return task_manager_cls(metadata=meta)


def evaluate_one(p: Planned, final: Path, *, tasks: list[str], limit: int | None, batch_size: int | str,
                 device: str, task_metadata: dict[str, Any], log_samples: bool = False) -> tuple[Path, dict[str, Any]]:
    """Evaluate one planned model with lm-eval in-process into a new hidden sibling of ``final`` (``results.json``,
    ``meta.json``, ...); returns (that folder, meta). The caller renames it to ``final`` under the run's lock."""
    out = new_temp_dir(final)
    try:
        meta = _evaluate_into(p, out, tasks=tasks, limit=limit, batch_size=batch_size, device=device,
                              task_metadata=task_metadata, log_samples=log_samples)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)
        raise
    return out, meta


def _evaluate_into(p: Planned, out: Path, *, tasks: list[str], limit: int | None, batch_size: int | str,
                   device: str, task_metadata: dict[str, Any], log_samples: bool = False) -> dict[str, Any]:
    import lm_eval
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager
    from lm_eval.utils import handle_non_serializable

    from sopmoe_models.lm_eval_plugin import register_all

    register_all()
    wall0, cpu0 = time.perf_counter(), time.process_time()
    lm = get_model(p.lm_eval_model).create_from_arg_obj(
        dict(p.model_args), {"batch_size": batch_size, "device": device})
    load_s = time.perf_counter() - wall0
    clock: dict[str, float] = {}
    cpu_clock: dict[str, float] = {}
    counts: dict[str, int] = {}
    for name in REQUEST_TYPES:
        setattr(lm, name, _timed(getattr(lm, name), clock, cpu_clock, counts, name))
    tm = sopmoe_task_manager(TaskManager, tasks, {**p.model_args, **task_metadata})
    results = lm_eval.simple_evaluate(model=lm, tasks=list(tasks), limit=limit, batch_size=batch_size, device=device,
                                      task_manager=tm, log_samples=log_samples)
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    results["config"]["model"] = p.lm_eval_model  # what lm-eval records when given the model by name
    results["config"]["model_args"] = dict(p.model_args)
    samples = results.pop("samples", None)
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / RESULTS, json.loads(json.dumps(results, default=handle_non_serializable, ensure_ascii=False)))
    if samples:
        for task, rows in samples.items():
            lines = (json.dumps(r, default=handle_non_serializable, ensure_ascii=False) for r in rows)
            (out / "samples").mkdir(exist_ok=True)
            (out / "samples" / f"{task}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    routing = _routing_statistics(lm, results)
    if routing:
        write_json(out / ROUTING, json.loads(json.dumps(routing, default=handle_non_serializable)))
    meta = {
        "name": p.spec.name,
        "spec": p.spec.text or p.spec.name,
        "kind": p.spec.kind,
        "lm_eval_model": p.lm_eval_model,
        "model_args": p.model_args,
        "tasks": list(tasks),
        "limit": limit,
        "batch_size": batch_size,
        "device": device,
        "time": {"load_s": round(load_s, 3), "evaluate_s": round(wall - load_s, 3), "wall_s": round(wall, 3),
                 "cpu_s": round(cpu, 3), "requests_s": round(sum(clock.values()), 3),
                 "requests_cpu_s": round(sum(cpu_clock.values()), 3),
                 "requests": {k: {"n": counts[k], "repeats": counts.get(f"{k}_repeats", 0), "s": round(clock[k], 3),
                                  "cpu_s": round(cpu_clock[k], 3)} for k in sorted(clock)}},
        "inference_cost": {"expert_forwards_per_token": p.forwards_per_token, "requests_s_vs_foundation": None,
                           "requests_cpu_s_vs_foundation": None},
        "training": {**training_cost(p, load_s), "data": training_data(p)},
        "routing_statistics": ROUTING if routing else None,
    }
    write_json(out / META, meta)
    del lm
    gc.collect()
    return meta


def machine(device: str) -> dict[str, Any]:
    """Where the times of this run were measured (the leaderboard states it next to every time column)."""
    import os
    import platform

    import torch

    return {"platform": f"{platform.system()} {platform.machine()}", "cpus": os.cpu_count(), "device": device,
            "torch_threads": torch.get_num_threads()}


def evaluate_models(cfg, models: list[str | ModelSpec] | None = None, output_dir: str | Path | None = None, *,
                    tasks: list[str] | None = None, limit: int | None = None, batch_size: int | str | None = None,
                    btm_router: str | None = None, distill_model: str | None = None, device: str | None = None,
                    log_samples: bool = False, progress: bool = True, command: str | None = None,
                    append: bool = False, overwrite: bool = False, allow_remote_code: bool = False,
                    allow_missing_fingerprint: bool = False) -> dict[str, Any]:
    """Evaluate every model spec; missing inputs are skipped and reported; returns (and writes) ``summary.json``.

    Arguments left None come from ``cfg.evaluation``. A model that fails while running is recorded as ``failed``
    with its error, and the rest still run. ``append``: add these models to an existing run folder (same tasks and
    limit), keeping its other models; a model of the same name is replaced. ``overwrite``: replace an existing run
    folder. Without either, a folder that already holds results is an error.
    """
    from sopmoe_models.experts import resolve_device

    ev = cfg.evaluation
    models = list(models or ev.models)
    tasks = list(tasks or ev.tasks)
    limit = limit if limit is not None else ev.limit
    batch_size = batch_size or ev.batch_size
    out = Path(output_dir or ev.output_dir)
    device = device or device_for(cfg.models.foundation.device)
    resolve_device(device)  # a device this machine lacks (or "banana") is one line now, not a failure per model
    specs = [m if isinstance(m, ModelSpec) else parse_model_spec(m) for m in models]
    dupes = sorted({s.name for s in specs if [t.name for t in specs].count(s.name) > 1})
    if dupes:
        raise UserError(f"--models: label(s) {', '.join(dupes)} given twice; name variants LABEL=KIND:...")
    guard_run_folder(out, append=append, overwrite=overwrite)  # refused before any model loads
    task_metadata: dict[str, Any] = {}
    if cfg.data.task_data_dir:
        task_metadata["data_dir"] = cfg.data.task_data_dir
    if cfg.data.prompt_format != "raw":
        task_metadata["prompt_format"] = cfg.data.prompt_format
    plans = [plan(s, cfg, btm_router=btm_router, distill_model=distill_model, device=device,
                  allow_remote_code=allow_remote_code, allow_missing_fingerprint=allow_missing_fingerprint)
             for s in specs]

    this: dict[str, Any] = {  # this call's settings; the models come from summary.json as it is on disk
        "format": RUN_FORMAT, "command": command, "tasks": tasks, "limit": limit, "batch_size": batch_size,
        "device": device, "task_metadata": task_metadata, "machine": machine(device),
        "evaluated": [s.name for s in specs],  # this call's models (``--append`` keeps others)
    }
    out.mkdir(parents=True, exist_ok=True)
    with folder_lock(out):  # another job may have written here since the check above: decide again, in turn
        old_summary = guard_run_folder(out, append=append, overwrite=overwrite)
        if overwrite and old_summary is not None:
            _clear_run(out, old_summary)
        write_marker(out, "evaluate")
        cfg.save(out / "config.yaml")
        summary = _record(out, this, start=True)
    with _progress(progress) as bar:
        job = bar.add_task("evaluate", total=len(plans))
        for p in plans:
            entry = {"name": p.spec.name, "spec": p.spec.text or p.spec.name, "lm_eval_model": p.lm_eval_model,
                     "model_args": p.model_args}
            folder = None
            if p.problem:
                log.warning("skip %s: %s", p.spec.name, p.problem)
                entry.update(status="skipped", reason=p.problem)
            else:
                bar.update(job, description=f"evaluate {p.spec.name} ({p.lm_eval_model})")
                try:
                    folder, meta = evaluate_one(p, out / p.spec.name, tasks=tasks, limit=limit,
                                                batch_size=batch_size, device=device,
                                                task_metadata=task_metadata, log_samples=log_samples)
                    entry.update(status="ran", wall_s=meta["time"]["wall_s"])
                    log.info("%s done in %.1f s", p.spec.name, entry["wall_s"])
                except Exception as e:  # one broken model must not cost the others their results
                    log.exception("%s failed", p.spec.name)
                    first = (str(e).strip().splitlines() or [""])[0]
                    entry.update(status="failed", reason=f"{type(e).__name__}: {first}"[:300])
            with folder_lock(out):
                summary = _record(out, this, entry, folder)
            bar.advance(job)
    return summary


def guard_run_folder(out: Path, *, append: bool, overwrite: bool) -> dict[str, Any] | None:
    """The existing ``summary.json`` of ``out`` (None when there is none), after refusing what was not asked for:
    results without ``append``/``overwrite``, or a folder sopmoe did not write."""
    from harness.runs import read_json

    if append and overwrite:
        raise UserError("--append and --overwrite contradict each other: add to the run folder, or replace it")
    if not has_content(out):
        return None
    if not out.is_dir():
        raise UserError(f"--output_dir {out} is a file, not a run folder; choose another path")
    summary = read_json(out / SUMMARY) if (out / SUMMARY).is_file() else None
    ours = (isinstance(summary, dict) and summary.get("format") == RUN_FORMAT) or \
        (read_marker(out) or {}).get("written_by") == "sopmoe evaluate"
    if not ours:
        raise UserError(f"--output_dir {out} is not empty and is not a run folder written by `sopmoe evaluate` "
                        f"(no {SUMMARY}); choose another folder (sopmoe never replaces other files)")
    if not append and not overwrite:
        names = [m.get("name") for m in (summary or {}).get("models", [])]
        raise UserError(f"{out} already holds an evaluation run ({', '.join(map(str, names)) or 'no models yet'}); "
                        "pass --append to add these models to it, --overwrite to replace it, or choose another "
                        "--output_dir")
    return summary if isinstance(summary, dict) else None


def _clear_run(out: Path, old: dict[str, Any]) -> None:
    """--overwrite: remove the model folders the old summary lists (sopmoe wrote them) and the summary itself."""
    from harness.model_specs import LABEL

    for m in old.get("models", []):
        name = str(m.get("name", ""))
        d = out / name
        if LABEL.match(name) and d.is_dir() and not d.is_symlink():
            shutil.rmtree(d)
    (out / SUMMARY).unlink(missing_ok=True)


def _record(out: Path, this: dict[str, Any], entry: dict[str, Any] | None = None, folder: Path | None = None, *,
            start: bool = False) -> dict[str, Any]:
    """Under the run's lock: the ``summary.json`` on disk (other jobs' models included) with this call's settings,
    its command (``start``) and one model's ``entry`` merged in, written back; the model's finished ``folder`` is
    renamed into place first, and every model's cost ratio against foundation is brought up to date."""
    from harness.runs import read_json

    try:
        on_disk = read_json(out / SUMMARY) if (out / SUMMARY).is_file() else None
        if on_disk is not None:
            _check_comparable(out, this, on_disk)
    except BaseException:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise
    models = list(on_disk.get("models", [])) if on_disk else []
    commands = (on_disk.get("commands") or [on_disk.get("command")]) if on_disk else []
    if start:
        commands = [*commands, this["command"]]
    if entry is not None:
        if folder is not None:
            replace_dir(folder, out / entry["name"])
        models = [m for m in models if m["name"] != entry["name"]] + [entry]
    summary = _finish({**this, "commands": commands, "models": models})
    write_json(out / SUMMARY, summary)
    if entry is not None and entry["status"] == "ran":
        _relative_costs(out, summary["ran"])
    return summary


def _check_comparable(out: Path, new: dict[str, Any], old: dict[str, Any]) -> None:
    """``--append`` adds models to a run only when they are scored alike: same tasks, limit and task data."""
    for key in ("tasks", "limit", "task_metadata"):
        if old.get(key) != new[key]:
            raise UserError(f"--append: {out / SUMMARY} has {key}={old.get(key)!r} but this call has {new[key]!r}; "
                             "use a new --output_dir")


def _finish(summary: dict[str, Any]) -> dict[str, Any]:
    by = {s: [m["name"] for m in summary["models"] if m["status"] == s] for s in ("ran", "skipped", "failed")}
    return {**summary, **by}


def _relative_costs(out: Path, ran: list[str]) -> None:
    """Record each model's request seconds (wall and CPU) relative to ``foundation``'s in this run folder. Run under
    the lock each time a model lands, so the ratios are right whichever job ran foundation, and whenever."""
    from harness.runs import read_json

    if not (out / "foundation" / META).is_file():
        return  # no foundation here (yet): ratios stay None until it lands
    base = read_json(out / "foundation" / META).get("time", {})
    for name in ran:
        path = out / name / META
        meta = read_json(path) if path.is_file() else {}
        cost, time_ = meta.get("inference_cost"), meta.get("time")
        if not isinstance(cost, dict) or not isinstance(time_, dict):
            continue  # not a meta.json written by sopmoe evaluate
        ratios = {f"{key}_vs_foundation": round(time_[key] / base[key], 3)
                  for key in ("requests_s", "requests_cpu_s") if base.get(key) and time_.get(key) is not None}
        if any(cost.get(k) != v for k, v in ratios.items()):
            meta["inference_cost"] = {**cost, **ratios}
            write_json(path, meta)


class _NoProgress:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def add_task(self, *a, **k):
        return 0

    def update(self, *a, **k):
        pass

    def advance(self, *a, **k):
        pass


def _progress(enabled: bool):
    if not enabled:
        return _NoProgress()
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn

    return new_progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        console=new_console(stderr=True))


