"""Webhooks (DESIGN.md §6): delivery of the ledger's outbox, Standard Webhooks signing, endpoints.

The events themselves are written by ``ledger.outbox`` in the transaction of the change they
report; this package only reads them out and sends them.
"""
