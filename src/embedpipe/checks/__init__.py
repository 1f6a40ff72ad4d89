"""Drift and similarity-quality checks on table versions (plain Python: no Prefect here).

``stats`` holds the result type, ``drift`` the calibrated distribution-shift statistics,
``integrity`` the vector sanity scan, ``quality`` the golden-set, probe and neighbour measures, and
``suite`` ties them to a table version and a reference version and applies the configured gates.
"""
