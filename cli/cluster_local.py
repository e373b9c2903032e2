"""A local keyvault cluster on the loopback: three etcd members, three PostgreSQL members under Patroni
in synchronous mode, and N ``keyvault serve`` nodes (docs/cluster.md).

Everything lives in one directory; ``cluster.json`` there records every process started (pid, start
time, port, command), so ``status`` and ``down`` act on exactly those processes and nothing else.
The processes run in their own sessions: they outlive the command that started them.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from keyvault import KeyvaultError

STATE_FILE = "cluster.json"
#: Debian packages that provide each program the cluster needs.
PACKAGES = {"etcd": "etcd-server", "patroni": "patroni", "postgres": "postgresql"}
MEMBERS = 3
#: Patroni timings that held under load on a shared 2-vCPU machine without flapping (docs/cluster.md).
TTL, LOOP_WAIT, RETRY_TIMEOUT = 15, 3, 5


#: The processes this process started, kept so they are reaped (and never garbage-collected while running).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class ClusterError(KeyvaultError):
    """The local cluster cannot do what was asked; the message says what to do."""


@dataclass(frozen=True)
class Programs:
    """Where the cluster's programs are."""

    etcd: str
    patroni: str
    pg_bin: Path
    keyvault: str


def find_programs() -> Programs:
    """The programs the cluster runs, or ClusterError naming the Debian packages to install."""
    missing = []
    etcd = shutil.which("etcd")
    if etcd is None:
        missing.append(PACKAGES["etcd"])
    patroni = shutil.which("patroni")
    if patroni is None:
        missing.append(PACKAGES["patroni"])
    given = os.environ.get("KEYVAULT_PG_BIN")  # PostgreSQL's bin directory, when not Debian's
    if given:
        bins = [Path(given) / "postgres"] if (Path(given) / "postgres").exists() else []
    else:
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parent.parent.name)
                      if p.parent.parent.name.isdigit() else 0)
    if not bins:
        missing.append(PACKAGES["postgres"])
    keyvault = shutil.which("keyvault") or str(Path(sys.executable).with_name("keyvault"))
    if missing:
        raise ClusterError(f"the local cluster needs {', '.join(missing)}: install with "
                           f"`apt-get install {' '.join(missing)} etcd-client` and run the command again "
                           "(nothing was started)")
    assert etcd is not None and patroni is not None
    return Programs(etcd, patroni, bins[-1].parent, keyvault)


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports nothing listens on now."""
    socks, ports = [], []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
            ports.append(int(sock.getsockname()[1]))
    finally:
        for sock in socks:
            sock.close()
    return ports


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None when it does not exist)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rpartition(")")[2].split()
    if fields[0] == "Z":  # a zombie: it has exited
        return None
    return int(fields[19])


def alive(proc: dict[str, Any]) -> bool:
    """Whether the process recorded in ``proc`` still runs (the same pid and the same start time)."""
    return proc.get("pid") is not None and start_time(int(proc["pid"])) == proc.get("started")


def http_json(url: str, timeout: float = 2.0) -> Any:
    """GET ``url`` and decode its JSON body (any HTTP status); None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        try:
            return json.loads(exc.read())
        except ValueError:
            return None
    except (OSError, ValueError):
        return None


def _chown_postgres(path: Path) -> None:
    if os.geteuid() == 0:
        import pwd

        entry = pwd.getpwnam("postgres")
        os.chown(path, entry.pw_uid, entry.pw_gid)


class LocalCluster:
    """The local cluster in one directory: ``up``, ``status``, ``down``."""

    def __init__(self, root: Path) -> None:
        """The cluster kept in ``root`` (created by ``up``)."""
        self.root = root.resolve()
        self.state_path = self.root / STATE_FILE

    # -- state -------------------------------------------------------------------------------------

    def load(self) -> dict[str, Any] | None:
        """The recorded state, or None when no cluster was started here."""
        try:
            return dict(json.loads(self.state_path.read_text()))
        except FileNotFoundError:
            return None
        except ValueError as exc:
            raise ClusterError(f"{self.state_path} is damaged ({exc}): stop what it started by hand "
                               "(`ps`), then remove the directory") from None

    def _save(self, state: dict[str, Any]) -> None:
        tmp = self.state_path.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as out:
            json.dump(state, out, indent=1)
        os.replace(tmp, self.state_path)

    def processes(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """Every recorded process, nodes first, then Patroni, PostgreSQL and etcd (the order to stop them)."""
        order = {"node": 0, "patroni": 1, "postgres": 2, "etcd": 3}
        procs = [p for p in state.get("processes", [])]
        procs += [p for p in self._postmasters(state) if all(p["pid"] != q["pid"] for q in procs)]
        return sorted(procs, key=lambda p: order.get(p["kind"], 9))

    def _postmasters(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """The PostgreSQL postmasters Patroni started (from each member's postmaster.pid)."""
        found = []
        for member in state.get("members", []):
            try:
                pid = int((Path(member["data_dir"]) / "postmaster.pid").read_text().split()[0])
            except (OSError, ValueError, IndexError):
                continue
            started = start_time(pid)
            if started is not None:
                found.append({"kind": "postgres", "name": member["name"], "pid": pid, "started": started,
                              "port": member["pg_port"]})
        return found

    # -- up ----------------------------------------------------------------------------------------

    def up(self, nodes: int = 2, say: Callable[[str], None] = lambda _: None, timeout: float = 120.0,
           node_workers: int = 1) -> dict[str, Any]:
        """Start etcd, Patroni/PostgreSQL and ``nodes`` keyvault nodes; wait for leader and sync standby."""
        if not 0 <= nodes <= 16:
            raise ClusterError(f"--nodes {nodes}: give 1 to 16 keyvault nodes")
        old = self.load()
        if old is not None and any(alive(p) for p in self.processes(old)):
            raise ClusterError(f"a cluster is already running in {self.root}: see `keyvault cluster local status "
                               f"--dir {self.root}`, or stop it with `keyvault cluster local down --dir {self.root}`")
        programs = find_programs()
        if old is not None or (self.root.exists() and any(self.root.iterdir())):
            raise ClusterError(f"{self.root} is not empty: give a new directory (a stopped cluster's directory "
                               "cannot be started again; remove it first)")
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o711)  # PostgreSQL (user postgres) must reach its data directories
        if os.geteuid() == 0 and subprocess.run(["runuser", "-u", "postgres", "--", "test", "-x", str(self.root)],
                                                capture_output=True).returncode != 0:
            raise ClusterError(f"the postgres user cannot reach {self.root}: choose a directory whose parents "
                               "it may enter (for example under /var/tmp), nothing was started")
        (self.root / "logs").mkdir(exist_ok=True)
        ports = free_ports(MEMBERS * 4 + nodes)
        etcd_client, etcd_peer = ports[0:3], ports[3:6]
        pg_ports, rest_ports, node_ports = ports[6:9], ports[9:12], ports[12:]
        cluster_name = "keyvault-" + secrets.token_hex(4)
        passwords = {name: secrets.token_urlsafe(18) for name in ("postgres", "replicator", "keyvault")}
        state: dict[str, Any] = {
            "format": "keyvault-local-cluster/1", "dir": str(self.root), "scope": cluster_name,
            "pg_bin": str(programs.pg_bin), "passwords": passwords, "processes": [], "members": [], "nodes": [],
            "etcd": [f"127.0.0.1:{port}" for port in etcd_client], "started_at": time.time(),
        }
        self._save(state)
        try:
            self._start_etcd(state, programs, etcd_client, etcd_peer, say)
            self._start_patroni(state, programs, pg_ports, rest_ports, say)
            leader = self.wait_for_sync(state, timeout, say)
            self._create_database(state, leader)
            hosts = ",".join(f"127.0.0.1:{port}" for port in pg_ports)
            state["dsn"] = (f"postgresql://keyvault:{passwords['keyvault']}@{hosts}/keyvault"
                            "?target_session_attrs=read-write&connect_timeout=3")
            state["superuser_dsn"] = (f"postgresql://postgres:{passwords['postgres']}@{hosts}/keyvault"
                                      "?target_session_attrs=read-write&connect_timeout=3")
            self._save(state)
            self._start_nodes(state, programs, node_ports, node_workers, say, timeout)
        except BaseException:
            say("bring-up failed: stopping what was started")
            self.down()
            raise
        return self.status()

    def _spawn(self, state: dict[str, Any], kind: str, name: str, argv: list[str], port: int,
               as_postgres: bool = False, env: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
        log = self.root / "logs" / f"{name}.log"
        if as_postgres and os.geteuid() == 0:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                    cwd=self.root, env=env)
        _CHILDREN[proc.pid] = proc
        entry = {"kind": kind, "name": name, "pid": proc.pid, "started": start_time(proc.pid), "port": port,
                 "log": str(log), **extra}
        if as_postgres and os.geteuid() == 0:  # runuser forks the program: record the program itself
            entry["pid"], entry["started"] = self._child_of(proc.pid)
        state["processes"].append(entry)
        self._save(state)
        return entry

    @staticmethod
    def _child_of(pid: int) -> tuple[int, int | None]:
        """The first child of ``pid`` once it exists (runuser's program); ``pid`` itself if it has none."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
            except OSError:
                children = []
            if children:
                child = int(children[0])
                return child, start_time(child)
            time.sleep(0.02)
        return pid, start_time(pid)

    def _start_etcd(self, state: dict[str, Any], programs: Programs, client: list[int], peer: list[int],
                    say: Callable[[str], None]) -> None:
        initial = ",".join(f"etcd{i + 1}=http://127.0.0.1:{peer[i]}" for i in range(MEMBERS))
        token = state["scope"]
        for i in range(MEMBERS):
            name = f"etcd{i + 1}"
            data = self.root / "etcd" / name
            data.mkdir(parents=True, mode=0o700)
            self._spawn(state, "etcd", name, [
                programs.etcd, "--name", name, "--data-dir", str(data),
                "--listen-client-urls", f"http://127.0.0.1:{client[i]}",
                "--advertise-client-urls", f"http://127.0.0.1:{client[i]}",
                "--listen-peer-urls", f"http://127.0.0.1:{peer[i]}",
                "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer[i]}",
                "--initial-cluster", initial, "--initial-cluster-token", token, "--initial-cluster-state", "new",
                "--logger", "zap", "--log-outputs", "stderr"], client[i], peer_port=peer[i])
        deadline = time.monotonic() + 30
        for port in client:
            while (http_json(f"http://127.0.0.1:{port}/health") or {}).get("health") != "true":
                self._check_started(state)
                if time.monotonic() > deadline:
                    raise ClusterError(f"etcd on port {port} is not healthy after 30 s: see {self.root}/logs")
                time.sleep(0.2)
        say(f"etcd: {MEMBERS} members healthy on ports {', '.join(map(str, client))}")

    def _check_started(self, state: dict[str, Any]) -> None:
        for proc in state["processes"]:
            if not alive(proc):
                tail = Path(proc["log"]).read_text(errors="replace")[-1500:] if Path(proc["log"]).exists() else ""
                raise ClusterError(f"{proc['name']} exited while starting; the end of {proc['log']}:\n{tail}")

    def patroni_config(self, state: dict[str, Any], index: int, pg_port: int, rest_port: int) -> str:
        """One member's Patroni YAML (JSON is YAML): synchronous mode strict, fail over on a killed primary."""
        name = f"pg{index + 1}"
        member_dir = self.root / "pg" / name
        passwords = state["passwords"]
        config = {
            "scope": state["scope"], "namespace": "/keyvault/", "name": name,
            "log": {"level": "INFO"},
            "restapi": {"listen": f"127.0.0.1:{rest_port}", "connect_address": f"127.0.0.1:{rest_port}"},
            "etcd3": {"hosts": state["etcd"]},
            "bootstrap": {
                "dcs": {
                    "ttl": TTL, "loop_wait": LOOP_WAIT, "retry_timeout": RETRY_TIMEOUT,
                    "maximum_lag_on_failover": 1048576,
                    "synchronous_mode": True, "synchronous_mode_strict": True, "synchronous_node_count": 1,
                    # a killed postmaster is failed over, not restarted in place (which takes longer)
                    "primary_start_timeout": 0,
                    "postgresql": {
                        "use_pg_rewind": True, "use_slots": True,
                        "parameters": {
                            "synchronous_commit": "on", "wal_level": "replica", "hot_standby": "on",
                            "max_wal_senders": 10, "max_replication_slots": 10, "wal_log_hints": "on",
                            "wal_retrieve_retry_interval": "500ms", "max_connections": 200,
                            "fsync": "on", "full_page_writes": "on",
                        },
                    },
                },
                "initdb": [{"encoding": "UTF8"}, {"auth": "scram-sha-256"}],
                "pg_hba": [
                    "local all all trust",
                    "host replication replicator 127.0.0.1/32 scram-sha-256",
                    "host all all 127.0.0.1/32 scram-sha-256",
                ],
            },
            "postgresql": {
                "listen": f"127.0.0.1:{pg_port}", "connect_address": f"127.0.0.1:{pg_port}",
                "data_dir": str(member_dir / "data"), "bin_dir": state["pg_bin"],
                "pgpass": str(member_dir / "pgpass"),
                "authentication": {
                    "superuser": {"username": "postgres", "password": passwords["postgres"]},
                    "replication": {"username": "replicator", "password": passwords["replicator"]},
                },
                "parameters": {"unix_socket_directories": str(member_dir)},
            },
            "tags": {"nofailover": False, "noloadbalance": False, "clonefrom": False, "nosync": False},
        }
        return json.dumps(config, indent=1)

    def _start_patroni(self, state: dict[str, Any], programs: Programs, pg_ports: list[int],
                       rest_ports: list[int], say: Callable[[str], None]) -> None:
        (self.root / "pg").mkdir(mode=0o711)
        for i in range(MEMBERS):
            name = f"pg{i + 1}"
            member_dir = self.root / "pg" / name
            member_dir.mkdir(mode=0o700)
            _chown_postgres(member_dir)
            config = member_dir / "patroni.yml"
            config.write_text(self.patroni_config(state, i, pg_ports[i], rest_ports[i]))
            os.chmod(config, 0o600)
            _chown_postgres(config)
            log = self.root / "logs" / f"{name}.log"
            log.touch()
            _chown_postgres(log)
            state["members"].append({"name": name, "pg_port": pg_ports[i], "rest_port": rest_ports[i],
                                     "data_dir": str(member_dir / "data")})
            self._spawn(state, "patroni", name, [programs.patroni, str(config)], rest_ports[i], as_postgres=True,
                        pg_port=pg_ports[i])
        say(f"patroni: {MEMBERS} members starting (PostgreSQL on ports {', '.join(map(str, pg_ports))})")

    def members(self, state: dict[str, Any]) -> list[dict[str, Any]]:
        """Patroni's view of the members (name, role, state, lag...), asked of any member that answers."""
        for member in state.get("members", []):
            doc = http_json(f"http://127.0.0.1:{member['rest_port']}/cluster", timeout=1.5)
            if isinstance(doc, dict) and isinstance(doc.get("members"), list):
                return list(doc["members"])
        return []

    def wait_for_sync(self, state: dict[str, Any], timeout: float = 120.0,
                      say: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
        """Wait until there is a running leader and a running sync standby; return the leader's member."""
        deadline = time.monotonic() + timeout
        while True:
            roles = {m.get("role"): m for m in self.members(state) if m.get("state") in ("running", "streaming")}
            if "leader" in roles and "sync_standby" in roles:
                say(f"patroni: leader {roles['leader']['name']}, sync standby {roles['sync_standby']['name']}")
                return roles["leader"]
            for proc in state["processes"]:
                if proc["kind"] in ("etcd", "patroni") and not alive(proc):
                    raise ClusterError(f"{proc['name']} exited: see {proc['log']}")
            if time.monotonic() > deadline:
                raise ClusterError(f"no leader with a synchronous standby after {timeout:.0f} s: "
                                   f"see the logs in {self.root}/logs")
            time.sleep(0.3)

    def wait_for_members(self, state: dict[str, Any], running: int = 3, timeout: float = 120.0) -> None:
        """Wait until a leader is up and ``running`` members in all (the leader counted) run or stream."""
        deadline = time.monotonic() + timeout
        while True:
            members = self.members(state)
            up = [m for m in members if m.get("state") in ("running", "streaming")]
            if any(m.get("role") == "leader" for m in up) and len(up) >= running:
                return
            if time.monotonic() > deadline:
                raise ClusterError(f"{len(up)} of {running} members running after {timeout:.0f} s: "
                                   f"see the logs in {self.root}/logs")
            time.sleep(0.3)

    def psql(self, state: dict[str, Any], port: int, sql: str, database: str = "postgres",
             timeout: float = 30.0) -> str:
        """Run ``sql`` as the superuser on the member at ``port`` with psql; its output."""
        env = dict(os.environ, PGPASSWORD=state["passwords"]["postgres"], PGCONNECT_TIMEOUT="3")
        done = subprocess.run([str(Path(state["pg_bin"]) / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                               "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-d", database, "-c", sql],
                              capture_output=True, text=True, timeout=timeout, env=env)
        if done.returncode != 0:
            raise ClusterError(f"psql on port {port} failed: {done.stderr.strip()}")
        return done.stdout.strip()

    def _create_database(self, state: dict[str, Any], leader: dict[str, Any]) -> None:
        port = next(m["pg_port"] for m in state["members"] if m["name"] == leader["name"])
        password = state["passwords"]["keyvault"]
        self.psql(state, port, f"CREATE ROLE keyvault LOGIN PASSWORD '{password}'")
        self.psql(state, port, "CREATE DATABASE keyvault OWNER keyvault")
        self.psql(state, port, "GRANT pg_monitor TO keyvault")  # replication state for `authority check`
        state["synchronous_standby_names"] = self.psql(state, port, "SHOW synchronous_standby_names")

    def _start_nodes(self, state: dict[str, Any], programs: Programs, ports: list[int], workers: int,
                     say: Callable[[str], None], timeout: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KEYVAULT_")}
        has_authority = subprocess.run([programs.keyvault, "authority", "--help"], capture_output=True,
                                       env=env).returncode == 0
        state["authority_command"] = has_authority
        if has_authority:  # one cluster engine key, every node may sequence the cluster log with it
            state["cluster_key"], state["cluster_pub"] = self._make_cluster_key(programs, env)
            self._save(state)
        token = None
        for i, port in enumerate(ports):
            name = f"node{i + 1}"
            store = self.root / "nodes" / name / "store"
            store.parent.mkdir(parents=True, mode=0o700)
            self._keyvault(programs, env, store, "init")
            if has_authority:
                self._keyvault(programs, env, store, "authority", "set", state["dsn"], "--cluster-key",
                               state["cluster_key"])
            if token is None or not has_authority:  # bound nodes share their tokens through the authority
                token = json.loads(self._keyvault(programs, env, store, "token", "create", "--name",
                                                  f"cluster-admin-{name}", "--scope", "admin", "--json"))["token"]
            node_env, witness = None, {}
            if has_authority:  # each node witnesses the cluster log: the sequencer submits to the others
                witness = self._make_witness(programs, env, state, name, store, port)
                node_env = {**os.environ, "KEYVAULT_WITNESS_IDENTITY": witness["witness_key"],
                            "KEYVAULT_WITNESS_LOGS": state["cluster_pub"]}
            entry = self._spawn(state, "node", name, [programs.keyvault, "--store", str(store), "serve", "--bind",
                                                      f"127.0.0.1:{port}", "--workers", str(workers)],
                                port, env=node_env, url=f"http://127.0.0.1:{port}", store=str(store))
            state["nodes"].append({"name": name, "url": entry["url"], "store": str(store), "admin_token": token,
                                   "bound": has_authority, **witness})
            self._save(state)
        deadline = time.monotonic() + timeout
        for node in state["nodes"]:  # serving, and holding the shared token (caught up from the authority)
            while not self._healthy(node["url"], node["admin_token"]):
                self._check_started(state)
                if time.monotonic() > deadline:
                    raise ClusterError(f"{node['name']} does not answer {node['url']}/healthz: see {self.root}/logs")
                time.sleep(0.2)
        say(f"keyvault: {len(ports)} node(s) serving: {', '.join(n['url'] for n in state['nodes'])}"
            + ("" if has_authority else " (this keyvault has no `authority` command: the nodes are not bound "
                                         "to the cluster and each keeps its own state)"))

    def _make_cluster_key(self, programs: Programs, env: dict[str, str]) -> tuple[str, str]:
        """The cluster engine key (DIR/cluster.key, 0600) and its public identity (DIR/cluster.pub, role engine:
        what `keyvault verify-bundle --engine` takes for bundles of the cluster log)."""
        secret, public = self.root / "cluster.key", self.root / "cluster.pub"
        for argv in (["supplier", "init", "--name", "cluster engine", "--out", str(secret)],
                     ["identity", "show", str(secret), "--public", "--role", "engine"]):
            done = subprocess.run([programs.keyvault, *argv], capture_output=True, text=True, env=env, timeout=120)
            if done.returncode != 0:
                raise ClusterError(f"`keyvault {' '.join(argv[:2])}` for the cluster engine key failed: "
                                   f"{done.stderr.strip()}")
        public.write_text(done.stdout)
        return str(secret), str(public)

    def _make_witness(self, programs: Programs, env: dict[str, str], state: dict[str, Any], name: str, store: Path,
                      port: int) -> dict[str, str]:
        """The node's witness identity (DIR/nodes/NAME/witness.key, 0600, its state beside it) and public file
        (witness.pub: what `verify-bundle --witness` takes), named to the cluster at the node's witness route."""
        secret, public = store.parent / "witness.key", store.parent / "witness.pub"
        who = f"{state['scope']}/{name}"
        for argv in (["witness", "init", who, "--out", str(secret)],
                     ["identity", "show", str(secret), "--public", "--role", "witness"]):
            done = subprocess.run([programs.keyvault, *argv], capture_output=True, text=True, env=env, timeout=120)
            if done.returncode != 0:
                raise ClusterError(f"`keyvault {' '.join(argv[:2])}` for {name}'s witness failed: {done.stderr.strip()}")
        public.write_text(done.stdout)
        url = f"http://127.0.0.1:{port}/v1/witness"
        self._keyvault(programs, env, store, "witness", "add", url, "--witness", str(public))
        return {"witness_key": str(secret), "witness_pub": str(public), "witness_url": url}

    @staticmethod
    def _healthy(url: str, token: str | None = None) -> bool:
        """Whether the node answers /healthz (and, given a token, accepts it on /v1/stats)."""
        path, headers = ("/v1/stats", {"Authorization": f"Bearer {token}"}) if token else ("/healthz", {})
        try:
            with urllib.request.urlopen(urllib.request.Request(url + path, headers=headers), timeout=5) as reply:
                return int(reply.status) == 200
        except (OSError, ValueError):
            return False

    @staticmethod
    def _keyvault(programs: Programs, env: dict[str, str], store: Path, *args: str) -> str:
        done = subprocess.run([programs.keyvault, "--store", str(store), *args], capture_output=True, text=True,
                              env=env, timeout=120)
        if done.returncode != 0:
            raise ClusterError(f"`keyvault {args[0]}` for {store} failed: {done.stderr.strip()}")
        return done.stdout

    # -- status ------------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Live roles from Patroni's REST API and which recorded pids are alive."""
        state = self.load()
        if state is None:
            raise ClusterError(f"no cluster in {self.root}: start one with `keyvault cluster local up --dir DIR`")
        members = {m.get("name"): m for m in self.members(state)}
        processes = []
        for proc in self.processes(state):
            row = {"kind": proc["kind"], "name": proc["name"], "pid": proc["pid"], "port": proc["port"],
                   "alive": alive(proc)}
            if proc["kind"] in ("patroni", "postgres"):
                live = members.get(proc["name"], {})
                row["role"] = live.get("role", "unknown")
                row["state"] = live.get("state", "unknown")
                if proc["kind"] == "patroni":
                    row["rest_port"], row["pg_port"] = proc["port"], proc.get("pg_port")
            elif proc["kind"] == "etcd":
                health = http_json(f"http://127.0.0.1:{proc['port']}/health", timeout=1) if row["alive"] else None
                row["role"] = "etcd member"
                row["state"] = "healthy" if (health or {}).get("health") == "true" else "unhealthy"
            else:
                row["role"] = "keyvault node"
                row["url"] = proc.get("url")
                row["state"] = "serving" if row["alive"] and self._healthy(str(proc.get("url"))) else "down"
            processes.append(row)
        leader = next((name for name, m in members.items() if m.get("role") == "leader"), None)
        sync = [name for name, m in members.items() if m.get("role") == "sync_standby"]
        return {
            "dir": state["dir"], "scope": state["scope"], "dsn": state.get("dsn"),
            "leader": leader, "sync_standby": sync,
            "synchronous_standby_names": state.get("synchronous_standby_names"),
            "nodes": [{"name": n["name"], "url": n["url"], "store": n["store"], "admin_token": n["admin_token"],
                       "bound_to_cluster": n["bound"], "witness_pub": n.get("witness_pub")}
                      for n in state.get("nodes", [])],
            "admin_token": state["nodes"][0]["admin_token"] if state.get("nodes") else None,
            "cluster_key": state.get("cluster_key"), "cluster_pub": state.get("cluster_pub"),
            "processes": processes,
            "running": any(p["alive"] for p in processes),
        }

    # -- down --------------------------------------------------------------------------------------

    def down(self, grace: float = 60.0) -> list[dict[str, Any]]:
        """Stop every recorded process (SIGTERM, SIGKILL after ``grace`` s) and wait for each; idempotent."""
        state = self.load()
        if state is None:
            return []
        stopped = []
        for proc in self.processes(state):
            if not alive(proc):
                continue
            signum = signal.SIGINT if proc["kind"] == "postgres" else signal.SIGTERM  # postgres: fast shutdown
            stop_process(proc, signum, grace)
            stopped.append({"kind": proc["kind"], "name": proc["name"], "pid": proc["pid"]})
        for child in list(_CHILDREN.values()):  # runuser exits once its program has
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()
        reap()
        return stopped


def stop_process(proc: dict[str, Any], signum: int = signal.SIGTERM, grace: float = 60.0) -> None:
    """Send ``signum`` to the recorded process, SIGKILL it after ``grace`` s, and wait until it is gone."""
    pid = int(proc["pid"])
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace
    while alive(proc):
        if time.monotonic() > deadline:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + 30
        reap()
        time.sleep(0.05)
    reap()


def reap() -> None:
    """Collect the exit status of every child this process started that has exited."""
    for pid, child in list(_CHILDREN.items()):
        if child.poll() is not None:
            del _CHILDREN[pid]


# -- faults and configuration, for the demo, the tests and the benchmark ----------------------------

def member_by_role(cluster: LocalCluster, state: dict[str, Any], role: str) -> dict[str, Any] | None:
    """The recorded member (name, ports, data_dir) that Patroni now reports in ``role``."""
    live = {m.get("name"): m.get("role") for m in cluster.members(state)}
    return next((m for m in state["members"] if live.get(m["name"]) == role), None)


def postmaster_pid(member: dict[str, Any]) -> int | None:
    """The pid of the member's running postmaster (from postmaster.pid)."""
    try:
        pid = int((Path(member["data_dir"]) / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if start_time(pid) is not None else None


def walreceiver_pid(cluster: LocalCluster, state: dict[str, Any], member: dict[str, Any]) -> int | None:
    """The pid of the standby's WAL receiver, asked of the standby itself."""
    out = cluster.psql(state, member["pg_port"], "SELECT pid FROM pg_stat_wal_receiver")
    return int(out) if out.strip().isdigit() else None


def set_synchronous(cluster: LocalCluster, state: dict[str, Any], on: bool, timeout: float = 60.0) -> None:
    """Turn Patroni's synchronous mode (strict) on or off and wait until the leader applies it."""
    body = json.dumps({"synchronous_mode": on, "synchronous_mode_strict": on}).encode()
    for member in state["members"]:
        request = urllib.request.Request(f"http://127.0.0.1:{member['rest_port']}/config", data=body,
                                         method="PATCH", headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=5):
                break
        except OSError:
            continue
    else:
        raise ClusterError("no Patroni member accepted the configuration change")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        leader = member_by_role(cluster, state, "leader")
        if leader is not None:
            names = cluster.psql(state, leader["pg_port"], "SHOW synchronous_standby_names")
            if bool(names) == on and (not on or member_by_role(cluster, state, "sync_standby") is not None):
                return
        time.sleep(0.3)
    raise ClusterError(f"synchronous mode {'on' if on else 'off'} not applied after {timeout:.0f} s")
