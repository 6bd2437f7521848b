"""Fault injection for the simulated lockers: the rules (docs/architecture.md §4) and their book.

A rule targets one locker (``lockerRef``) or every locker (``"*"``), optionally one type of
command (``command``: ``link``, ``unlink``, ``collect_evidence`` or ``ping``; absent: every
command), and a window of the matching commands: it skips the first ``after`` and applies
to the next ``count`` (to all of them without ``count``). Each rule counts only the
commands it matches, on its own, from the moment it is added, whatever other rules do.
The lab's late third link is ``{"lockerRef": "locker-003", "fault": "delay", "delayMs":
35000, "count": 1, "after": 2, "command": "link"}``: evidence collections and pings to
locker-003 do not move its window. When several rules apply
to one command, the one added last decides; a ``flaky`` rule whose draw keeps the command
does not apply. A rule whose window is over leaves the book. A ``bad_evidence`` rule sees
only ``collect_evidence`` commands: the device answers them with evidence that has the
rule's ``defect`` (each trips one check of Verify's analysis).

Control messages (MQTT ``proveniq/sim/control``, HTTP ``/sim/faults``) are a rule, or
``{"clear": true}`` / ``{"clear": true, "lockerRef": "x"}``.
"""

from __future__ import annotations

import builtins
import itertools
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import PydanticCustomError

from proveniq_core.locker.protocol import LOCKER_REF_PATTERN, CommandType

FaultKind = Literal["delay", "drop", "offline", "hardware_fault", "flaky", "bad_evidence"]
EvidenceDefect = Literal[
    "gps_outside", "low_accuracy", "stale", "blank", "undecodable", "hash_mismatch", "duplicate"
]

ALL_LOCKERS = "*"

# The one parameter each kind needs, and how to describe a valid value.
_PARAMS: dict[str, tuple[str, str] | None] = {
    "delay": ("delayMs", "milliseconds, >= 0"),
    "drop": None,
    "offline": ("seconds", "> 0"),
    "hardware_fault": None,
    "flaky": ("probability", "from 0 to 1"),
    "bad_evidence": ("defect", "an evidence defect"),
}
_OWNERS = {param[0]: kind for kind, param in _PARAMS.items() if param is not None}
_TARGET_PATTERN = rf"^(\*|{LOCKER_REF_PATTERN[1:-1]})$"
_TARGET_HELP = (
    "'*' or a locker ref (1-64 characters from [A-Za-z0-9._-], starting with a letter or digit)"
)


class FaultRuleError(ValueError):
    """An invalid fault rule or control message; ``problems`` lists ``{field, problem}``."""

    def __init__(self, problems: builtins.list[dict[str, str]]) -> None:
        self.problems = problems
        summary = "; ".join(f"{p['field'] or '<message>'}: {p['problem']}" for p in problems)
        super().__init__(f"invalid fault rule: {summary}")


class _Control(BaseModel):
    # strict: "5" is not a count and true is not 1; JSON integers still fill float fields.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class FaultRule(_Control):
    """One fault: what happens to which locker's commands, and for which of them."""

    lockerRef: str = Field(pattern=_TARGET_PATTERN, examples=["locker-003", "*"])
    fault: FaultKind
    delayMs: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    seconds: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    probability: float | None = Field(default=None, ge=0, le=1)
    defect: EvidenceDefect | None = None
    count: int | None = Field(default=None, ge=0)
    after: int = Field(default=0, ge=0)
    command: CommandType | None = None

    @model_validator(mode="after")
    def _parameters_fit_the_fault(self) -> Self:
        needed = _PARAMS[self.fault]
        if needed is not None and getattr(self, needed[0]) is None:
            raise PydanticCustomError(
                "fault_parameter_missing",
                "required for fault '{fault}' ({valid})",
                {"field": needed[0], "fault": self.fault, "valid": needed[1]},
            )
        for param, owner in _OWNERS.items():
            if owner != self.fault and getattr(self, param) is not None:
                raise PydanticCustomError(
                    "fault_parameter_unexpected",
                    "only applies to fault '{owner}', not '{fault}'",
                    {"field": param, "owner": owner, "fault": self.fault},
                )
        if self.fault == "bad_evidence" and self.command not in (None, "collect_evidence"):
            raise PydanticCustomError(
                "fault_command_mismatch",
                "fault 'bad_evidence' only applies to command 'collect_evidence'",
                {"field": "command"},
            )
        return self

    def matches(self, locker_ref: str, command: str | None = None) -> bool:
        """Whether the rule targets ``locker_ref`` and a command of type ``command``."""
        if self.fault == "bad_evidence" and command != "collect_evidence":
            return False
        if self.command is not None and command != self.command:
            return False
        return self.lockerRef in (locker_ref, ALL_LOCKERS)

    def applies_to(self, index: int) -> bool:
        """Whether the rule's window holds the matching command numbered ``index`` (from 0)."""
        return index >= self.after and (self.count is None or index < self.after + self.count)


class ClearFaults(_Control):
    """Remove the rules targeting ``lockerRef`` exactly (every rule without it)."""

    clear: Literal[True]
    lockerRef: str | None = Field(default=None, pattern=_TARGET_PATTERN)


@dataclass(slots=True)
class ActiveFault:
    """A rule in a ``FaultBook``: its id and how many matching commands it has counted."""

    id: str
    rule: FaultRule
    seen: int = 0

    @property
    def exhausted(self) -> bool:
        """Whether no future command can fall in the rule's window."""
        count = self.rule.count
        return count is not None and self.seen >= self.rule.after + count

    def view(self) -> dict[str, Any]:
        """The rule as JSON-ready data, with ``id`` and ``seen``."""
        return {"id": self.id, **self.rule.model_dump(exclude_none=True), "seen": self.seen}


class FaultBook:
    """The active fault rules of one fleet; decides which fault, if any, hits a command.

    Not thread-safe: one event loop owns it. ``rng`` draws the ``flaky`` outcomes, so a
    seeded one makes the book deterministic.
    """

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng if rng is not None else random.Random()
        self._active: dict[str, ActiveFault] = {}
        self._ids = itertools.count(1)

    @classmethod
    def seeded(cls, seed: int | None) -> FaultBook:
        """A book whose ``flaky`` draws follow ``seed`` (``None``: unpredictable)."""
        return cls(random.Random(f"faults:{seed}") if seed is not None else None)

    def __len__(self) -> int:
        return len(self._active)

    def add(self, rule: FaultRule) -> ActiveFault:
        """Activate ``rule``; it counts commands from now on.

        A rule with ``count: 0`` is returned but not stored: it can apply to nothing.
        """
        entry = ActiveFault(id=f"fault-{next(self._ids)}", rule=rule)
        if not entry.exhausted:
            self._active[entry.id] = entry
        return entry

    def clear(self, locker_ref: str | None = None) -> int:
        """Remove the rules whose ``lockerRef`` is ``locker_ref`` (all if ``None``); count them.

        Clearing one locker leaves ``"*"`` rules in place; clear ``"*"`` for those.
        """
        doomed = [
            key
            for key, entry in self._active.items()
            if locker_ref is None or entry.rule.lockerRef == locker_ref
        ]
        for key in doomed:
            del self._active[key]
        return len(doomed)

    def apply(self, control: FaultRule | ClearFaults) -> ActiveFault | int:
        """Carry out a parsed control message: the added rule, or how many were cleared."""
        if isinstance(control, ClearFaults):
            return self.clear(control.lockerRef)
        return self.add(control)

    def decide(self, locker_ref: str, command: str | None = None) -> ActiveFault | None:
        """Count one command (of type ``command``) received by ``locker_ref``; return the rule
        that hits it, if any."""
        hit: ActiveFault | None = None
        for entry in list(self._active.values()):
            if not entry.rule.matches(locker_ref, command):
                continue
            index = entry.seen
            entry.seen += 1
            if entry.rule.applies_to(index) and self._fires(entry.rule):
                hit = entry  # insertion order: the last one added wins
            if entry.exhausted:
                del self._active[entry.id]
        return hit

    def _fires(self, rule: FaultRule) -> bool:
        if rule.fault != "flaky":
            return True
        return self._rng.random() < (rule.probability or 0.0)

    def list(self) -> builtins.list[ActiveFault]:
        """The active rules, oldest first."""
        return builtins.list(self._active.values())


def _problems(exc: ValidationError) -> builtins.list[dict[str, str]]:
    problems = []
    for error in exc.errors():
        ctx = error.get("ctx") or {}
        field = str(ctx.get("field") or ".".join(str(part) for part in error["loc"]))
        if error["type"] == "extra_forbidden":
            problem = "unknown field"
        elif error["type"] == "string_pattern_mismatch":
            problem = f"must be {_TARGET_HELP}"
        else:
            problem = error["msg"]
        problems.append({"field": field, "problem": problem})
    return problems


def parse_rule(data: Any) -> FaultRule:
    """Validate one rule given as decoded JSON; ``FaultRuleError`` if it is not valid."""
    if not isinstance(data, Mapping):
        raise FaultRuleError([{"field": "", "problem": "expected a JSON object"}])
    try:
        return FaultRule.model_validate(data)
    except ValidationError as exc:
        raise FaultRuleError(_problems(exc)) from None


def parse_control(data: bytes | str | Mapping[str, Any]) -> FaultRule | ClearFaults:
    """Parse a control message (raw JSON or decoded): a rule or a clear request.

    Raises ``FaultRuleError`` for anything else.
    """
    if isinstance(data, bytes | str):
        try:
            data = json.loads(data)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FaultRuleError([{"field": "", "problem": f"not JSON ({exc})"}]) from None
    if isinstance(data, Mapping) and "clear" in data:
        try:
            return ClearFaults.model_validate(data)
        except ValidationError as exc:
            raise FaultRuleError(_problems(exc)) from None
    return parse_rule(data)


__all__ = [
    "ALL_LOCKERS",
    "ActiveFault",
    "ClearFaults",
    "EvidenceDefect",
    "FaultBook",
    "FaultKind",
    "FaultRule",
    "FaultRuleError",
    "parse_control",
    "parse_rule",
]
