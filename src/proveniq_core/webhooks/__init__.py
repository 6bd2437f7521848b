"""Webhooks (DESIGN.md §6): the transactional outbox, Standard Webhooks signing, delivery.

Only the outbox is re-exported: the ledger imports it, and the delivery worker imports the
ledger.
"""

from proveniq_core.webhooks.outbox import EVENTS, emit

__all__ = ["EVENTS", "emit"]
