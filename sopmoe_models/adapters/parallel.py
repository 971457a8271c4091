"""Data-parallel lm-eval for sopmoe's adapters: ``accelerate launch -m lm_eval --model sopmoe_*`` splits the requests.

lm-eval's ``HFLM`` sets up data parallelism only for a model it loads itself from a name, and only on GPUs: handed a
loaded model, as every sopmoe adapter hands it the foundation (or the merge), it runs as rank 0 of 1, so N launched
processes would each score every request and write the same files. :class:`DataParallel` does for the pre-loaded
models what HFLM does for a named one, without loading anything twice:

- :func:`process_device`: each process puts its experts on its own device, ``cuda:LOCAL_RANK`` (the device accelerate
  gives the process), or ``cpu`` where there is no CUDA (DDP over gloo); ``device=``/``sft_device=`` are overridden.
- :meth:`DataParallel.join_launched_processes`: the adapter's ``rank``, ``world_size`` and ``accelerator``, through
  which lm-eval's evaluator shards the requests by rank, pads the shorter shards, and gathers the per-document
  metrics (and samples) on rank 0, which alone writes the results.
- Statistics an adapter keeps per process (routing shares, dispatch counts, speculative acceptance) are gathered after
  every request batch, so what rank 0 records covers every process's requests. Requests lm-eval repeats to pad a
  shorter shard are scored (every process must take part in each step) but not counted twice in the routing and
  dispatch statistics; the speculative counts (drafted, accepted, rounds) are work done and include them.

Each process logs what it scored (logger ``lm_eval.sopmoe``, printed by lm-eval's own handler): ``EnsembleLMEval:
process 1 of 2 scored 5 loglikelihood requests (1 padding)``.
"""

from __future__ import annotations

import atexit
import functools
import logging
import os
from datetime import timedelta
from typing import Any

import torch

# A child of lm-eval's logger: printed by the handler lm-eval's CLI installs, as its own per-rank lines are.
log = logging.getLogger("lm_eval.sopmoe")


@functools.cache
def launched_accelerator():
    """accelerate's ``Accelerator`` when this process is one of several launched together (``accelerate launch``,
    ``torchrun``: ``WORLD_SIZE`` > 1), else None. Made as HFLM makes it: a process-group timeout of a year, since
    ranks wait for each other through long generation tasks; on a machine without CUDA, on the CPU (gloo). One per
    process (accelerate shares one state per process anyway)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs

    acc = Accelerator(kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(weeks=52))],
                      cpu=not torch.cuda.is_available())
    atexit.register(_close_process_group)
    return acc if acc.num_processes > 1 else None


def _close_process_group() -> None:
    """Tear the process group down before the interpreter does: a gloo group left to the interpreter's exit can
    abort the process ("terminate called without an active exception", exit -6 after every result was written),
    which ``accelerate launch`` reports as a failed run."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def process_device() -> str | None:
    """The device this process's experts go on under a multi-process launch (``cuda:LOCAL_RANK`` or ``cpu``), else
    None (one process: the model arguments and the config place them)."""
    acc = launched_accelerator()
    if acc is None:
        return None
    return "cpu" if acc.device.type == "cpu" else str(acc.device)  # accelerate says cpu:0 on CPU processes


def first_seen(requests: list) -> list[bool]:
    """False for each repeat lm-eval appends to pad a shorter shard (the same ``Instance`` object again)."""
    seen: set[int] = set()
    out = []
    for r in requests:
        out.append(id(r) not in seen)
        seen.add(id(r))
    return out


def unique(requests: list) -> list:
    """``requests`` without the repeats lm-eval pads a shorter shard with."""
    return [r for r, first in zip(requests, first_seen(requests)) if first]


class DataParallel:
    """Mixin for an ``HFLM`` subclass over pre-loaded models (put it before ``HFLM`` in the bases; call
    :meth:`join_launched_processes` after ``HFLM.__init__``).

    Per-process statistics: a subclass returns its counters from :meth:`rank_statistics` (picklable, cumulative) and
    takes the list of every process's in :meth:`use_all_statistics`; :meth:`requests_done` runs after each request
    batch, before the gathering (record the batch's statistics there)."""

    def join_launched_processes(self) -> None:
        """Become one of the processes ``accelerate launch`` started, as HFLM does for a model it loads itself."""
        acc = getattr(self, "accelerator", None) or launched_accelerator()  # HFLM's own, when it loaded by name
        if acc is None or acc.num_processes <= 1:
            return
        self.accelerator = acc
        self._rank = acc.process_index  # global: several machines shard as one (HFLM's local index would repeat)
        self._world_size = acc.num_processes

    # -- lm-eval's request types -------------------------------------------------------------------------------
    def loglikelihood(self, requests, disable_tqdm: bool = False):
        return self._run("loglikelihood", requests, super().loglikelihood, disable_tqdm)  # type: ignore[misc]

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False):
        return self._run("loglikelihood_rolling", requests, super().loglikelihood_rolling, disable_tqdm)  # type: ignore[misc]

    def generate_until(self, requests, disable_tqdm: bool = False):
        return self._run("generate_until", requests, super().generate_until, disable_tqdm)  # type: ignore[misc]

    def _run(self, kind: str, requests, run, disable_tqdm: bool):
        results = run(requests, disable_tqdm=disable_tqdm)
        self.requests_done(kind, unique(requests))
        if self.world_size > 1:
            log.info("%s: process %d of %d scored %d %s requests (%d padding)", type(self).__name__, self.rank,
                     self.world_size, len(requests), kind, len(requests) - len(unique(requests)))
            gathered: list[Any] = [None] * self.world_size
            torch.distributed.all_gather_object(gathered, self.rank_statistics())
            self.use_all_statistics(gathered)
        return results

    # -- per-process statistics (subclasses) -------------------------------------------------------------------
    def requests_done(self, kind: str, requests: list) -> None:
        """After a batch of ``kind`` requests (padding repeats removed), before statistics are gathered."""

    def rank_statistics(self) -> Any:
        """This process's cumulative counters (picklable)."""
        return None

    def use_all_statistics(self, states: list[Any]) -> None:
        """Every process's :meth:`rank_statistics`, in rank order: keep their sum for the results."""
