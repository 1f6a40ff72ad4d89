"""Prefect tasks: thin wrappers around the pure functions of the same modules.

Retries, timeouts and caching live in the ``@task`` decorators and nowhere else. Tasks pass record
batches and small references (file refs, staged-file URIs), never inputs hashed for caching.
"""
