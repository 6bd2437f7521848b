"""The names of the circuits: one per dependency Core calls, and one per locker device.

The subsystems that guard their calls (``db`` for the ledger, ``locker.gateway`` for the
broker and the devices) and those that report on the circuits (the gauges, ``/readyz``, the
ops API) meet here rather than importing one another.
"""

from __future__ import annotations

from typing import Final

LEDGER_CIRCUIT: Final = "ledger"
"""The database: every connection of a pool that ``db.guard`` put behind it."""

FLEET_CIRCUIT: Final = "locker"
"""The MQTT broker: every locker command passes it, whatever the device."""


def device_circuit(ref: str) -> str:
    """The name of the circuit of locker ``ref``: ``locker:<ref>``."""
    return f"{FLEET_CIRCUIT}:{ref}"


def is_device_circuit(name: str) -> bool:
    """Whether ``name`` is a locker device's circuit rather than a dependency's."""
    return name.startswith(f"{FLEET_CIRCUIT}:")
