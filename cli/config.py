"""The service's configuration: ``keyvault serve --config keyvault.toml`` and ``keyvault config show``.

Every ``serve`` option has a key in the file's ``[serve]`` table (``--max-header-bytes`` is
``max_header_bytes``), and the global options have top-level keys (``store``, ``pepper_file``).
Each value comes from, in order of precedence: a flag, an environment variable (``KEYVAULT_STORE``,
``KEYVAULT_PEPPER_FILE``, ``KEYVAULT_SERVE_<KEY>``), the file, the default. The file is TOML
(docs/deploy.md; deploy/keyvault.toml is a commented example); an unknown key, a wrong type or a bad
value is refused with the file, the key and its line, before anything starts. ``keyvault config show``
prints what ``serve`` would use and where each value came from, secrets masked.
"""

from __future__ import annotations

import difflib
import json
import re
import tomllib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click
from click.core import ParameterSource

from keyvault.service.limits import Limits

from .output import handle_errors, json_option, read_bounded

F = TypeVar("F", bound=Callable[..., Any])
LIMITS = Limits()  # the defaults
LOG_FORMATS = ("text", "json")
CONFIG_ENV = "KEYVAULT_CONFIG"
GLOBAL_KEYS = ("store", "pepper_file")  # the root group's options, top-level keys of the file
MASK = "********"
#: Key names whose values are secret as a whole (tokens, passwords, webhook secrets): shown as MASK.
SECRET_NAME = re.compile(r"token|secret|password|passwd|credential|private", re.IGNORECASE)
#: A password inside a URL or DSN (``postgresql://user:PASSWORD@host/db``): masked, the rest shown.
URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*://[^:/?#@\s]*:)(?P<password>[^@/?#\s]*)(?=@)")
#: ``password=...`` inside a key=value DSN (``host=db password=PASSWORD``).
DSN_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<password>'(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)


def env_name(key: str) -> str:
    """The environment variable of a key: KEYVAULT_STORE, KEYVAULT_SERVE_WORKERS..."""
    return "KEYVAULT_" + key.replace(".", "_").upper()


SERVE_KEYS: list[str] = []  # the names of serve's options, in order: bind, workers, ...


def _option(name: str, **kw: Any) -> Callable[[F], F]:
    key = name.lstrip("-").split("/")[0].replace("-", "_")
    SERVE_KEYS.append(key)
    return click.option(name, envvar=env_name("serve." + key), show_envvar=True, show_default=True, **kw)


#: The options of ``keyvault serve``, shared by ``keyvault config show`` (to show what a command line would use).
SERVE_OPTIONS: list[Callable[[F], F]] = [
    _option("--bind", default="127.0.0.1:8080", help="HOST:PORT to listen on."),
    _option("--workers", default=2, type=click.IntRange(1, 64), help="Worker processes (one per core is a good start)."),
    _option("--access-log/--no-access-log", default=True,
            help="Log method, route, status, time and request id of every request on stderr."),
    _option("--log-format", default="text", type=click.Choice(LOG_FORMATS),
            help="Every log line of the service as text, or as one JSON object per line."),
    _option("--max-header-bytes", default=LIMITS.max_header_bytes, type=click.IntRange(1024, 1 << 20),
            help="Bytes of a request's line and headers; beyond: 431."),
    _option("--max-headers", default=LIMITS.max_headers, type=click.IntRange(8, 10_000),
            help="Header lines of a request; beyond: 431."),
    _option("--max-request-line", default=LIMITS.max_request_line, type=click.IntRange(256, 1 << 20),
            help="Bytes of a request's target (path and query); beyond: 414."),
    _option("--header-timeout", default=LIMITS.header_timeout, type=click.FloatRange(0.1, 3600),
            help="Seconds from a request's first byte to the end of its headers; beyond: 408, closed."),
    _option("--body-timeout", default=LIMITS.body_timeout, type=click.FloatRange(0.1, 3600),
            help="Seconds for a request body, plus one for each 64 KiB received; beyond: 408, closed."),
    _option("--keep-alive", default=LIMITS.keep_alive, type=click.FloatRange(0.1, 3600),
            help="Seconds a connection may stay idle, before its first request too; then it is closed."),
    _option("--max-connections", default=LIMITS.max_connections, type=click.IntRange(1, 1_000_000),
            help="Open connections per worker; beyond, the one idle longest is closed."),
    _option("--backlog", default=LIMITS.backlog, type=click.IntRange(1, 65535),
            help="Connections the kernel queues until a worker accepts them."),
]
CONFIG_OPTION = click.option(
    "--config", "config_file", type=click.Path(dir_okay=False, path_type=Path), envvar=CONFIG_ENV,
    show_envvar=True, help="A TOML file of settings (docs/deploy.md); flags and environment variables override it.")


def serve_options(f: F) -> F:
    """Add --config and every ``serve`` option to a command."""
    for option in reversed([CONFIG_OPTION, *SERVE_OPTIONS]):
        f = option(f)
    return f


def parse_bind(value: str) -> tuple[str, int]:
    """(host, port) of HOST:PORT, or click.BadParameter saying the form."""
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or not host or int(port) > 65535:
        raise click.BadParameter("use HOST:PORT, like 127.0.0.1:8080")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class Setting:
    """One effective value and where it came from: default, file (path:line), env (its name) or flag."""

    value: Any
    source: str
    origin: str = ""

    def shown(self, key: str) -> Any:
        """The value as ``config show`` prints it: secrets masked."""
        return mask(key, self.value)


def mask(key: str, value: Any) -> Any:
    """``value`` with anything secret in it masked: the whole value of a secret key, a URL's or DSN's password."""
    if value is None:
        return None
    if SECRET_NAME.search(key.rpartition(".")[2]):
        return MASK
    if isinstance(value, str):
        value = URL_PASSWORD.sub(lambda m: m["head"] + MASK, value)
        return DSN_PASSWORD.sub(lambda m: m["head"] + MASK, value)
    if isinstance(value, Path):
        return str(value)
    return value


# -- the file -------------------------------------------------------------------------------------------


def _key_lines(text: str) -> dict[str, int]:
    """Where each dotted key is set in a TOML text (line numbers from 1): tomllib does not say."""
    lines: dict[str, int] = {}
    table = ""
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[\s*([A-Za-z0-9_.\"' -]+?)\s*\]", line)
        if header:
            table = header.group(1).replace('"', "").replace("'", "").replace(" ", "")
            lines.setdefault(table, number)
            continue
        assign = re.match(r"\s*([A-Za-z0-9_.\"' -]+?)\s*=", line)
        if assign:
            name = assign.group(1).replace('"', "").replace("'", "").replace(" ", "")
            lines.setdefault(f"{table}.{name}" if table else name, number)
    return lines


def _where(path: Path, lines: dict[str, int], key: str) -> str:
    line = lines.get(key)
    return f"{path}, line {line}" if line else str(path)


def load(path: Path, params: dict[str, click.Parameter], ctx: click.Context) -> dict[str, Setting]:
    """The settings a TOML file gives, checked (types and values as the flags check them), by dotted key."""
    try:
        text = read_bounded(path, 1 << 20, "a configuration file").decode("utf-8")
    except FileNotFoundError:
        raise click.UsageError(f"{path}: no such configuration file: check --config (or {CONFIG_ENV}); "
                               "deploy/keyvault.toml is an example to start from") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise click.UsageError(f"{path}: cannot read the configuration file ({reason}): check its path and "
                               "permissions, and that it is UTF-8 text") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise click.UsageError(f"{path}: not valid TOML: {exc}; fix the file there "
                               "(https://toml.io shows the syntax)") from None
    lines = _key_lines(text)
    known = {*GLOBAL_KEYS, *(f"serve.{name}" for name in params if name not in GLOBAL_KEYS)}
    flat: dict[str, Any] = {}
    for name, value in doc.items():
        if name == "serve":
            if not isinstance(value, dict):
                raise click.UsageError(f"{_where(path, lines, name)}: serve must be a table: write [serve] on a "
                                       "line of its own, then its keys (bind = \"127.0.0.1:8080\", ...)")
            flat.update({f"serve.{k}": v for k, v in value.items()})
        elif isinstance(value, dict):
            fix = "did you mean [serve]" if difflib.get_close_matches(name, ["serve"], 1) else "remove it"
            raise click.UsageError(f"{_where(path, lines, name)}: unknown table [{name}]: {fix}? The one table is "
                                   "[serve]; store and pepper_file are top-level keys, before it")
        else:
            flat[name] = value
    out: dict[str, Setting] = {}
    for key, value in flat.items():
        where = _where(path, lines, key)
        if key not in known:
            close = difflib.get_close_matches(key, known, 1) or [k for k in known if k.endswith("." + key)]
            fix = f"did you mean {close[0]}" + (" (under [serve])" if close[0].startswith("serve.") else "") \
                if close else "remove it"
            raise click.UsageError(f"{where}: unknown key {key!r}: {fix}? The keys are {', '.join(sorted(known))} "
                                   "(`keyvault config show` lists them with their values)")
        param = params[key.rpartition(".")[2]]
        out[key] = Setting(_check(key, value, param, ctx, where, path), "file", where)
    return out


def _kind(param: click.Parameter) -> type:
    kind = param.type
    if isinstance(kind, click.IntRange) or kind is click.INT:
        return int
    if isinstance(kind, click.FloatRange) or kind is click.FLOAT:
        return float
    if kind is click.BOOL or getattr(param, "is_flag", False):
        return bool
    return str


def _check(key: str, value: Any, param: click.Parameter, ctx: click.Context, where: str, path: Path) -> Any:
    """A file's value converted as its flag's would be, or a UsageError naming the file, key and line."""
    kind = _kind(param)
    names = {int: "a whole number", float: "a number", bool: "true or false", str: "a string, in quotes"}
    if isinstance(value, bool) != (kind is bool) or not isinstance(value, (int, float) if kind is float else kind):
        raise click.UsageError(f"{where}: {key} must be {names[kind]}, not {_toml_type(value)} ({value!r}): "
                               "change it in the file")
    try:
        converted = param.type.convert(value, param, ctx)
        if key == "serve.bind":
            parse_bind(converted)
    except click.BadParameter as exc:
        raise click.UsageError(f"{where}: {key} = {value!r} is refused: {exc.message.rstrip('.')}; change it in "
                               "the file") from None
    if isinstance(converted, Path) and not converted.is_absolute():  # relative to the file, not the cwd
        converted = path.parent / converted
    return converted


def _toml_type(value: Any) -> str:
    for kind, name in ((bool, "a boolean"), (int, "an integer"), (float, "a float"), (str, "a string"),
                       (dict, "a table"), (list, "an array")):
        if isinstance(value, kind):
            return name
    return "a date or time"


# -- the effective settings -----------------------------------------------------------------------------


def effective(ctx: click.Context, config_file: Path | None) -> tuple[dict[str, Setting], Path | None]:
    """Every setting of ``serve`` (and the store's) as flags, environment, ``config_file`` and defaults give it."""
    root = ctx.find_root()
    params = {p.name: p for p in root.command.params if p.name in GLOBAL_KEYS}
    params.update({p.name: p for p in ctx.command.params if p.name in SERVE_KEYS})
    if config_file is not None and not config_file.is_absolute():
        config_file = Path.cwd() / config_file
    from_file = load(config_file, params, ctx) if config_file is not None else {}
    out: dict[str, Setting] = {}
    for name, param in params.items():
        context = root if name in GLOBAL_KEYS else ctx
        key = name if name in GLOBAL_KEYS else f"serve.{name}"
        source = context.get_parameter_source(name)
        value = context.params.get(name)
        if source is ParameterSource.COMMANDLINE:
            out[key] = Setting(value, "flag", "--" + name.replace("_", "-"))
        elif source is ParameterSource.ENVIRONMENT:
            envvar = param.envvar if isinstance(param.envvar, str) else env_name(key)
            out[key] = Setting(value, "env", envvar)
        elif key in from_file:
            out[key] = from_file[key]
        else:
            out[key] = Setting(value, "default")
    return out, config_file


# -- keyvault config show ---------------------------------------------------------------------------------


@click.group("config")
def config() -> None:
    """The service's configuration: what `keyvault serve` would use, and where each value comes from."""


@config.command("show")
@serve_options
@json_option
@click.pass_context
@handle_errors
def show(ctx: click.Context, config_file: Path | None, as_json: bool, **_: Any) -> None:
    """Print the effective configuration of `serve` (file, environment, flags), secrets masked."""
    settings, path = effective(ctx, config_file)
    if as_json:
        doc = {"config_file": str(path) if path else None,
               "settings": {key: {"value": s.shown(key), "source": s.source,
                                  **({"from": s.origin} if s.origin else {})} for key, s in settings.items()}}
        click.echo(json.dumps(doc, ensure_ascii=False))
        return
    click.echo(f"# configuration file: {path if path else f'none (pass --config FILE or set {CONFIG_ENV})'}")
    width = max(len(key) for key in settings)
    for key, s in settings.items():
        value = s.shown(key)
        text = "(none)" if value is None else json.dumps(value) if isinstance(value, (bool, str)) else str(value)
        click.echo(f"{key:<{width}}  {text:<24}  {s.source}{' ' + s.origin if s.origin else ''}")
