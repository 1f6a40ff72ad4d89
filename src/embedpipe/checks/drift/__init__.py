"""Calibrated distribution-shift statistics between a reference set of embeddings and a new one.

Every function in this package is pure (no I/O, no logging, no Prefect) and returns a
:class:`~embedpipe.checks.stats.Stat`. They are publish gates for an embedding index, so each one is
built to be *calibrated*: when ``ref`` and ``new`` are two random halves of the same set of vectors a
check fires at most ~0.1% of the time (the tests and
:func:`~embedpipe.checks.drift.calibration.calibrate` measure this), while a real shift -- a
different topic mix, a swapped embedding model, collapsed vectors -- makes it fire.

A statistical check fires only when it is **both** significant (``p < alpha``) **and** practically
large (its effect size beyond a minimum), so that a very large ``n`` does not turn a negligible
difference into an alarm. The descriptive checks (``anisotropy``, ``effective_rank``,
``duplicate_vectors``, ``truncation_rate``) compare an estimate with a fixed threshold far outside
its sampling noise at the sizes they run on.

Inputs ``ref`` and ``new`` are ``(n, d)`` float arrays (typically L2-normalised float32 sentence
embeddings). Expensive checks draw a fixed-seed subsample of at most ``max_per_side`` rows per side
(``np.random.default_rng(seed)``), so a given input always gives the same answer. Any input with
fewer than 5 rows on a side returns ``Stat(statistic=nan, fired=False, detail="too few vectors ...")``;
constant vectors and ``d == 1`` are handled without exceptions.

The modules, one family of statistics each (the check registry names the function of every check):

- ``distribution``: ``centroid_shift`` (mean vector) and ``drifted_components`` (KS per principal
  component);
- ``classifier``: ``domain_auc`` (a linear model telling the sides apart);
- ``kernel``: ``mmd`` (maximum mean discrepancy, permutation test);
- ``geometry``: ``anisotropy``, ``effective_rank``, ``duplicate_vectors`` (shape of the space);
- ``text``: ``token_length_psi``, ``truncation_rate``, ``language_mix`` (token counts and scripts);
- ``calibration``: ``DRIFT_CHECKS`` and ``calibrate`` (false alarms on random halves).

This package imports nothing itself, and ``scipy`` and ``scikit-learn`` are imported by the functions
that use them: every flow imports the check suite, and most runs (nothing changed) never run a check.
"""
