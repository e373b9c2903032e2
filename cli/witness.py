"""``keyvault witness`` (init, serve, submit) and ``keyvault log export-tiles``: cosigned, auditable checkpoints."""

from __future__ import annotations

import http.server
import logging
import sys
from pathlib import Path

import click

from keyvault import Identity
from keyvault.engine import LogWitness, export_tiles, submit_checkpoint
from keyvault.errors import KeyvaultError, StoreExistsError
from keyvault.formats.cosignature import Witness
from keyvault.formats.identity import PublicIdentity

from .output import State, emit, handle_errors, json_option

_FILE = click.Path(dir_okay=False, path_type=Path)
log = logging.getLogger("keyvault.witness")


@click.group()
def witness() -> None:
    """Witnesses: cosign a store's checkpoints only while its log grows consistently (C2SP tlog-witness)."""


@witness.command("init")
@click.argument("name")
@click.option("--out", required=True, type=_FILE, help="Where to write the witness identity (0600).")
@json_option
@handle_errors
def witness_init(name: str, out: Path, as_json: bool) -> None:
    """Create a witness identity NAME (a key name like witness.example/w1: no spaces, no '+')."""
    if out.exists():
        raise StoreExistsError(f"{out} already exists; choose another --out (a witness key is never overwritten)")
    who = Identity.generate(name)
    key = Witness(who.name, who.public_key)  # refuses a name a note cannot carry
    who.save(out)
    emit(as_json, {"name": who.name, "fingerprint": who.fingerprint, "vkey": key.vkey(), "file": str(out)},
         f"witness {who.name!r} created: {out}\nfingerprint  {who.fingerprint}\nverifier key {key.vkey()}\n"
         f"give verifiers its public file: keyvault identity show --public {out} > witness.pub")


@witness.command("serve")
@click.option("--identity", "identity_file", required=True, type=_FILE, help="The witness identity (0600).")
@click.option("--state", "state_dir", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Directory of the witness's durable state (the newest size and root per log).")
@click.option("--log", "logs", multiple=True, required=True, type=_FILE,
              help="A store's engine public file (`keyvault identity show --public`): a log to witness. Repeat.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=7380, type=click.IntRange(0, 65535), show_default=True,
              help="Port to listen on (0: any free port, printed).")
@handle_errors
def witness_serve(identity_file: Path, state_dir: Path, logs: tuple[Path, ...], host: str, port: int) -> None:
    """Serve POST /add-checkpoint (C2SP tlog-witness) until stopped."""
    server = _server(LogWitness(Identity.load(identity_file), state_dir, [PublicIdentity.load(p) for p in logs]),
                     host, port)
    click.echo(f"witness listening on http://{host}:{server.server_address[1]}/add-checkpoint", err=True)
    sys.stderr.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _server(witness_state: LogWitness, host: str, port: int) -> http.server.ThreadingHTTPServer:
    """An HTTP/1.1 server answering add-checkpoint with ``witness_state``."""

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        server_version = "keyvault-witness"
        timeout = 30  # seconds a connection may sit idle or trickle its request before it is closed

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (the stdlib's name)
            log.info("%s " + format, self.address_string(), *args)

        def _answer(self, status: int, body: bytes, kind: str = "text/plain; charset=utf-8") -> None:
            self.send_response(status)
            self.send_header("content-type", kind)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            if self.path.split("?", 1)[0] != "/add-checkpoint":
                self._answer(404, b"not found: POST /add-checkpoint\n")
                return
            try:
                length = int(self.headers.get("content-length", ""))
            except ValueError:
                self.close_connection = True
                self._answer(411, b"send a Content-Length\n")
                return
            if not 0 <= length <= witness_state.max_request:
                self.close_connection = True
                self._answer(413, f"a request is at most {witness_state.max_request} bytes\n".encode())
                return
            try:
                answer = witness_state.add_checkpoint(self.rfile.read(length))
            except KeyvaultError as exc:  # a damaged state file: nothing is cosigned until it is restored
                log.error("add-checkpoint refused: %s", exc)
                self._answer(503, f"{exc}\n".encode())
                return
            self._answer(answer.status, answer.body, answer.content_type)

        def do_GET(self) -> None:  # noqa: N802
            self._answer(405, b"use POST /add-checkpoint\n")

    server = http.server.ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    return server


@witness.command("submit")
@click.argument("url")
@click.option("--witness", "witness_file", required=True, type=_FILE,
              help="The witness's public identity file: its cosignature is checked before it is kept.")
@json_option
@click.pass_obj
@handle_errors
def witness_submit(state: State, url: str, witness_file: Path, as_json: bool) -> None:
    """Send the newest checkpoint to the witness at URL and keep its cosignature with the checkpoint."""
    vault = state.vault()
    vault.checkpoint()  # a checkpoint covering every event so far
    doc = submit_checkpoint(vault.engine, url, PublicIdentity.load(witness_file))
    emit(as_json, doc, f"cosigned by {doc['witness']!r} at {doc['size']:,} events (the witness had seen "
                       f"{doc['old_size']:,}):\n{doc['note'].rstrip()}")


@click.group("log")
def log_group() -> None:
    """The event log, published for outside auditors."""


@log_group.command("export-tiles")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@json_option
@click.pass_obj
@handle_errors
def export(state: State, directory: Path, as_json: bool) -> None:
    """Write the log as C2SP tlog-tiles (checkpoint, tile/<L>/<N>, tile/entries/<N>) to serve as static files."""
    vault = state.vault()
    vault.checkpoint()
    doc = export_tiles(vault.engine, directory)
    emit(as_json, doc, f"{doc['size']:,} events as tiles in {directory}: {doc['written']} files written, "
                       f"{doc['kept']} full tiles already there")
