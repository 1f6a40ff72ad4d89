"""deploy/: prefect.yaml, work-pool templates and Dockerfiles agree with the code; serve's loader errors.

No server is started: entrypoints are imported and parameters validated with Prefect's own functions.
"""

from __future__ import annotations

import json
import re
import zoneinfo
from pathlib import Path
from typing import Any

import pytest
import yaml
from prefect.client.schemas.schedules import CronSchedule
from prefect.flows import load_flow_from_entrypoint

from embedpipe import cli
from embedpipe.errors import ConfigError
from embedpipe.flows.serve import load_deployments
from tests.helpers import ROOT, write

DEPLOY = ROOT / "deploy"
PREFECT_YAML = DEPLOY / "prefect.yaml"
POOLS = DEPLOY / "work-pools"
PLACEHOLDER = re.compile(r"{{\s*([\w.$-]+)\s*}}")


def config() -> dict[str, Any]:
    return yaml.safe_load(PREFECT_YAML.read_text())


def deployments() -> dict[str, dict[str, Any]]:
    return {d["name"]: d for d in config()["deployments"]}


def test_every_entrypoint_imports_and_its_parameters_fit_the_flow() -> None:
    deps = deployments()
    assert set(deps) == {"nightly-sync", "reindex", "checks"}
    flows = {}
    for name, dep in deps.items():
        path, func = dep["entrypoint"].split(":")
        flow = load_flow_from_entrypoint(f"{ROOT / path}:{func}", use_placeholder_flow=False)
        params = dep.get("parameters") or {}
        validated = flow.validate_parameters(params)
        assert {k: validated[k] for k in params} == params
        flows[name] = flow.name
    assert flows == {"nightly-sync": "sync", "reindex": "reindex", "checks": "check"}
    assert deps["nightly-sync"]["parameters"]["sources"]  # sync has no default for its sources


def test_schedules_are_valid_crons_and_only_the_sync_is_scheduled() -> None:
    deps = deployments()
    (nightly,) = deps["nightly-sync"]["schedules"]
    schedule = CronSchedule(cron=nightly["cron"], timezone=nightly["timezone"])
    assert schedule.cron == "0 2 * * *" and str(zoneinfo.ZoneInfo(schedule.timezone)) == "UTC"
    assert nightly.get("active", True) is True
    assert not deps["reindex"].get("schedules") and not deps["checks"].get("schedules")
    # serve's loader reads the same file into Prefect schedule objects
    specs = {s.name: s for s in load_deployments(PREFECT_YAML)}
    assert [s.cron for s in specs["nightly-sync"].schedules] == ["0 2 * * *"]
    assert specs["reindex"].schedules == [] and specs["checks"].schedules == []
    assert specs["nightly-sync"].full_name == "sync/nightly-sync"


def _template(pool: str) -> dict[str, Any]:
    path = POOLS / f"{pool}.json"
    assert path.is_file(), f"work pool {pool} has no base job template {path}"
    return json.loads(path.read_text())


def test_every_deployment_names_a_pool_whose_template_declares_its_job_variables() -> None:
    cfg = config()
    pools = cfg["definitions"]["work_pools"]
    assert {p["name"] for p in pools.values()} == {p.stem for p in POOLS.glob("*.json")}
    for pool in pools.values():
        variables = _template(pool["name"])["variables"]["properties"]
        assert set(pool["job_variables"]) <= set(variables), pool["name"]
    for dep in cfg["deployments"]:
        _template(dep["work_pool"]["name"])
    for pool in POOLS.glob("*.json"):
        tpl = json.loads(pool.read_text())
        used = set(PLACEHOLDER.findall(json.dumps(tpl["job_configuration"])))
        assert used <= set(tpl["variables"]["properties"]), pool.name
    # the process pool starts flow runs where the pull step and the images put the project
    (step,) = cfg["pull"]
    workdir = step["prefect.deployments.steps.set_working_directory"]["directory"]
    assert _template("embedpipe-process")["variables"]["properties"]["working_dir"]["default"] == workdir


@pytest.mark.parametrize("dockerfile", ["Dockerfile.cpu", "Dockerfile.cuda"])
def test_dockerfiles_copy_only_existing_files_and_match_the_pull_step(dockerfile: str) -> None:
    text = (DEPLOY / dockerfile).read_text().replace("\\\n", " ")
    copies = [line.split()[1:] for line in text.splitlines() if line.startswith("COPY ")]
    assert copies
    for *sources, _dest in copies:
        for src in sources:
            assert (ROOT / src).exists(), f"{dockerfile} copies {src}, which does not exist"
    (step,) = config()["pull"]
    workdir = step["prefect.deployments.steps.set_working_directory"]["directory"]
    assert re.search(rf"^WORKDIR {re.escape(workdir)}$", text, re.M)
    for dep in deployments().values():  # entrypoints exist below the WORKDIR once src/ is copied
        assert dep["entrypoint"].startswith("src/") and ["src", "./src"] in copies
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in {"root", "0"}
    assert "HF_HUB_OFFLINE=1" in text
    assert "pip install" in text and '".[${EXTRAS}]"' in text
    if dockerfile == "Dockerfile.cpu":  # the CPU wheel of torch is installed before the package
        assert text.index("download.pytorch.org/whl/cpu") < text.index('".[${EXTRAS}]"')
    else:
        assert re.search(r"^FROM \$\{CUDA_IMAGE\}", text, re.M) and "nvidia/cuda:" in text


def _yaml(tmp_path: Path, body: str) -> Path:
    return write(tmp_path / "deploy" / "prefect.yaml", body)


SYNC = str(ROOT / "src/embedpipe/flows/sync.py")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("deployments: [name: x\n", "is not valid YAML at line"),
        ("just: text\n", "expected a mapping with a `deployments:` list"),
        (
            "deployments:\n  - name: a\n    entrypoint: src/nowhere.py:sync\n",
            "deployment name=a (path=",
        ),
        (
            f"deployments:\n  - name: a\n    entrypoint: {SYNC}:no_such_flow\n",
            "'no_such_flow' not found",
        ),
        (
            f"deployments:\n  - name: a\n    entrypoint: {SYNC}:sync\n"
            "    parameters: {sources: [a], colour: red}\n",
            "parameters ['colour', 'sources'] do not fit flow sync(sources, settings, delete_missing)",
        ),
        (
            f"deployments:\n  - name: a\n    entrypoint: {SYNC}:sync\n    parameters: {{}}\n",
            "parameters [] do not fit flow sync",
        ),
        (
            f"deployments:\n  - name: a\n    entrypoint: {SYNC}:sync\n"
            "    parameters: {sources: {x: 1}}\n",
            "parameters ['sources'] do not fit flow sync",
        ),
        (
            f"deployments:\n  - name: a\n    entrypoint: {SYNC}:sync\n    parameters: {{sources: [a]}}\n"
            "    schedules: [{cron: '0 25 * * *'}]\n",
            "cron='0 25 * * *' is not a valid schedule",
        ),
        (
            f"deployments:\n  - name: a\n    entrypoint: {SYNC}:sync\n    parameters: {{sources: [a]}}\n"
            "    schedules: [{cron: '0 2 * * *', timezone: Mars/Olympus}]\n",
            "timezone='Mars/Olympus' is not an IANA time zone",
        ),
    ],
)
def test_bad_prefect_yaml_is_a_config_error_naming_the_value(
    tmp_path: Path, body: str, expected: str
) -> None:
    path = _yaml(tmp_path, body)
    with pytest.raises(ConfigError) as err:
        load_deployments(path)
    assert expected in str(err.value)
    assert "\n" not in str(err.value) and err.value.exit_code == 2


def test_missing_entrypoint_file_and_unknown_only_name(tmp_path: Path) -> None:
    path = _yaml(tmp_path, "deployments:\n  - name: a\n    entrypoint: src/nowhere.py:sync\n")
    with pytest.raises(ConfigError, match=r"entrypoint=src/nowhere.py:sync: file not found"):
        load_deployments(path)
    with pytest.raises(ConfigError, match=r"--only nope: no such deployment .* known: checks, nightly-sync"):
        load_deployments(PREFECT_YAML, only=["nope"])
    assert [s.name for s in load_deployments(PREFECT_YAML, only=["checks"])] == ["checks"]


def test_serve_command_reports_a_bad_file_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["serve", "--file", str(tmp_path / "missing.yaml")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"embedpipe: error: deployment file not found: path={tmp_path / 'missing.yaml'}; "
        "run from the repository root or pass --file"
    ]
    bad = _yaml(tmp_path, f"deployments:\n  - name: a\n    entrypoint: {SYNC}:sync\n")
    assert cli.main(["serve", "--file", str(bad)]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "deployment name=a" in line and "do not fit flow sync" in line
    assert cli.main(["serve", "--limit", "0"]) == 2
    assert "--limit=0" in capsys.readouterr().err


def test_serve_against_an_unreachable_api_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert cli.main(["serve", "--file", str(PREFECT_YAML), "--only", "checks"]) == 9
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith(
        "embedpipe: error: no Prefect API answers at PREFECT_API_URL=http://127.0.0.1:9/api"
    )
