"""The check suite: what each check measures on a table version, and how its gate decides.

A version is checked against a *reference*: the pinned baseline tag when one is configured, else
the served version, else the version before it. Checks are grouped in families (one Prefect task
each); a family returns one :class:`~embedpipe.schemas.CheckResult` per check it measures.

Status of a result: ``pass``; ``warn`` or ``fail`` when the check fired (its severity decides
which); ``skipped`` when it does not apply (no reference yet, another model, no golden set) with
the reason in ``detail``; ``error`` when it could not be measured (a malformed golden set). A
version is served only when no check of severity ``fail`` has status ``fail`` or ``error``.

The modules:

- ``context``: the reference version and the fixed-seed samples of both versions
  (:class:`~embedpipe.checks.suite.context.AuditContext`), and ``validate_setup``;
- ``table``: families measured on the stored table itself (integrity, neighbours, index);
- ``samples``: families comparing the two samples with the ``drift`` statistics;
- ``probes``: families that embed fixed sets with the table's model (canary, golden, triplets, pairs);
- ``run``: one family measured and gated into results (``run_family``), and the verdict.

This package imports nothing itself; the registry names each family's function, which
``run_family`` imports when the family runs.
"""
