"""Durable sagas: steps run in order and checkpointed, undone in reverse when one fails.

``model`` holds what a saga is made of, ``planner`` decides (purely) what runs next,
``engine`` runs it under a lease, ``_journal`` writes its progress (fenced checkpoints),
``clock`` is the engine's time. ``registration`` is the asset registration saga,
``retry_queue`` its deferred links, ``operator`` what an operator does with held
registrations, ``store`` reads saga state back.
"""

from __future__ import annotations

from proveniq_core.saga.clock import Clock, SystemClock
from proveniq_core.saga.engine import SagaEngine
from proveniq_core.saga.model import (
    HOLD,
    Attempt,
    AttemptStatus,
    Defer,
    LeaseLostError,
    Phase,
    SagaDefinition,
    SagaResult,
    SagaStatus,
    Step,
    StepContext,
    StepError,
    error_doc,
    timed_out,
)

__all__ = [
    "HOLD",
    "Attempt",
    "AttemptStatus",
    "Clock",
    "Defer",
    "LeaseLostError",
    "Phase",
    "SagaDefinition",
    "SagaEngine",
    "SagaResult",
    "SagaStatus",
    "Step",
    "StepContext",
    "StepError",
    "SystemClock",
    "error_doc",
    "timed_out",
]
