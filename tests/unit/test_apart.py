"""Work in a child process (:mod:`embedpipe.embedding.apart`): answers and failures come back."""

from __future__ import annotations

import pytest

from embedpipe.embedding.apart import run_apart
from embedpipe.errors import ModelError


def test_a_failing_child_is_a_model_error_with_its_last_lines() -> None:
    # child_main called without the work it needs: the child dies with a TypeError
    with pytest.raises(ModelError, match=r"measuring: the child process exited with 1: .*TypeError"):
        run_apart("embedpipe.embedding.apart:child_main", {}, "measuring", timeout=120)


def test_a_child_that_cannot_import_its_entry_is_a_model_error() -> None:
    with pytest.raises(ModelError, match="ModuleNotFoundError"):
        run_apart("embedpipe.no_such_module:main", {"x": 1}, "exporting", timeout=120)
