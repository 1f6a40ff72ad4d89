"""Serve the deployments of ``deploy/prefect.yaml`` from one process: ``embedpipe serve``.

The YAML file stays the one description of every deployment: names, entrypoints, parameters,
schedules and concurrency limits are read from it and handed to ``flow.to_deployment`` and
``prefect.serve``; nothing of them is repeated here. Work pools, ``pull`` steps and job variables
apply to workers only: a served deployment runs in a subprocess of this process, with its
environment and working directory.

Prefect's embedded temporary server does not run the scheduler service, so served schedules would
never produce a run. Without ``PREFECT_API_URL`` this module therefore starts ``prefect server
start`` on loopback as a child process (history in ``PREFECT_HOME``, like the embedded mode),
points itself at it, and stops it on exit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zoneinfo
from collections.abc import Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow, serve
from prefect.client.schemas.objects import ConcurrencyLimitConfig
from prefect.exceptions import MissingFlowError, ParameterTypeError, ScriptError, SignatureMismatchError
from prefect.flows import load_flow_from_entrypoint
from prefect.schedules import Schedule
from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

from embedpipe.errors import ConfigError, ServeError

logger = logging.getLogger(__name__)

DEFAULT_FILE = Path("deploy") / "prefect.yaml"
_SCHEDULE_KINDS = ("cron", "interval", "rrule")
_SCHEDULE_KEYS = {*_SCHEDULE_KINDS, "timezone", "active", "parameters", "slug", "day_or", "anchor_date"}


@dataclasses.dataclass
class DeploymentSpec:
    """One deployment of the YAML file, checked against its flow."""

    name: str
    entrypoint: str
    flow: Flow[Any, Any]
    parameters: dict[str, Any]
    schedules: list[Schedule]
    tags: list[str]
    description: str | None
    paused: bool
    concurrency_limit: int | ConcurrencyLimitConfig | None
    work_pool: str | None

    @property
    def full_name(self) -> str:
        """``flow-name/deployment-name``, as Prefect names it."""
        return f"{self.flow.name}/{self.name}"


def read_config(path: Path) -> dict[str, Any]:
    """Read a prefect.yaml file.

    Args:
        path: The file.

    Returns:
        The parsed mapping (YAML anchors resolved).

    Raises:
        ConfigError: The file is missing, is not YAML, or is not a mapping with a ``deployments`` list.
    """
    if not path.is_file():
        raise ConfigError(
            f"deployment file not found: path={path}; run from the repository root or pass --file"
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or type(e).__name__
        raise ConfigError(f"deployment file path={path} is not valid YAML{where}: {problem}") from e
    if not isinstance(data, dict) or not isinstance(data.get("deployments"), list):
        raise ConfigError(f"deployment file path={path}: expected a mapping with a `deployments:` list")
    return data


def load_deployments(
    path: str | os.PathLike[str] = DEFAULT_FILE, only: Sequence[str] | None = None
) -> list[DeploymentSpec]:
    """Read the deployments of a prefect.yaml file and check each one against its flow.

    Args:
        path: The prefect.yaml file.
        only: Keep these deployment names (all when empty or ``None``).

    Returns:
        The deployments in file order.

    Raises:
        ConfigError: The file, an entrypoint, a parameter, a schedule or a name in ``only`` is wrong;
            the message names the deployment and the offending value.
    """
    file = Path(path)
    data = read_config(file)
    specs: list[DeploymentSpec] = []
    seen: set[str] = set()
    for i, raw in enumerate(data["deployments"]):
        if not isinstance(raw, dict):
            raise ConfigError(f"deployment file path={file}: deployments[{i}] is not a mapping")
        name = raw.get("name")
        if not isinstance(name, str) or not name.strip():
            raise ConfigError(f"deployment file path={file}: deployments[{i}] has no name")
        if name in seen:
            raise ConfigError(f"deployment file path={file}: deployment name={name} appears twice")
        seen.add(name)
        if only and name not in only:
            continue
        specs.append(_spec(file, name, raw))
    unknown = sorted(set(only or []) - seen)
    if unknown:
        raise ConfigError(
            f"--only {', '.join(unknown)}: no such deployment in path={file}; "
            f"known: {', '.join(sorted(seen))}"
        )
    return specs


def _spec(file: Path, name: str, raw: dict[str, Any]) -> DeploymentSpec:
    where = f"deployment name={name} (path={file})"
    entrypoint = raw.get("entrypoint")
    if not isinstance(entrypoint, str) or ":" not in entrypoint:
        raise ConfigError(f"{where}: entrypoint={entrypoint!r}; expected path/to/file.py:flow_function")
    flow = _load_flow(file, entrypoint, where)
    parameters = raw.get("parameters") or {}
    if not isinstance(parameters, dict):
        raise ConfigError(f"{where}: parameters must be a mapping, got {parameters!r}")
    _validate_parameters(flow, parameters, where)
    schedules = [_schedule(s, flow, parameters, where) for s in _as_list(raw.get("schedules"), where)]
    if raw.get("schedule"):
        raise ConfigError(f"{where}: use `schedules:` (a list), not the deprecated `schedule:`")
    tags = raw.get("tags") or []
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise ConfigError(f"{where}: tags must be a list of strings, got {tags!r}")
    pool = raw.get("work_pool") or {}
    return DeploymentSpec(
        name=name,
        entrypoint=entrypoint,
        flow=flow,
        parameters=parameters,
        schedules=schedules,
        tags=tags,
        description=raw.get("description"),
        paused=bool(raw.get("paused", False)),
        concurrency_limit=_concurrency(raw.get("concurrency_limit"), where),
        work_pool=pool.get("name") if isinstance(pool, dict) else None,
    )


def resolve_entrypoint(file: Path, entrypoint: str) -> str:
    """Entrypoint paths are relative to the current directory (as for ``prefect deploy``); when the
    file is not there, they are taken relative to the project root, the folder above ``deploy/``.

    Args:
        file: The prefect.yaml file.
        entrypoint: ``path/to/file.py:flow_function``.

    Returns:
        The entrypoint with a path that exists, or the given one when none does.
    """
    rel, func = entrypoint.rsplit(":", 1)
    for base in (Path.cwd(), file.resolve().parent.parent, file.resolve().parent):
        candidate = base / rel
        if candidate.is_file():
            return f"{candidate}:{func}"
    return entrypoint


def _load_flow(file: Path, entrypoint: str, where: str) -> Flow[Any, Any]:
    resolved = resolve_entrypoint(file, entrypoint)
    if not Path(resolved.rsplit(":", 1)[0]).is_file():
        raise ConfigError(f"{where}: entrypoint={entrypoint}: file not found")
    try:
        return load_flow_from_entrypoint(resolved, use_placeholder_flow=False)
    except MissingFlowError as e:
        raise ConfigError(f"{where}: entrypoint={entrypoint}: {e}".rstrip(". ")) from e
    except ScriptError as e:
        cause = e.user_exc if getattr(e, "user_exc", None) else e
        raise ConfigError(f"{where}: entrypoint={entrypoint} does not import: {cause}") from e


def _validate_parameters(flow: Flow[Any, Any], parameters: dict[str, Any], where: str) -> None:
    try:
        flow.validate_parameters(parameters)
    except (ParameterTypeError, SignatureMismatchError, TypeError, ValueError) as e:
        detail = " ".join(str(e).split())
        raise ConfigError(
            f"{where}: parameters {sorted(parameters)} do not fit flow {flow.name}"
            f"{_signature(flow)}: {detail}"
        ) from e


def _signature(flow: Flow[Any, Any]) -> str:
    import inspect

    return "(" + ", ".join(inspect.signature(flow.fn).parameters) + ")"


def _as_list(value: Any, where: str) -> list[dict[str, Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise ConfigError(f"{where}: schedules must be a list of mappings, got {value!r}")
    return value


def _schedule(raw: dict[str, Any], flow: Flow[Any, Any], defaults: dict[str, Any], where: str) -> Schedule:
    unknown = sorted(set(raw) - _SCHEDULE_KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown schedule key(s) {unknown}; known: {sorted(_SCHEDULE_KEYS)}")
    kinds = [k for k in _SCHEDULE_KINDS if raw.get(k) is not None]
    if len(kinds) != 1:
        raise ConfigError(f"{where}: a schedule needs exactly one of cron, interval or rrule, got {raw!r}")
    tz = raw.get("timezone")
    if tz is not None:
        try:
            zoneinfo.ZoneInfo(str(tz))
        except (zoneinfo.ZoneInfoNotFoundError, ValueError) as e:
            raise ConfigError(f"{where}: timezone={tz!r} is not an IANA time zone (e.g. UTC)") from e
    params = raw.get("parameters") or {}
    if params:
        _validate_parameters(flow, {**defaults, **params}, where + " schedule")
    kwargs: dict[str, Any] = {
        "timezone": tz,
        "active": bool(raw.get("active", True)),
        "parameters": params,
        "slug": raw.get("slug"),
    }
    if "day_or" in raw:
        kwargs["day_or"] = bool(raw["day_or"])
    try:
        if kinds[0] == "interval":
            seconds = raw["interval"]
            if not isinstance(seconds, int | float) or isinstance(seconds, bool) or seconds <= 0:
                raise ValueError(f"interval={seconds!r}: expected a positive number of seconds")
            return Schedule(interval=timedelta(seconds=seconds), **kwargs)
        kwargs[kinds[0]] = str(raw[kinds[0]])
        return Schedule(**kwargs)
    except ValueError as e:
        raise ConfigError(f"{where}: {kinds[0]}={raw[kinds[0]]!r} is not a valid schedule: {e}") from e


def _concurrency(value: Any, where: str) -> int | ConcurrencyLimitConfig | None:
    if value is None:
        return None
    try:
        if isinstance(value, int) and not isinstance(value, bool):
            if value < 1:
                raise ValueError("expected a positive number of runs")
            return value
        if isinstance(value, dict):
            return ConcurrencyLimitConfig(**value)
        raise ValueError("expected a number or {limit, collision_strategy}")
    except (TypeError, ValueError) as e:
        detail = " ".join(str(e).split())
        raise ConfigError(f"{where}: concurrency_limit={value!r} is invalid: {detail}") from e


def serve_deployments(specs: Sequence[DeploymentSpec], limit: int | None = None) -> None:
    """Register the deployments with the current Prefect API and run their flows until stopped.

    Args:
        specs: Deployments from :func:`load_deployments`.
        limit: Most flow runs executed at the same time (``None``: Prefect's default).
    """
    deployments: list[Any] = [
        spec.flow.to_deployment(
            name=spec.name,
            parameters=spec.parameters,
            schedules=spec.schedules or None,
            tags=spec.tags,
            description=spec.description,
            paused=spec.paused,
            concurrency_limit=spec.concurrency_limit,
        )
        for spec in specs
    ]
    # pause_on_shutdown: a stopped `serve` leaves no schedule producing runs nobody executes.
    serve(*deployments, limit=limit, print_starting_message=False, pause_on_shutdown=True)


def configured_api_url() -> str | None:
    """The Prefect API URL from the environment or the active Prefect profile, if any."""
    url = get_current_settings().api.url
    return str(url) if url else None


def _free_port(preferred: int) -> int:
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return int(s.getsockname()[1])
    raise ServeError("no free TCP port on 127.0.0.1 for the local Prefect server")


def _healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


@contextlib.contextmanager
def local_server(port: int = 4200, timeout: float = 180.0) -> Iterator[str]:
    """Run ``prefect server start`` on loopback as a child process for the duration of the block.

    The child keeps its history in ``PREFECT_HOME`` (the database Prefect's embedded mode uses too)
    and runs the scheduler. It gets its own session, so a Ctrl-C in the terminal reaches this
    process only, which stops the runner (pausing the schedules through the API) before the server.

    Args:
        port: The port to bind; another free one when it is taken.
        timeout: Seconds to wait for ``/api/health``.

    Yields:
        The API URL (``http://127.0.0.1:PORT/api``).

    Raises:
        ServeError: The server exited or did not answer in time; the message ends with its log's tail.
    """
    port = _free_port(port)
    api_url = f"http://127.0.0.1:{port}/api"
    log = tempfile.NamedTemporaryFile(prefix="embedpipe-prefect-server-", suffix=".log", delete=False)  # noqa: SIM115
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env["PREFECT_SERVER_API_HOST"] = "127.0.0.1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + timeout
        while not _healthy(api_url):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = Path(log.name).read_text(errors="replace").strip().splitlines()[-3:]
                state = f"exited with {proc.returncode}" if proc.poll() is not None else "timed out"
                raise ServeError(
                    f"the local Prefect server on port={port} {state}: {' | '.join(tail) or 'no output'} "
                    f"(log {log.name}); or set PREFECT_API_URL to a running server"
                )
            time.sleep(0.5)
        yield api_url
    finally:
        _stop(proc)
        log.close()


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def pointed_at(api_url: str) -> Iterator[None]:
    """Use ``api_url`` as the Prefect API in this process and in the flow runs it starts."""
    old = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = api_url
    try:
        with temporary_settings(updates={PREFECT_API_URL: api_url}):
            yield
    finally:
        if old is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = old


def check_api(api_url: str) -> None:
    """Fail early, in one line, when the configured Prefect API does not answer.

    Raises:
        ServeError: The API is unreachable or unhealthy.
    """
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        problem = client.api_healthcheck()
    if problem is not None:
        raise ServeError(
            f"no Prefect API answers at PREFECT_API_URL={api_url}: {problem}; start the server "
            "(prefect server start --host 127.0.0.1) or unset PREFECT_API_URL to let serve start one"
        )
