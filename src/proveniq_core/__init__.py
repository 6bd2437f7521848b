"""Proveniq Core: registers physical assets across lockers (MQTT), the ledger and Verify.

The packages stand in layers, drawn top to bottom. A module imports from its own layer and
those below it, never from one above (``tests/unit/test_layers.py`` reads this drawing and
fails on an import that climbs)::

    api · cli · console · demo             the faces: HTTP API, command line, web console
    service                                the composition root: builds a Core, starts workers
    saga                                   the durable registration saga, retry queue, operator
    verify                                 evidence analysis, the Verify worker, human review
    webhooks                               delivery of the ledger's outbox: signing, endpoints
    locker                                 the MQTT gateway, the locker protocol, a fleet
    ledger                                 assets, the audit chain, API keys, outbox, alerts
    db                                     the pool, named queries, migrations, the waker
    observability                          metrics, SLO estimates, timing, scrape gauges
    resilience                             circuit breakers and the circuits' names
    errors · config · logs · embedded      failure taxonomy, settings, logging, embedded servers

``db`` stands above ``observability`` and ``resilience``: it times every transaction and puts
the pool behind the ledger circuit. ``locker`` and ``ledger`` do not know each other, nor do
``webhooks``, ``verify`` and ``saga``; the saga and Verify are where a locker meets the ledger.
What is written in the caller's transaction (the outbox, ops alerts) belongs to the ledger;
what a lower layer reads from a higher one, the composition root hands it (the scrape gauges'
``BacklogReader``).
"""
