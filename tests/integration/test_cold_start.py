"""Cold starts load only what a command needs (issue 14).

The real model knows its identity and tokenizer from its model card without loading torch,
transformers or sentence-transformers; the model itself loads only when something is embedded.
The import guard runs each command as its own process, as a user does, and reads ``sys.modules``
after the CLI's ``main`` returned.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from embedpipe.embedding.card import read_card, write_card
from embedpipe.embedding.embedder import SentenceTransformerEmbedder
from embedpipe.errors import ModelError
from tests.helpers import SAMPLE_CORPUS, make_settings, write
from tests.integration.test_cli import cli_env

pytestmark = pytest.mark.slow

HEAVY = ("torch", "transformers", "sentence_transformers")
MODEL = {"name": "sentence-transformers/all-MiniLM-L6-v2", "device": "cpu", "backend": "torch"}

_PROBE = f"""
import json, sys
from embedpipe.cli import main
out, argv = sys.argv[1], sys.argv[2:]
try:
    rc = main(argv)
except SystemExit as e:  # --help
    rc = e.code
with open(out, "w") as fh:
    json.dump({{"rc": rc, "modules": sorted(m for m in sys.modules if m.split(".")[0] in {HEAVY!r})}}, fh)
"""


def probe(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[dict, subprocess.CompletedProcess]:
    """Run ``embedpipe ARGS`` in a fresh process; return its exit code and heavy modules, and the process."""
    out = tmp_path / "probe.json"
    out.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "-c", _PROBE, str(out), *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.exists(), proc.stderr
    return json.loads(out.read_text()), proc


def test_commands_that_embed_nothing_never_import_torch(tmp_path: Path, prefect_harness: str) -> None:
    env = cli_env(prefect_harness, EMBEDPIPE_MODEL__EXPORT_DIR=str(tmp_path / "exports"))
    src = tmp_path / "src"
    write(src / "embeddings.md", (SAMPLE_CORPUS / "basics" / "what-are-embeddings.md").read_text())
    write(src / "ann.md", (SAMPLE_CORPUS / "search" / "ann-indexes.md").read_text())

    first, proc = probe(tmp_path, env, "run", str(src), "--db", "db", "--json")
    assert first["rc"] == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["table_version"] == 2 and summary["chunks_embedded"] > 0  # 2: the full-text index
    # Chunks were embedded. auto measured its candidates (torch among them) in a child process,
    # whose exports this process then loaded without torch: torch is here only if it won.
    if summary["backend"] == "torch":
        assert "torch" in first["modules"]
    else:
        assert first["modules"] == [], "embedding with an export imported " + ", ".join(first["modules"])
    forced, proc = probe(tmp_path, env, "run", str(src), "--db", "db2", "--backend", "torch", "--json")
    assert forced["rc"] == 0, proc.stderr
    assert "torch" in forced["modules"]  # the probe does see torch when it is loaded

    noop, proc = probe(tmp_path, env, "run", str(src), "--db", "db", "--json")
    assert noop["rc"] == 0, proc.stderr
    again = json.loads(proc.stdout)
    assert again["table_version"] is None and again["chunks_embedded"] == 0
    assert (again["model_id"], again["dim"], again["device"]) == (
        summary["model_id"],
        summary["dim"],
        summary["device"],
    )
    assert noop["modules"] == [], "a run with nothing to embed imported " + ", ".join(noop["modules"])

    for args in (
        ("--help",),
        ("versions", "--db", "db", "--json"),
        ("dashboard", "--db", "db", "--out", "dash.html"),
        ("compact", "--db", "db", "--json"),
        ("rollback", "1", "--db", "db", "--json"),
    ):
        seen, proc = probe(tmp_path, env, *args)
        assert seen["rc"] == 0, (args, proc.stderr)
        assert seen["modules"] == [], f"{' '.join(args)} imported {', '.join(seen['modules'])}"


def test_model_card_gives_the_loaded_identity_and_tokenizer(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, model=MODEL | {"export_dir": str(tmp_path / "exports")})
    loaded = SentenceTransformerEmbedder(settings.model)  # no card yet: loads and writes it
    assert loaded.loaded and read_card(loaded._card_path) is not None

    cold = SentenceTransformerEmbedder(settings.model)
    assert not cold.loaded
    assert cold.identity == loaded.identity
    assert (cold.tokenizer.tokenizer_hash, cold.special_tokens) == (
        loaded.tokenizer.tokenizer_hash,
        loaded.special_tokens,
    )
    texts = [(SAMPLE_CORPUS / "zh" / "embeddings-intro.txt").read_text(), "Vector indexes trade recall."]
    for a, b in zip(cold.tokenizer.token_spans(texts), loaded.tokenizer.token_spans(texts), strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(cold.tokenizer.token_ids(texts), loaded.tokenizer.token_ids(texts), strict=True):
        np.testing.assert_array_equal(a, b)

    vecs = cold.encode(texts, batch_size=2)  # loads now and checks the card
    assert cold.loaded
    np.testing.assert_allclose(vecs, loaded.encode(texts, batch_size=2), atol=1e-6)


def test_a_card_that_disagrees_with_the_model_is_refused_and_removed(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, model=MODEL | {"export_dir": str(tmp_path / "exports")})
    loaded = SentenceTransformerEmbedder(settings.model)
    card = read_card(loaded._card_path)
    assert card is not None
    write_card(loaded._card_path, type(card)(dim=card.dim + 1, max_seq_length=128, tokenizer=card.tokenizer))

    stale = SentenceTransformerEmbedder(settings.model)
    assert stale.identity.dim == card.dim + 1 and not stale.loaded
    with pytest.raises(ModelError, match="does not match its model card") as err:
        stale.encode(["a query"], batch_size=1)
    assert str(loaded._card_path) in str(err.value)
    assert not loaded._card_path.exists()


_EARLY = """
import json, os, sys
from prefect import flow, task
from prefect.settings import get_current_settings
from embedpipe.flows._server import served_by, start_early

@task
def one(i):
    return i

@flow(name="early")
def early():
    return sum(f.result() for f in [one.submit(i) for i in range(5)])

server = start_early()
assert server is not None
ids = []
with served_by(server, ids):
    assert get_current_settings().api.url == server.api_url == os.environ["PREFECT_API_URL"]
    state = early(return_state=True)
    ids.append(str(state.state_details.flow_run_id))
print(json.dumps({
    "id": ids[0],
    "stopped": server.process is None,
    "api_after": get_current_settings().api.url,
    "env_after": os.environ.get("PREFECT_API_URL"),
    "server_module_imported": "prefect.server.api.server" in sys.modules,
}))
"""


def test_the_early_temporary_server_records_the_run_then_stops(tmp_path: Path) -> None:
    """The CLI's own start of Prefect's temporary server: the flow run and its task runs are in
    Prefect's database afterwards, the server is stopped, the settings are as before, and the
    client never imported Prefect's server package."""
    import sqlite3

    home = tmp_path / "prefect-home"
    env = cli_env(None, PREFECT_HOME=str(home), PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL="WARNING")
    proc = subprocess.run(
        [sys.executable, "-c", _EARLY], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr
    out = json.loads(proc.stdout)
    assert out["stopped"] and out["api_after"] is None and out["env_after"] is None
    assert not out["server_module_imported"]
    db = sqlite3.connect(home / "prefect.db")
    run = db.execute(
        "select f.name, r.state_type from flow_run r join flow f on f.id = r.flow_id where r.id = ?",
        (out["id"],),
    ).fetchall()
    assert run == [("early", "COMPLETED")]
    tasks = db.execute("select state_type from task_run where flow_run_id = ?", (out["id"],)).fetchall()
    assert tasks == [("COMPLETED",)] * 5


def test_no_early_server_when_an_api_is_configured() -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from embedpipe.flows._server import served_by, start_early

    with temporary_settings(updates={PREFECT_API_URL: "http://127.0.0.1:9/api"}):
        assert start_early() is None
    with served_by(None, []):  # nothing to wait for or stop
        pass
