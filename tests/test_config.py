"""The service's configuration file (cli/config.py): precedence, every refusal with file, key and line, masking,
and ``keyvault serve --config`` really serving with what the file says."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from cli_support import EXIT_USAGE, kv
from service_support import KEYVAULT, free_port
from keyvault import Vault
from keyvault.cli import config as cfg
from keyvault.cli.serve import serve


def show(*args: object, env: dict[str, str] | None = None) -> dict[str, Any]:
    result = kv(*args, "config", "show", "--json", env=env) if args[:1] == ("--store",) else \
        kv("config", "show", *args, "--json", env=env)
    assert result.exit_code == 0, result.output
    return json.loads(result.output)["settings"]


def refused(tmp_path: Path, text: str) -> str:
    """The message ``config show`` and ``serve`` refuse a file holding ``text`` with (the same for both)."""
    path = tmp_path / "kv.toml"
    path.write_text(text)
    shown = kv("config", "show", "--config", path)
    served = kv("serve", "--config", path)
    assert shown.exit_code == served.exit_code == EXIT_USAGE, shown.output
    assert "Traceback" not in shown.output
    message = shown.output.split("Error: ", 1)[1]
    assert served.output.split("Error: ", 1)[1] == message
    assert str(path) in message
    return message


def test_every_serve_option_has_a_key_and_an_env_var() -> None:
    options = {p.name for p in serve.params if p.name != "config_file"}
    assert options == set(cfg.SERVE_KEYS) and len(cfg.SERVE_KEYS) == 12
    settings = show()
    assert set(settings) == {"store", "pepper_file", *(f"serve.{k}" for k in cfg.SERVE_KEYS)}
    for param in serve.params:
        if param.name != "config_file":
            assert param.envvar == cfg.env_name(f"serve.{param.name}")  # KEYVAULT_SERVE_<KEY>, as before


def test_precedence_flag_over_env_over_file_over_default(tmp_path: Path) -> None:
    path = tmp_path / "kv.toml"
    path.write_text('store = "from-file"\n\n[serve]\n# a comment\nworkers = 3\nbind = "127.0.0.1:9001"\n'
                    'keep_alive = 7\nlog_format = "json"\n')
    settings = show("--config", path)
    assert settings["store"] == {"value": str(tmp_path / "from-file"), "source": "file", "from": f"{path}, line 1"}
    assert settings["serve.workers"] == {"value": 3, "source": "file", "from": f"{path}, line 5"}
    assert settings["serve.keep_alive"]["value"] == 7.0 and settings["serve.log_format"]["value"] == "json"
    assert settings["serve.backlog"] == {"value": 4096, "source": "default"}
    env = {"KEYVAULT_SERVE_WORKERS": "4", "KEYVAULT_STORE": str(tmp_path / "from-env"), "KEYVAULT_CONFIG": str(path)}
    settings = show(env=env)  # the file named by KEYVAULT_CONFIG
    assert settings["serve.workers"] == {"value": 4, "source": "env", "from": "KEYVAULT_SERVE_WORKERS"}
    assert settings["store"] == {"value": str(tmp_path / "from-env"), "source": "env", "from": "KEYVAULT_STORE"}
    assert settings["serve.bind"]["source"] == "file"
    settings = json.loads(kv("--store", tmp_path / "from-flag", "config", "show", "--workers", "5", "--json",
                      env=env).output)["settings"]
    assert settings["serve.workers"] == {"value": 5, "source": "flag", "from": "--workers"}
    assert settings["store"]["source"] == "flag" and settings["store"]["value"] == str(tmp_path / "from-flag")


def test_the_text_form_names_the_file_and_each_source(tmp_path: Path) -> None:
    path = tmp_path / "kv.toml"
    path.write_text('[serve]\nworkers = 3\n')
    out = kv("config", "show", "--config", path, "--bind", "127.0.0.1:1", env={"KEYVAULT_SERVE_BACKLOG": "9"}).output
    assert f"# configuration file: {path}" in out
    lines = {line.split()[0]: line for line in out.splitlines()[1:]}
    assert lines["serve.workers"].endswith(f"file {path}, line 2")
    assert lines["serve.backlog"].endswith("env KEYVAULT_SERVE_BACKLOG")
    assert lines["serve.bind"].endswith("flag --bind")
    assert lines["serve.max_headers"].endswith("default")


@pytest.mark.parametrize("text, expected", [
    ('[serve]\nworkers = 2\nworkerz = 3\n', ["line 3", "unknown key 'serve.workerz'", "did you mean serve.workers"]),
    ('workers = 3\n', ["line 1", "unknown key 'workers'", "serve.workers (under [serve])"]),
    ('[server]\nbind = "x"\n', ["line 1", "unknown table [server]: did you mean [serve]"]),
    ('store = "s"\n[tls]\ncert = "x"\n', ["line 2", "unknown table [tls]: remove it"]),
    ('[serve]\nworkers = "3"\n', ["line 2", "serve.workers must be a whole number, not a string"]),
    ('[serve]\nworkers = 3.0\n', ["line 2", "serve.workers must be a whole number, not a float"]),
    ('[serve]\naccess_log = "no"\n', ["line 2", "serve.access_log must be true or false"]),
    ('[serve]\naccess_log = 0\n', ["serve.access_log must be true or false, not an integer"]),
    ('[serve]\nworkers = true\n', ["serve.workers must be a whole number, not a boolean"]),
    ('[serve]\nkeep_alive = "5"\n', ["serve.keep_alive must be a number"]),
    ('[serve]\nbind = 8080\n', ["serve.bind must be a string, in quotes, not an integer"]),
    ('store = ["a"]\n', ["line 1", "store must be a string, in quotes, not an array"]),
    ('[serve]\nworkers = 99\n', ["line 2", "serve.workers = 99 is refused", "1<=x<=64", "change it"]),
    ('[serve]\n\n\nlog_format = "xml"\n', ["line 4", "'xml' is not one of 'text', 'json'"]),
    ('[serve]\nbind = "nowhere"\n', ["line 2", "HOST:PORT"]),
    ('[serve]\nheader_timeout = 0\n', ["serve.header_timeout = 0 is refused"]),
    ('serve = 3\n', ["line 1", "serve must be a table"]),
    ('[serve\nworkers = 3\n', ["not valid TOML", "line 1, column 7"]),
    ('[serve]\nworkers = 3\nworkers = 4\n', ["not valid TOML", "line 3"]),
    ('[serve]\nbind = "a\n', ["not valid TOML", "line 2"]),
])
def test_a_bad_file_is_refused_with_its_line_and_what_to_do(tmp_path: Path, text: str, expected: list[str]) -> None:
    message = refused(tmp_path, text)
    for part in expected:
        assert part in message, message


def test_an_unreadable_file_is_refused(tmp_path: Path) -> None:
    missing = kv("config", "show", "--config", tmp_path / "absent.toml")
    assert missing.exit_code == EXIT_USAGE and "no such configuration file" in missing.output
    (tmp_path / "bin.toml").write_bytes(b"\xff\xfe[serve]")
    binary = kv("serve", "--config", tmp_path / "bin.toml")
    assert binary.exit_code == EXIT_USAGE and "UTF-8" in binary.output


def test_a_bad_env_value_is_refused_naming_the_variable() -> None:
    result = kv("config", "show", env={"KEYVAULT_SERVE_WORKERS": "many"})
    assert result.exit_code == EXIT_USAGE and "KEYVAULT_SERVE_WORKERS" in result.output


def test_a_refused_file_changes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "store"
    (tmp_path / "kv.toml").write_text(f'store = "{store}"\n[serve]\nworkers = 0\n')
    assert kv("serve", "--config", tmp_path / "kv.toml").exit_code == EXIT_USAGE
    assert not store.exists()


@pytest.mark.parametrize("key, value, shown", [
    ("serve.admin_token", "kvt_secret", cfg.MASK),
    ("webhook_secret", "whsec_abc", cfg.MASK),
    ("authority.password", "hunter2", cfg.MASK),
    ("authority.dsn", "postgresql://kv:hunter2@db:5432/keyvault", f"postgresql://kv:{cfg.MASK}@db:5432/keyvault"),
    ("authority.dsn", "host=db user=kv password=hunter2 dbname=kv", f"host=db user=kv password={cfg.MASK} dbname=kv"),
    ("authority.dsn", "host=db password='hun ter2' dbname=kv", f"host=db password={cfg.MASK} dbname=kv"),
    ("authority.dsn", "postgresql://db/keyvault", "postgresql://db/keyvault"),
    ("serve.bind", "127.0.0.1:8080", "127.0.0.1:8080"),
    ("serve.workers", 2, 2),
    ("store", None, None),
])
def test_secrets_are_masked(key: str, value: Any, shown: Any) -> None:
    assert cfg.mask(key, value) == shown
    if isinstance(value, str) and shown != value:
        assert "hunter2" not in str(cfg.mask(key, value)) and "secret" not in str(cfg.mask(key, value))


def test_serve_runs_with_what_the_file_says(tmp_path: Path) -> None:
    """A file giving the store (relative to it), the bind and JSON logs: the service serves there, logging JSON."""
    Vault.init(tmp_path / "store").close()
    port = free_port()
    (tmp_path / "kv.toml").write_text(f'store = "store"\n[serve]\nbind = "127.0.0.1:{port}"\nworkers = 1\n'
                                      'log_format = "json"\n')
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([KEYVAULT, "serve", "--config", str(tmp_path / "kv.toml")], stdout=out, stderr=out,
                                cwd="/")
    try:
        deadline = time.monotonic() + 60
        while "Application startup complete" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        import urllib.request
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(
                f"http://127.0.0.1:{port}/healthz", timeout=10) as reply:
            assert reply.status == 200 and len(reply.headers["X-Request-Id"]) == 16
    finally:
        proc.terminate()
        assert proc.wait(60) == 0
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    assert all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    assert any(line["message"].startswith(f"keyvault: serving {tmp_path / 'store'}") for line in lines)
