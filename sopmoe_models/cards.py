"""Typed artefact cards: the JSON written beside every trained or merged model, each written and read through one
class.

======================  ============================  =====================================================
card                    written by                    class
======================  ============================  =====================================================
``router.json``         ``sopmoe train-router``       :class:`RouterCard` (checked field by field on read)
``distill.json``        ``sopmoe distill``            :class:`DistillCard`
``merge.json``          ``sopmoe merge``              :class:`MergeCard`
``dispatch.json``       ``sopmoe train-dispatch``     :class:`DispatchCard`
``sft.json``            ``sopmoe realbed`` (SFT)      :class:`SftCard`
``testbed.json``        ``sopmoe testbed``, realbed   :class:`BedCard` (test bed and real bed)
======================  ============================  =====================================================

Versioned: a card written now records ``"format": N`` (the class's :attr:`Card.FORMAT`) as its first key; a card
written before cards were versioned has none and reads as ``format`` None. Keys stay in the order they were given
(the JSON is the same as before, plus ``format``), unknown keys are kept, so an old card reads and rewrites whole.
Each class answers the questions readers ask (:meth:`Card.wall_time_s`: the training wall-clock it records;
:meth:`Card.training_data`: the data settings it was trained on) in one place instead of ``.get()`` chains.
A card also reads like the dict it was (``card["type"]``, ``card.get("experts", {})``) for older callers.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, PrivateAttr, ValidationError

from sopmoe_models.errors import UserError
from sopmoe_models.outputs import read_json, write_json


class CardError(UserError):
    """A card is unreadable; the message names the file."""


class Card(BaseModel):
    """Base of every card: ``format`` plus typed fields; any other key is kept as it was."""

    model_config = ConfigDict(extra="allow", ser_json_inf_nan="constants")  # NaN stays NaN, as json.dumps wrote it
    FILE: ClassVar[str] = ""
    FORMAT: ClassVar[int] = 1
    KIND: ClassVar[str] = "card"

    format: int | None = None  # None: written before cards were versioned
    _order: list[str] = PrivateAttr(default_factory=list)

    # -- construction ----------------------------------------------------------------------------------------
    @classmethod
    def new(cls, **fields: Any):
        """A card to write now (``format`` = this class's :attr:`FORMAT`), keys in the order given."""
        return cls.from_dict({"format": cls.FORMAT, **fields})

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str | Path | None = None):
        if not isinstance(data, dict):
            raise CardError(f"{source or cls.FILE}: not a sopmoe {cls.KIND} card: the top level is not an object")
        try:
            card = cls.model_validate(data)
        except ValidationError as e:
            err = e.errors()[0]
            key = ".".join(str(x) for x in err["loc"])
            raise CardError(f"{source or cls.FILE}: not a sopmoe {cls.KIND} card: '{key}' {err['msg']}") from None
        card._order = list(data)
        return card

    @classmethod
    def read(cls, path: str | Path):
        """The card at ``path`` (the JSON file itself)."""
        path = Path(path)
        return cls.from_dict(read_json(path, error=CardError), path)

    @classmethod
    def in_folder(cls, folder: str | Path):
        """The card of ``folder`` (``folder / FILE``), or None when it has none."""
        path = Path(folder).expanduser() / cls.FILE
        return cls.read(path) if path.is_file() else None

    # -- writing ---------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Plain JSON: the keys given (``format`` first when set), in their order; unset optional fields omitted."""
        dumped = self.model_dump(mode="json")
        order = self._order or [k for k in dumped if k in self.model_fields_set or k in (self.model_extra or {})]
        keys = (["format"] if self.format is not None and "format" not in order else []) + order
        return {k: dumped[k] for k in keys if k in dumped and not (k == "format" and self.format is None)}

    def write(self, path: str | Path) -> Path:
        """Write the card as indented UTF-8 JSON, atomically."""
        return write_json(path, self.to_dict())

    # -- what readers ask ------------------------------------------------------------------------------------
    #: the top-level key that holds the wall-clock seconds of the step that made the model, where the card has one
    WALL_KEY: ClassVar[str | None] = None

    def wall_time_s(self) -> float | None:
        """The wall-clock seconds of the step that made the model (None when the card records none)."""
        return _seconds((self.model_extra or {}).get(self.WALL_KEY)) if self.WALL_KEY else None

    def training_data(self) -> dict[str, Any] | None:
        """The data settings the model was trained on (``train_file``, ``train_kinds``, ...), or None."""
        return None

    # -- the dict it was -------------------------------------------------------------------------------------
    def __getitem__(self, key: str) -> Any:
        d = self.to_dict()
        if key not in d:
            raise KeyError(key)
        return d[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.to_dict().get(key, default)

    def __contains__(self, key: object) -> bool:
        return key in self.to_dict()


def _seconds(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


class RouterCard(Card):
    """``router.json``: the router's type and sizes, its training record and metrics, and its experts."""

    FILE: ClassVar[str] = "router.json"
    KIND: ClassVar[str] = "router"

    type: str
    kwargs: dict[str, Any] = {}
    experts: dict[str, Any] = {}
    training: dict[str, Any] = {}
    metrics: dict[str, Any] = {}
    weights: str | None = None
    weights_sha256: str | None = None

    def wall_time_s(self) -> float | None:
        return _seconds(self.metrics.get("train_seconds"))

    def training_data(self) -> dict[str, Any] | None:
        data = self.training.get("data")
        return data if isinstance(data, dict) else None

    def expert_path(self, role: str) -> str | None:
        return (self.experts.get(role) or {}).get("path")


class DistillCard(Card):
    """``distill.json`` (run folder and ``best_student``): teacher, student init, best epoch, cost, config."""

    FILE: ClassVar[str] = "distill.json"
    KIND: ClassVar[str] = "distill"
    WALL_KEY: ClassVar[str | None] = "wall_time_s"

    teacher: dict[str, Any] = {}
    student_init: str | None = None
    finetuning: str | None = None
    best: dict[str, Any] = {}
    config: dict[str, Any] = {}

    def teacher_type(self) -> str | None:
        return self.teacher.get("type")

    def training_data(self) -> dict[str, Any] | None:
        data = self.config.get("data")
        return data if isinstance(data, dict) else None


class MergeCard(Card):
    """``merge.json``: method, parameters, the peft function, the inputs' fingerprints, dtype, time, versions."""

    FILE: ClassVar[str] = "merge.json"
    KIND: ClassVar[str] = "merge"
    WALL_KEY: ClassVar[str | None] = "wall_time_s"

    method: str
    parameters: dict[str, Any] = {}
    inputs: dict[str, Any] = {}
    tensor_maths: str | None = None

    @classmethod
    def is_merge_record(cls, path: str | Path) -> bool:
        """Whether ``path`` is a merge record (written before markers: method, inputs and tensor_maths present)."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and {"method", "inputs", "tensor_maths"} <= set(data)


class DispatchCard(Card):
    """``dispatch.json``: features, experts, training record (data, L2 grid), metrics, time."""

    FILE: ClassVar[str] = "dispatch.json"
    KIND: ClassVar[str] = "dispatch"
    WALL_KEY: ClassVar[str | None] = "train_seconds"

    type: str
    experts: dict[str, Any] = {}
    training: dict[str, Any] = {}
    metrics: dict[str, Any] = {}

    def training_data(self) -> dict[str, Any] | None:
        return self.training or None


class SftCard(Card):
    """``sft.json``: the SFT expert's foundation, data, spec, losses and time."""

    FILE: ClassVar[str] = "sft.json"
    KIND: ClassVar[str] = "sft"
    WALL_KEY: ClassVar[str | None] = "wall_s"


class BedCard(Card):
    """``testbed.json``: a bed's seed, preset (``real`` for the real bed), size, spec, versions, sizes, training
    record, wall and CPU seconds per stage, the sweep on dev and the property check. Written by both bed builders
    (:func:`training.testbed.record_bed`), read by the bed commands, the demo and ``sopmoe evaluate``'s specs."""

    FILE: ClassVar[str] = "testbed.json"
    KIND: ClassVar[str] = "bed"

    seed: int | None = None
    preset: str | None = None
    size: str | None = None
    threads: int | None = None
    times: dict[str, dict[str, Any]] = {}
    sweep: dict[str, dict[str, Any]] = {}
    properties: list[dict[str, Any]] = []
    passed: bool | None = None

    def is_real(self) -> bool:
        """Whether this is the real bed (issue 12: a published foundation, not one trained here)."""
        return self.preset == "real"

    def stage_wall_s(self, stage: str) -> float | None:
        """The wall-clock seconds of one build stage (``pretrain``, ``sft``, ...; ``total``), or None."""
        return _seconds((self.times.get(stage) or {}).get("wall_s"))

    def wall_time_s(self) -> float | None:
        return self.stage_wall_s("total")

    def failed_properties(self) -> list[dict[str, Any]]:
        return [p for p in self.properties if not p.get("passed")]


CARDS: dict[str, type[Card]] = {c.FILE: c for c in (RouterCard, DistillCard, MergeCard, DispatchCard, SftCard,
                                                     BedCard)}
