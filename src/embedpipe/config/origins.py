"""Where each setting came from, so that an error names the flag, variable or file key to fix.

Settings are merged from flags, ``EMBEDPIPE_*`` variables and a TOML file before they are
validated; pydantic reports a wrong value by its path only. :class:`Origins` looks the path up in
each source, highest precedence first, and says ``flag --batch-size``, ``env
EMBEDPIPE_MODEL__BATCH_SIZE`` or ``embedpipe.toml: [model] batch_size``.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from embedpipe.errors import ConfigError

ENV_PREFIX = "EMBEDPIPE_"
NESTED = "__"
_NOT_SETTINGS = frozenset({"EMBEDPIPE_CONFIG"})
SECRET_FIELDS = frozenset({"secret_access_key", "session_token", "storage_options"})
"""Settings whose rejected values are masked in messages too."""

Path_ = tuple[str, ...]
Loc = tuple[int | str, ...]
"""A pydantic error location: keys, and indexes into lists."""


def read_toml(path: Path) -> dict[str, Any]:
    """The TOML file's contents.

    Raises:
        ConfigError: The file cannot be read or is not valid TOML (the message has the line).
    """
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(
            f"config file {path} is not valid TOML: {e}; fix it or pass another --config"
        ) from e
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"config file {path} is not UTF-8 (byte {e.start}: {e.reason}); save it as UTF-8"
        ) from e
    except OSError as e:
        raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from e


def env_settings(environ: Mapping[str, str] | None = None) -> dict[Path_, str]:
    """Every ``EMBEDPIPE_*`` variable by the setting path it sets (lower case), e.g.
    ``("model", "batch_size") -> "EMBEDPIPE_MODEL__BATCH_SIZE"``."""
    out: dict[Path_, str] = {}
    for name in environ if environ is not None else os.environ:
        upper = name.upper()
        if upper.startswith(ENV_PREFIX) and upper not in _NOT_SETTINGS:
            out[tuple(upper[len(ENV_PREFIX) :].lower().split(NESTED))] = name
    return out


def _unwrap(annotation: Any) -> Any:
    """``X`` of ``X | None``."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else annotation
    return annotation


def field_type(model: type[BaseModel], path: Path_) -> Any:
    """The type a setting path leads to (``None`` when the path names no setting)."""
    current: Any = model
    for part in path:
        current = _unwrap(current)
        origin = typing.get_origin(current)
        if origin is dict:
            current = typing.get_args(current)[1]
        elif isinstance(current, type) and issubclass(current, BaseModel):
            field = current.model_fields.get(part)
            if field is None:
                return None
            current = field.annotation
        else:
            return None
    return _unwrap(current)


def expected_json(annotation: Any) -> str | None:
    """``a JSON list`` or ``a JSON object`` for a type an env variable must spell as JSON."""
    origin = typing.get_origin(annotation) or annotation
    if origin in (list, tuple, set, frozenset):
        return 'a JSON list, e.g. \'["a", "b"]\''
    if origin is dict or (isinstance(origin, type) and issubclass(origin, BaseModel)):
        return "a JSON object, e.g. '{\"key\": 1}'"
    return None


class Origins:
    """The sources of one settings load, and the lookup of a setting path in them."""

    def __init__(
        self,
        model: type[BaseModel],
        flags: Mapping[str, str] | None,
        overrides: Mapping[str, Any],
        toml_path: Path | None,
        toml_data: Mapping[str, Any] | None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.model = model
        self.flags = {tuple(k.split(".")): v for k, v in (flags or {}).items()}
        self.overrides = overrides
        self.env = env_settings(environ)
        self.environ = environ if environ is not None else os.environ
        self.toml_path = toml_path
        self.toml = toml_data or {}

    @staticmethod
    def _has(data: Mapping[str, Any], path: Path_) -> bool:
        node: Any = data
        for part in path:
            if not isinstance(node, Mapping) or part not in node:
                return False
            node = node[part]
        return True

    def _toml_key(self, path: Path_) -> str:
        if len(path) == 1:
            return f"{self.toml_path}: [{path[0]}]"
        return f"{self.toml_path}: [{'.'.join(path[:-1])}] {path[-1]}"

    def of(self, loc: Loc) -> str | None:
        """Where the value at ``loc`` came from: ``flag --x``, ``env NAME`` or ``file: [table] key``;
        ``None`` for a default."""
        path = tuple(str(p) for p in loc if not isinstance(p, int))
        if self._has(self.overrides, path):
            for n in range(len(path), 0, -1):
                if path[:n] in self.flags:
                    return f"flag {self.flags[path[:n]]}"
            return "get_settings override"
        lowered = tuple(p.lower() for p in path)
        for n in range(len(lowered), 0, -1):
            name = self.env.get(lowered[:n])
            if name is not None:
                rest = ".".join(path[n:])
                return f"env {name}" + (f" (key {rest})" if rest else "")
        if self.toml_path is not None and self._has(self.toml, path):
            return self._toml_key(path)
        return None

    def describe(self, loc: Loc) -> str:
        """``model.batch_size (env EMBEDPIPE_MODEL__BATCH_SIZE)``: the path and its source."""
        dotted = ".".join(str(p) for p in loc if not isinstance(p, int)) or "settings"
        origin = self.of(loc)
        return f"{dotted} ({origin})" if origin else f"{dotted} (default)"

    def unknown(self, loc: Loc) -> str:
        """The message for a key that names no setting, with the closest known names."""
        path = tuple(str(p) for p in loc if not isinstance(p, int))
        parent = field_type(self.model, path[:-1])
        known: list[str] = []
        if isinstance(parent, type) and issubclass(parent, BaseModel):
            known = list(parent.model_fields)
        close = difflib.get_close_matches(path[-1], known, n=2)
        hint = (
            f"; did you mean {' or '.join(close)}?"
            if close
            else (f"; known: {', '.join(known)}" if known else "")
        )
        return f"{self.describe(loc)}: no such setting{hint}"

    def mentioned(self, message: str) -> str:
        """Sources of the settings a cross-field message names as ``group.key=value``."""
        parts = []
        for dotted in dict.fromkeys(re.findall(r"\b([a-z0-9_]+(?:\.[a-z0-9_]+)+)=", message)):
            origin = self.of(tuple(dotted.split(".")))
            if origin:
                parts.append(f"{dotted} from {origin}")
        return f" ({'; '.join(parts)})" if parts else ""

    def env_json_errors(self) -> list[str]:
        """Variables whose value must be JSON (a list, a group, a mapping) but does not parse."""
        problems = []
        for path, name in sorted(self.env.items()):
            annotation = field_type(self.model, path)
            shape = expected_json(annotation) if annotation is not None else None
            if shape is None:
                continue
            value = self.environ[name]
            try:
                json.loads(value)
            except json.JSONDecodeError as e:
                shown = "**********" if SECRET_FIELDS & set(path) else repr(value)
                problems.append(
                    f"{'.'.join(path)} (env {name}): got {shown}, which is not JSON ({e.msg}); "
                    f"expected {shape}"
                )
        return problems
