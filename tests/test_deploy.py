"""The deployment files (deploy/): the Dockerfile, the systemd units, and shell completion.

Docker cannot run here, so the Dockerfile is checked by reading it (multi-stage, a fixed non-root
user, no secret in ENV or ARG, volumes, HEALTHCHECK on a route the service serves) and its
command and HEALTHCHECK are run against a real ``keyvault serve`` with the image's environment.
The units are checked by ``systemd-analyze verify`` and ``systemd-analyze security --offline``
(exposure at most 2.0), by reading them (drain timeout, credentials, ports), and the service is
run in what the kernel applies of the unit's sandbox without systemd (MemoryDenyWriteExecute by
PR_SET_MDWE, SystemCallFilter by libseccomp). docs/deploy.md's nginx example passes `nginx -t` and
carries requests to a live service. Without systemd-analyze, or nginx and openssl, those tests are
skipped, unless KEYVAULT_REQUIRE_DEPLOY_LINT=1 (CI), which makes them fail.
"""

from __future__ import annotations

import ctypes
import errno
import http.client
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import tomllib
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_support import World
from service_support import KEYVAULT, free_port

from keyvault.service import server, workers
from keyvault.service.app import ROUTES
from keyvault.service.bodies import MAX_MANIFEST

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNITS = DEPLOY / "systemd"
# Read at import: the suite's autouse fixture clears every KEYVAULT_* variable before each test.
REQUIRE_LINT = os.environ.get("KEYVAULT_REQUIRE_DEPLOY_LINT", "").strip() not in ("", "0")
INSTALLED = "/opt/keyvault/bin/keyvault"  # where the units expect the venv's entry point
MAX_EXPOSURE = 2.0
SECRET_NAME = re.compile(r"TOKEN|SECRET|PASSW|PEPPER|PRIVATE|CREDENTIAL|(^|_)KEY($|_)", re.I)
SECRET_VALUE = re.compile(r"kvt_[A-Za-z0-9_-]{20,}|\b[0-9a-fA-F]{64}\b|BEGIN [A-Z ]*PRIVATE KEY")


# -- the Dockerfile -------------------------------------------------------------------------------


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per instruction: comments dropped, continuation lines joined."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in text.splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if pending and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        whole = pending + stripped
        pending = ""
        word, _, rest = whole.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return out


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each stage, FROM first."""
    found: list[list[tuple[str, str]]] = []
    for word, rest in instructions(text):
        if word == "FROM":
            found.append([])
        assert found, f"{word} before the first FROM"
        found[-1].append((word, rest))
    return found


def exec_form(rest: str) -> list[str]:
    """The JSON (exec) form of CMD, ENTRYPOINT or HEALTHCHECK CMD; a shell form fails the check."""
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


def env_pairs(rest: str) -> dict[str, str]:
    """ENV's NAME=value pairs (the only form used)."""
    pairs = {}
    for item in shlex.split(rest):
        name, sep, value = item.partition("=")
        assert sep, f"ENV {rest!r}: use the NAME=value form"
        pairs[name] = value
    return pairs


def dockerfile_problems(text: str) -> list[str]:
    """What is wrong with a Dockerfile by this project's rules (empty when nothing is)."""
    problems = []
    found = stages(text)
    if len(found) < 2:
        return ["not multi-stage: the build tools would ship in the image"]
    build, runtime = found[0], found[-1]
    build_run = " ".join(rest for word, rest in build if word == "RUN")
    if "build-essential" not in build_run or "pip wheel --no-cache-dir --no-deps" not in build_run \
            or "KEYVAULT_REQUIRE_EXTENSIONS=1" not in build_run:
        problems.append("the build stage must build the wheel with the compiled core required")
    runtime_run = " ".join(rest for word, rest in runtime if word == "RUN")
    if re.search(r"build-essential|\bgcc\b|\bcython\b", runtime_run, re.I):
        problems.append("the runtime stage installs build tools")
    if "from=build" not in runtime_run and not any(w == "COPY" and "--from=build" in r for w, r in runtime):
        problems.append("the runtime stage does not take the wheel from the build stage")
    if "[service]" not in runtime_run:
        problems.append("the runtime stage does not install the service extra")
    users = [i for i, (word, _) in enumerate(runtime) if word == "USER"]
    if not users:
        problems.append("no USER: the container would run as root")
    else:
        user = runtime[users[-1]][1].split(":")
        if not all(part.isdigit() for part in user) or int(user[0]) == 0 or (len(user) > 1 and int(user[1]) == 0):
            problems.append(f"USER {':'.join(user)}: use a fixed non-root uid:gid")
        if any(word == "RUN" for word, _ in runtime[users[-1]:]):
            problems.append("RUN after USER: keep the last instructions non-root and build-free")
    env: dict[str, str] = {}
    for stage in found:
        for word, rest in stage:
            if word == "ENV":
                env.update(env_pairs(rest))
            if word == "ARG" and SECRET_NAME.search(rest.partition("=")[0]):
                problems.append(f"ARG {rest}: build arguments stay in the image's history; no secrets")
    for name, value in env.items():
        if SECRET_VALUE.search(value):
            problems.append(f"ENV {name} holds a secret")
        if SECRET_NAME.search(name) and not (name.endswith("_FILE") and value.startswith("/")):
            problems.append(f"ENV {name}: pass secrets as files (NAME_FILE=/path), never as values")
    if any(SECRET_VALUE.search(rest) for stage in found for _, rest in stage):
        problems.append("an instruction holds a secret")
    volumes = [v for word, rest in runtime if word == "VOLUME" for v in exec_form(rest)]
    store, pepper = env.get("KEYVAULT_STORE", ""), env.get("KEYVAULT_PEPPER_FILE", "")
    store_volume = [v for v in volumes if store.startswith(v.rstrip("/") + "/")]
    pepper_volume = [v for v in volumes if pepper.startswith(v.rstrip("/") + "/")]
    if not store_volume or store_volume[0] != "/var/lib/keyvault":
        problems.append("KEYVAULT_STORE must be on the /var/lib/keyvault volume")
    if not pepper_volume or pepper_volume == store_volume:
        problems.append("KEYVAULT_PEPPER_FILE must be on a volume of its own (backed up apart from the store)")
    last = {word: rest for word, rest in runtime}
    if last.get("STOPSIGNAL") != "SIGTERM":
        problems.append("STOPSIGNAL SIGTERM is the signal the service drains on")
    if "ENTRYPOINT" not in last or exec_form(last["ENTRYPOINT"]) != ["keyvault"]:
        problems.append('ENTRYPOINT ["keyvault"]')
    command = exec_form(last.get("CMD", "[]"))
    bind = command[command.index("--bind") + 1] if "--bind" in command[:-1] else ""
    if command[:1] != ["serve"] or not bind.startswith("0.0.0.0:"):
        problems.append("CMD must be `serve --bind 0.0.0.0:PORT`")
    port = bind.rpartition(":")[2]
    if last.get("EXPOSE", "").split("/")[0] != port:
        problems.append(f"EXPOSE {last.get('EXPOSE')} is not the port served ({port})")
    health = last.get("HEALTHCHECK", "")
    urls = re.findall(r"http://127\.0\.0\.1:(\d+)(/[^'\" ]*)", health)
    if "CMD" not in health or not urls:
        problems.append("no HEALTHCHECK on the service's loopback address")
    elif urls[0][0] != port or urls[0][1] not in ROUTES or ROUTES[urls[0][1]].get("GET", (None, "x"))[1] is not None:
        problems.append(f"HEALTHCHECK asks {urls[0]}: not a tokenless GET route on port {port}")
    return problems


def test_the_dockerfile_follows_the_rules() -> None:
    assert dockerfile_problems((DEPLOY / "Dockerfile").read_text()) == []


@pytest.mark.parametrize("change, problem", [
    (lambda t: t.replace("FROM python:3.11-slim-bookworm AS runtime", "# one stage"), "not multi-stage"),
    (lambda t: t.replace("USER 10001:10001", "USER root"), "non-root"),
    (lambda t: t.replace("USER 10001:10001\n", ""), "no USER"),
    (lambda t: t.replace("USER 10001:10001\n", "USER 10001:10001\nRUN true\n"), "RUN after USER"),
    (lambda t: t.replace("PYTHONUNBUFFERED=1", "KEYVAULT_TOKEN=kvt_" + "a" * 43), "secret"),
    (lambda t: t.replace("PYTHONUNBUFFERED=1", "PEPPER=" + "ab" * 32), "secret"),
    (lambda t: t.replace("FROM python:3.11-slim-bookworm AS build", "FROM python:3.11-slim-bookworm AS build\n"
                         "ARG DEPLOY_TOKEN"), "ARG"),
    (lambda t: t.replace("KEYVAULT_PEPPER_FILE=/etc/keyvault/pepper", "KEYVAULT_PEPPER_FILE=/var/lib/keyvault/pepper"),
     "volume of its own"),
    (lambda t: t.replace("/healthz", "/v1/health"), "HEALTHCHECK"),
    (lambda t: t.replace("/healthz", "/v1/stats"), "tokenless"),
    (lambda t: t.replace("STOPSIGNAL SIGTERM", "STOPSIGNAL SIGKILL"), "STOPSIGNAL"),
    (lambda t: t.replace('"0.0.0.0:8080"', '"127.0.0.1:8080"'), "CMD"),
    (lambda t: t.replace("EXPOSE 8080", "EXPOSE 9090"), "EXPOSE"),
    (lambda t: t.replace('"$(ls /wheels/keyvault-*.whl)[service]"', '"$(ls /wheels/keyvault-*.whl)"'), "service extra"),
    (lambda t: t.replace("KEYVAULT_REQUIRE_EXTENSIONS=1 ", ""), "compiled core"),
])
def test_the_dockerfile_check_catches_each_broken_rule(change: Callable[[str], str], problem: str) -> None:
    """Each rule, broken on a copy of the real Dockerfile, is reported (so the check above can fail)."""
    text = (DEPLOY / "Dockerfile").read_text()
    broken = change(text)
    assert broken != text, "the change no longer applies to the Dockerfile: update this test"
    assert any(problem in p for p in dockerfile_problems(broken)), dockerfile_problems(broken)


def healthy(command: list[str]) -> bool:
    """Run a HEALTHCHECK command (its ``python`` is this interpreter); True on exit 0."""
    done = subprocess.run([sys.executable if command[0] == "python" else command[0], *command[1:]],
                          capture_output=True, timeout=30)
    return done.returncode == 0


def wait_healthy(proc: subprocess.Popen[bytes], command: list[str], log: Path) -> None:
    """Wait until the HEALTHCHECK command passes, failing if the service exits first."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the service exited: {log.read_text()[-2000:]}"
        if healthy(command):
            return
        time.sleep(0.2)
    raise AssertionError(f"the service never became healthy: {log.read_text()[-2000:]}")


def stop(proc: subprocess.Popen[bytes]) -> int:
    """SIGTERM (as `docker stop` and systemd send it) and the exit code; SIGKILL if it hangs."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def test_the_images_command_and_healthcheck_work_with_the_images_environment(tmp_path: Path) -> None:
    """The image's ENV, re-rooted here: init, the refused bind without a token, the token step, serve, health."""
    runtime = stages((DEPLOY / "Dockerfile").read_text())[-1]
    last = {word: rest for word, rest in runtime}
    env = {k: v for word, rest in runtime if word == "ENV" for k, v in env_pairs(rest).items()}
    port = free_port()
    command = [a.replace(":8080", f":{port}") for a in exec_form(last["CMD"])]
    health = [a.replace(":8080", f":{port}") for a in exec_form(last["HEALTHCHECK"].partition("CMD")[2].strip())]
    assert health != exec_form(last["HEALTHCHECK"].partition("CMD")[2].strip()) and f"0.0.0.0:{port}" in command
    for volume in ("/var/lib/keyvault", "/etc/keyvault"):
        (tmp_path / volume.strip("/")).mkdir(parents=True, mode=0o700)
    image_env = {**os.environ, "KEYVAULT_STORE": str(tmp_path / env["KEYVAULT_STORE"].strip("/")),
                 "KEYVAULT_PEPPER_FILE": str(tmp_path / env["KEYVAULT_PEPPER_FILE"].strip("/")),
                 "KEYVAULT_CONFIG": str(DEPLOY / "keyvault.toml")}  # what the image COPYs there
    copied = [rest.split() for word, rest in runtime if word == "COPY" and "keyvault.toml" in rest]
    assert copied == [["deploy/keyvault.toml", env["KEYVAULT_CONFIG"]]]

    def keyvault(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([KEYVAULT, *args], env=image_env, capture_output=True, text=True, timeout=120)

    assert keyvault("init").returncode == 0
    assert Path(image_env["KEYVAULT_PEPPER_FILE"]).stat().st_mode & 0o077 == 0
    assert not (Path(image_env["KEYVAULT_STORE"]) / "pepper").exists(), "the pepper went into the store volume"
    refused = keyvault(*command)
    assert refused.returncode == 1 and "token create" in refused.stderr
    assert keyvault("token", "create", "--name", "shop", "--scope", "redeem").returncode == 0
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([KEYVAULT, *command], env=image_env, stdout=out, stderr=out, start_new_session=True)
    try:
        wait_healthy(proc, health, log)
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()[-2000:]
    assert not healthy(health), "the HEALTHCHECK passes with nothing listening"


# -- the systemd units ----------------------------------------------------------------------------


def systemd_analyze() -> str:
    """The systemd-analyze binary, or a skip (a failure under KEYVAULT_REQUIRE_DEPLOY_LINT=1)."""
    found = shutil.which("systemd-analyze")
    if found is None:
        reason = "systemd-analyze is not installed (apt-get install systemd), so the units are not linted"
        if REQUIRE_LINT:
            pytest.fail(reason + ", and KEYVAULT_REQUIRE_DEPLOY_LINT=1 requires it")
        pytest.skip(reason)
    return found


def unit_settings(text: str) -> dict[str, list[str]]:
    """Each Key's values, in order (sections merged; comments dropped)."""
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key.strip(), []).append(value.strip())
    return settings


def for_analysis(unit: Path, into: Path, text: str | None = None) -> Path:
    """A copy of ``unit`` in ``into`` whose ExecStart runs the installed entry point (verify wants it to exist).

    Only that path changes: every other line is checked as shipped. A template is named as its
    instance ``node1``.
    """
    into.mkdir(parents=True, exist_ok=True)
    source = unit.read_text() if text is None else text
    assert INSTALLED in source
    copy = into / unit.name
    copy.write_text(source.replace(INSTALLED, KEYVAULT))
    return into / unit.name.replace("@.", "@node1.")


def verify_problems(analyze: str, unit: Path) -> list[str]:
    """What ``systemd-analyze verify`` says about ``unit``: every line it prints is a problem."""
    done = subprocess.run([analyze, "verify", unit.name], cwd=unit.parent, capture_output=True, text=True,
                          timeout=60)
    lines = [line for line in (done.stdout + done.stderr).splitlines() if line.strip()]
    return lines + ([f"exit code {done.returncode}"] if done.returncode else [])


def exposure(analyze: str, unit: Path) -> float:
    """``systemd-analyze security --offline=yes``'s overall exposure level for ``unit`` (0 best, 10 worst)."""
    done = subprocess.run([analyze, "security", "--offline=yes", "--no-pager", unit.name], cwd=unit.parent,
                          capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: (\d+(?:\.\d+)?)", done.stdout)
    assert found, f"no exposure level in systemd-analyze's output: {done.stdout[-500:]} {done.stderr[-500:]}"
    return float(found.group(1))


UNIT_FILES = ["keyvault.service", "keyvault@.service", "keyvault-node@.service"]


@pytest.mark.parametrize("name", UNIT_FILES)
def test_the_unit_passes_systemd_analyze_verify(name: str, tmp_path: Path) -> None:
    analyze = systemd_analyze()
    assert verify_problems(analyze, for_analysis(UNITS / name, tmp_path)) == []


def test_verify_reports_a_misspelt_setting(tmp_path: Path) -> None:
    """systemd only warns about an unknown or bad setting (exit 0): the check above counts any output."""
    analyze = systemd_analyze()
    text = (UNITS / "keyvault.service").read_text().replace("ProtectHome=yes", "ProtectHome=yes\nProtectHomes=yes")
    problems = verify_problems(analyze, for_analysis(UNITS / "keyvault.service", tmp_path, text))
    assert any("ProtectHomes" in line for line in problems), problems


@pytest.mark.parametrize("name", UNIT_FILES)
def test_the_units_exposure_is_at_most_2(name: str, tmp_path: Path) -> None:
    analyze = systemd_analyze()
    score = exposure(analyze, for_analysis(UNITS / name, tmp_path))
    assert score <= MAX_EXPOSURE, f"{name}: exposure {score} (systemd-analyze security) is above {MAX_EXPOSURE}"


def test_the_exposure_check_fails_an_unhardened_unit(tmp_path: Path) -> None:
    analyze = systemd_analyze()
    text = "\n".join(line for line in (UNITS / "keyvault.service").read_text().splitlines()
                     if not line.startswith(("Protect", "Restrict", "SystemCall", "Private", "Capability")))
    assert exposure(analyze, for_analysis(UNITS / "keyvault.service", tmp_path, text)) > MAX_EXPOSURE


@pytest.mark.parametrize("name", UNIT_FILES)
def test_the_unit_runs_the_service_as_documented(name: str) -> None:
    """What systemd-analyze does not judge: the drain time, the user, the store, the pepper, the command."""
    s = unit_settings((UNITS / name).read_text())
    one = {key: values[-1] for key, values in s.items()}
    assert one["Type"] == "exec" and one["Restart"] == "on-failure"
    assert one["KillSignal"] == "SIGTERM" and one["KillMode"] == "mixed"  # the supervisor alone orders the drain
    # Workers drain within GRACE_SECONDS and are killed KILL_AFTER_SECONDS later; then the commit process
    # gets GRACE_SECONDS: systemd must not SIGKILL the tree before that.
    worst = server.GRACE_SECONDS + workers.KILL_AFTER_SECONDS + server.GRACE_SECONDS
    assert int(one["TimeoutStopSec"]) > worst
    assert one["User"] not in ("", "root", "0") and "DynamicUser" not in one
    assert one["CapabilityBoundingSet"] == "" and one["AmbientCapabilities"] == "" and one["UMask"] == "0077"
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp", "PrivateDevices", "MemoryDenyWriteExecute",
                "LockPersonality", "RestrictNamespaces", "ProtectClock", "ProtectHostname",
                "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups"):
        assert one[key] == "yes", key
    assert one["ProtectSystem"] == "strict" and one["ProtectProc"] == "invisible" and one["ProcSubset"] == "pid"
    assert set(one["RestrictAddressFamilies"].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    assert s["SystemCallFilter"][0] == "@system-service" and one["SystemCallArchitectures"] == "native"
    argv = shlex.split(one["ExecStart"])
    assert argv[0] == INSTALLED and argv[1] == "--store" and argv[3] == "serve"
    state = "/var/lib/" + one["StateDirectory"]
    assert argv[2] == state + "/store", "the store must be in the StateDirectory (the only writable place)"
    credential, _, source = one["LoadCredential"].partition(":")
    assert f"KEYVAULT_PEPPER_FILE=%d/{credential}" in s["Environment"]
    assert source.startswith("/etc/keyvault/") and not source.startswith(state)
    if "@" in name:  # the template: one node per instance
        bind = argv[argv.index("--bind") + 1]
        workers_arg = argv[argv.index("--workers") + 1]
        assert one["EnvironmentFile"] == "/etc/keyvault/%i.env" and "%i" in state and "%i" in source
        assert (bind, workers_arg) == ("${KEYVAULT_BIND}", "${KEYVAULT_WORKERS}")
    else:  # the settings are the configuration file's, handed over as a credential like the pepper
        assert argv[4:] == [] and "KEYVAULT_CONFIG=%d/keyvault.toml" in s["Environment"]
        assert "keyvault.toml:/etc/keyvault/keyvault.toml" in s["LoadCredential"]
        settings = tomllib.loads((DEPLOY / "keyvault.toml").read_text())["serve"]
        host, _, port = settings["bind"].rpartition(":")
        assert host == "127.0.0.1" and 1024 <= int(port) < 65536  # no capability to bind below 1024
        assert isinstance(settings["workers"], int)


PR_SET_MDWE, PR_GET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN = 65, 66, 1
SCMP_ACT_ALLOW = 0x7FFF0000


def syscall_group(analyze: str, name: str, seen: set[str] | None = None) -> set[str]:
    """The system calls of ``name`` (a call or an @group, nested groups expanded) as systemd defines them."""
    if not name.startswith("@"):
        return {name}
    seen = set() if seen is None else seen
    if name in seen:
        return set()
    seen.add(name)
    done = subprocess.run([analyze, "--no-pager", "syscall-filter", name], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    calls: set[str] = set()
    for line in done.stdout.splitlines()[1:]:
        item = line.strip()
        if item and not item.startswith("#"):
            calls |= syscall_group(analyze, item, seen)
    return calls


def unit_syscalls(analyze: str, settings: dict[str, list[str]]) -> set[str]:
    """The system calls a unit's SystemCallFilter= lines allow (an allow-list, then ~ removals)."""
    allowed: set[str] = set()
    denied: set[str] = set()
    for value in settings["SystemCallFilter"]:
        target = denied if value.startswith("~") else allowed
        for item in value.lstrip("~").split():
            target |= syscall_group(analyze, item)
    assert allowed, "the unit has no allow-list of system calls"
    return allowed - denied


def sandbox(analyze: str, settings: dict[str, list[str]]) -> Callable[[], None]:
    """A preexec function applying what the kernel can of the unit without systemd.

    UMask=, MemoryDenyWriteExecute=yes (PR_SET_MDWE) and SystemCallFilter= with
    SystemCallErrorNumber= (a libseccomp filter built from systemd's own groups; libseccomp sets
    NoNewPrivileges too). A skip when the kernel or libseccomp cannot.
    """
    one = {key: values[-1] for key, values in settings.items()}
    assert one["MemoryDenyWriteExecute"] == "yes" and one["SystemCallErrorNumber"] == "EPERM"
    ask = f"import ctypes; print(ctypes.CDLL(None).prctl({PR_GET_MDWE}, 0, 0, 0, 0))"
    probe = subprocess.run([sys.executable, "-c", ask], capture_output=True, text=True, timeout=60)
    if probe.stdout.strip() != "0":  # -1 (EINVAL) before Linux 6.3
        pytest.skip("this kernel has no PR_SET_MDWE (Linux 6.3+): MemoryDenyWriteExecute cannot be tried here")
    try:
        seccomp = ctypes.CDLL("libseccomp.so.2")
    except OSError:
        pytest.skip("libseccomp is not installed (apt-get install libseccomp2): SystemCallFilter= cannot be tried here")
    seccomp.seccomp_init.restype = ctypes.c_void_p
    seccomp.seccomp_init.argtypes = [ctypes.c_uint32]
    seccomp.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    seccomp.seccomp_rule_add.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint]
    seccomp.seccomp_load.argtypes = [ctypes.c_void_p]
    filter_ = seccomp.seccomp_init(0x00050000 | errno.EPERM)  # SCMP_ACT_ERRNO(EPERM) for everything else
    assert filter_
    numbers = [seccomp.seccomp_syscall_resolve_name(name.encode()) for name in sorted(unit_syscalls(analyze, settings))]
    for number in numbers:
        if number >= 0:  # a call this architecture does not have resolves to -1
            assert seccomp.seccomp_rule_add(filter_, SCMP_ACT_ALLOW, number, 0) == 0
    umask = int(one["UMask"], 8)

    def apply() -> None:
        os.umask(umask)
        if ctypes.CDLL(None).prctl(PR_SET_MDWE, PR_MDWE_REFUSE_EXEC_GAIN, 0, 0, 0) != 0:
            os._exit(97)
        if seccomp.seccomp_load(filter_) != 0:
            os._exit(98)

    return apply


@pytest.mark.parametrize("attempt, refusal", [
    ("import mmap; mmap.mmap(-1, 4096, prot=7)", "Permission denied"),  # writable and executable memory
    ("import os; os.nice(1)", "Operation not permitted"),  # setpriority: @resources, removed by the unit
    ("import os; os.sched_setaffinity(0, {0})", "Operation not permitted"),  # @resources too
])
def test_the_sandbox_refuses_what_the_unit_denies(attempt: str, refusal: str) -> None:
    """The control for the test below: each mechanism really bites in the sandbox it runs in."""
    apply = sandbox(systemd_analyze(), unit_settings((UNITS / "keyvault.service").read_text()))
    allowed = subprocess.run([sys.executable, "-c", attempt], capture_output=True, text=True, timeout=60)
    assert allowed.returncode == 0, allowed.stderr
    denied = subprocess.run([sys.executable, "-c", attempt], preexec_fn=apply, capture_output=True, text=True,
                            timeout=60)
    assert denied.returncode != 0 and refusal in denied.stderr, denied.stderr


def test_the_service_runs_in_the_units_sandbox(world: World, tmp_path: Path) -> None:
    """The unit's command, under its MemoryDenyWriteExecute=, SystemCallFilter= and UMask=, as the kernel applies them.

    The service (uvloop, httptools, msgspec, lmdb, the compiled core, PyNaCl; the workers and the
    commit process inherit the sandbox) starts, verifies, redeems once, refuses a second redeem,
    and drains on SIGTERM with exit 0. The pepper is a 0400 file outside the store, as
    LoadCredential= hands it over.
    """
    settings = unit_settings((UNITS / "keyvault.service").read_text())
    apply = sandbox(systemd_analyze(), settings)
    store = world.platform
    credentials = tmp_path / "credentials"
    credentials.mkdir(mode=0o700)
    pepper = credentials / "pepper"
    (store / "pepper").rename(pepper)
    pepper.chmod(0o400)
    credentials.chmod(0o500)
    env = {**os.environ, "KEYVAULT_PEPPER_FILE": str(pepper)}
    token = subprocess.run([KEYVAULT, "--store", str(store), "token", "create", "--name", "shop", "--scope", "redeem",
                            "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert token.returncode == 0, token.stderr
    secret = json.loads(token.stdout)["token"]
    port = free_port()
    argv = shlex.split(settings["ExecStart"][-1])
    argv = [KEYVAULT, "--store", str(store), *argv[3:], "--bind", f"127.0.0.1:{port}"]  # the flag beats the file
    env["KEYVAULT_CONFIG"] = str(DEPLOY / "keyvault.toml")  # the credential's source, as shipped
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, env=env, stdout=out, stderr=out, preexec_fn=apply,
                                start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def post(path: str, body: dict[str, object]) -> dict[str, object]:
        request = urllib.request.Request(base + path, json.dumps(body).encode(), method="POST", headers={
            "Authorization": f"Bearer {secret}", "Content-Type": "application/json"})
        with opener.open(request, timeout=30) as answer:
            return json.loads(answer.read())

    try:
        wait_healthy(proc, ["python", "-c", f"import urllib.request as u; u.build_opener(u.ProxyHandler({{}}))"
                            f".open('{base}/healthz', timeout=4)"], log)
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert len(children) >= 3  # the workers and the commit process, in the same sandbox
        for pid in [proc.pid, *children]:
            status = Path(f"/proc/{pid}/status").read_text()
            assert "\nSeccomp:\t2\n" in status and "\nNoNewPrivs:\t1\n" in status, (pid, status)
        key = world.keys[0]
        assert post("/v1/verify", {"keys": [key, world.keys[1]]})["results"][0]["status"] == "valid"
        assert post("/v1/redeem", {"key": key, "order_id": "SO-1"})["status"] == "accepted"
        assert post("/v1/redeem", {"key": key, "order_id": "SO-2"})["status"] == "redeemed"
    finally:
        code = stop(proc)
    assert code == 0, log.read_text()[-3000:]
    assert "Traceback" not in log.read_text()


def test_keyvault_admin_runs_the_command_as_the_service_user_with_a_private_pepper_copy() -> None:
    """deploy/systemd/keyvault-admin, with a stand-in for keyvault that reports what it was given."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("keyvault-admin needs root and setpriv (util-linux)")
    try:
        import pwd
        user = pwd.getpwnam("nobody")
    except KeyError:
        pytest.skip("no `nobody` user to run the command as")
    base = Path(tempfile.mkdtemp(prefix="keyvault-admin-test-"))  # not under pytest's 0700 directories
    try:
        base.chmod(0o755)
        store, secrets_dir, runtime = base / "store", base / "etc", base / "run"
        store.mkdir()
        os.chown(store, user.pw_uid, user.pw_gid)
        secrets_dir.mkdir(mode=0o700)
        runtime.mkdir(mode=0o755)
        pepper = secrets_dir / "pepper"
        pepper.write_text("ab" * 32 + "\n")
        pepper.chmod(0o600)
        stand_in = base / "keyvault"
        stand_in.write_text('#!/bin/sh\nout="$2/out"\nid -u > "$out"\nprintf "%s\\n" "$@" >> "$out"\n'
                            'stat -c "%a %u" "$4" >> "$out"\ncat "$4" >> "$out"\nexit 3\n')
        stand_in.chmod(0o755)
        done = subprocess.run([str(UNITS / "keyvault-admin"), "token", "create", "--name", "two words"],
                              env={**os.environ, "KEYVAULT_USER": "nobody", "KEYVAULT_BIN": str(stand_in),
                                   "KEYVAULT_STORE": str(store), "KEYVAULT_PEPPER_FILE": str(pepper),
                                   "KEYVAULT_ADMIN_RUNTIME": str(runtime)},
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 3, done.stderr  # the command's own exit code
        lines = (store / "out").read_text().splitlines()
        assert (store / "out").stat().st_uid == user.pw_uid and lines[0] == str(user.pw_uid)
        assert lines[1:4] == ["--store", str(store), "--pepper-file"] and lines[4].startswith(str(runtime))
        assert lines[5:9] == ["token", "create", "--name", "two words"]
        assert lines[9:] == [f"400 {user.pw_uid}", "ab" * 32]  # a 0400 copy the user owns
        assert list(runtime.iterdir()) == [], "the private copy of the pepper was left behind"
        assert pepper.stat().st_mode & 0o777 == 0o600 and pepper.stat().st_uid == 0
    finally:
        shutil.rmtree(base)


# -- shell completion -----------------------------------------------------------------------------


def completion(shell_mode: str, words: str = "", cword: int = 0, **env: str) -> subprocess.CompletedProcess[str]:
    """Run click's completion protocol on the installed entry point."""
    return subprocess.run([KEYVAULT], env={**os.environ, **env, "_KEYVAULT_COMPLETE": shell_mode,
                                           "COMP_WORDS": words, "COMP_CWORD": str(cword)},
                          capture_output=True, text=True, timeout=60)


def test_bash_completion_source_defines_the_completion_function() -> None:
    done = completion("bash_source")
    assert done.returncode == 0, done.stderr
    assert "_keyvault_completion()" in done.stdout
    assert re.search(r"complete .*-F _keyvault_completion keyvault", done.stdout)


@pytest.mark.parametrize("shell, marker", [("zsh", "#compdef keyvault"),
                                           ("fish", "complete --no-files --command keyvault")])
def test_zsh_and_fish_completion_sources(shell: str, marker: str) -> None:
    done = completion(f"{shell}_source")
    assert done.returncode == 0 and marker in done.stdout, done.stdout[:500]


@pytest.mark.parametrize("line, offered, not_offered", [
    ("keyvault bla", {"blacklist"}, {"batch", "check"}),
    ("keyvault blacklist ", {"add", "lift"}, {"serve"}),
    ("keyvault serve --w", {"--workers"}, {"--bind"}),
    ("keyvault token create --scope ", {"verify", "redeem", "admin"}, set()),
])
def test_bash_completes_through_the_generated_function(line: str, offered: set[str], not_offered: set[str]) -> None:
    """The generated bash function itself, run by bash, as a user's TAB runs it."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("bash is not installed")
    words = line.split() + ([""] if line.endswith(" ") else [])
    script = (f'source <(_KEYVAULT_COMPLETE=bash_source {shlex.quote(KEYVAULT)}) || exit 9\n'
              f'COMP_WORDS=({" ".join(shlex.quote(w) for w in words)}); COMP_CWORD={len(words) - 1}\n'
              f'_keyvault_completion {shlex.quote(KEYVAULT)}\nprintf "%s\\n" "${{COMPREPLY[@]}}"\n')
    done = subprocess.run([bash, "--norc", "--noprofile", "-c", script], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "PATH": f"{Path(KEYVAULT).parent}:{os.environ.get('PATH', '')}"})
    assert done.returncode == 0, done.stderr
    got = set(done.stdout.split())
    assert offered <= got and not (not_offered & got), got


def test_completion_opens_no_store(tmp_path: Path) -> None:
    """Completing reads nothing and creates nothing: the store named on the line is left alone."""
    store = tmp_path / "nowhere"
    done = completion("bash_complete", f"keyvault --store {store} st", 3, KEYVAULT_STORE=str(tmp_path / "also"))
    assert done.returncode == 0 and "plain,stats" in done.stdout.split()
    assert not store.exists() and not (tmp_path / "also").exists()


def nginx_example(tmp_path: Path, listen: int, upstream: int) -> tuple[str, Path, Path]:
    """docs/deploy.md's nginx example as a whole nginx.conf under ``tmp_path``: (nginx, conf, certificate).

    Only the certificate paths, the listening address and the service's port change.
    """
    nginx, openssl = shutil.which("nginx") or "/usr/sbin/nginx", shutil.which("openssl")
    if not Path(nginx).exists() or openssl is None:
        reason = "nginx or openssl is not installed (apt-get install nginx-light openssl): the example is unchecked"
        if REQUIRE_LINT:
            pytest.fail(reason + ", and KEYVAULT_REQUIRE_DEPLOY_LINT=1 requires it")
        pytest.skip(reason)
    blocks = re.findall(r"```nginx\n(.*?)```", (ROOT / "docs" / "deploy.md").read_text(), re.S)
    assert len(blocks) == 1
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    made = subprocess.run([openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                           "-nodes", "-subj", "/CN=kv.example.net", "-days", "1", "-keyout", str(key),
                           "-out", str(cert)],
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    site = re.sub(r"ssl_certificate\s+\S+;", f"ssl_certificate {cert};", blocks[0])
    site = re.sub(r"ssl_certificate_key\s+\S+;", f"ssl_certificate_key {key};", site)
    site = site.replace("listen 443 ssl;", f"listen 127.0.0.1:{listen} ssl;")
    site = site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{upstream};")
    assert site.count(str(tmp_path)) == 2 and f":{upstream};" in site and f":{listen} " in site, \
        "the example's certificate, listen or upstream lines changed: update this test"
    conf = tmp_path / "nginx.conf"
    user = "user root root;\n" if os.geteuid() == 0 else ""  # workers must reach the 0700 test directory
    conf.write_text(f"{user}pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\nevents {{}}\n"
                    f"http {{\naccess_log off;\nclient_body_temp_path {tmp_path}/body;\n"
                    f"proxy_temp_path {tmp_path}/proxy;\n{site}\n}}\n")
    return nginx, conf, cert


def test_the_nginx_example_is_valid_nginx(tmp_path: Path) -> None:
    """docs/deploy.md's nginx example, as written, passes `nginx -t` (and a broken copy does not)."""
    nginx, conf, _ = nginx_example(tmp_path, free_port(), 8080)
    done = subprocess.run([nginx, "-t", "-q", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    conf.write_text(conf.read_text().replace("proxy_request_buffering off;", "proxy_request_buffering of;"))
    assert subprocess.run([nginx, "-t", "-q", "-p", str(tmp_path), "-c", str(conf)], capture_output=True,
                          timeout=60).returncode != 0, "nginx -t accepted a broken configuration"


def test_the_service_answers_through_the_nginx_example(world: World, tmp_path: Path) -> None:
    """HTTPS through the example to a live service: health, the token header, /metrics hidden, and the
    service's own 413 problem document for a JSON body over 4 MiB (nginx lets it through to the service)."""
    env = {**os.environ}
    token = subprocess.run([KEYVAULT, "--store", str(world.platform), "token", "create", "--name", "shop", "--scope",
                            "verify", "--json"], env=env, capture_output=True, text=True, timeout=120)
    assert token.returncode == 0, token.stderr
    secret = json.loads(token.stdout)["token"]
    upstream, listen = free_port(), free_port()
    nginx, conf, cert = nginx_example(tmp_path, listen, upstream)
    log = tmp_path / "serve.log"
    with open(log, "wb") as out:
        service = subprocess.Popen([KEYVAULT, "--store", str(world.platform), "serve", "--bind",
                                    f"127.0.0.1:{upstream}", "--workers", "1"], stdout=out, stderr=out,
                                   start_new_session=True)
    proxy = None
    try:
        wait_healthy(service, ["python", "-c", "import urllib.request as u; u.build_opener(u.ProxyHandler({}))"
                               f".open('http://127.0.0.1:{upstream}/healthz', timeout=4)"], log)
        proxy = subprocess.Popen([nginx, "-p", str(tmp_path), "-c", str(conf), "-g", "daemon off;"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        context = ssl.create_default_context(cafile=str(cert))
        context.check_hostname = False  # the certificate is for kv.example.net; the chain is still verified

        def call(method: str, path: str, body: bytes | None = None) -> tuple[int, dict[str, str], bytes]:
            deadline = time.monotonic() + 30
            while True:
                connection = http.client.HTTPSConnection("127.0.0.1", listen, context=context, timeout=60)
                try:
                    connection.request(method, path, body, {"Authorization": f"Bearer {secret}",
                                                            "Content-Type": "application/json"})
                    answer = connection.getresponse()
                    return answer.status, dict(answer.getheaders()), answer.read()
                except ConnectionRefusedError:
                    assert proxy is not None and proxy.poll() is None, (tmp_path / "error.log").read_text()
                    assert time.monotonic() < deadline, "nginx did not start listening"
                    time.sleep(0.1)
                finally:
                    connection.close()

        assert call("GET", "/healthz")[0] == 200
        assert call("GET", "/metrics")[0] == 403
        status, _, body = call("POST", "/v1/verify", json.dumps({"keys": world.keys[:2]}).encode())
        assert status == 200 and [r["status"] for r in json.loads(body)["results"]] == ["valid", "valid"]
        status, headers, body = call("POST", "/v1/verify", b'{"keys": ["' + b"A" * (5 << 20) + b'"]}')
        assert status == 413 and headers.get("Content-Type", "").startswith("application/problem+json"), body[:300]
        assert json.loads(body)["type"] == "urn:keyvault:problem:body-too-large"
    finally:
        if proxy is not None:
            proxy.send_signal(signal.SIGQUIT)  # nginx's graceful stop
            try:
                proxy.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(proxy.pid, signal.SIGKILL)
                proxy.wait()
        code = stop(service)
    assert code == 0, log.read_text()[-2000:]


def test_the_proxy_example_matches_the_services_limits() -> None:
    """docs/deploy.md's nginx example admits the largest manifest the service takes, and no more than 2x it."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    sizes = re.findall(r"client_max_body_size\s+(\d+)([kmg]);", text)
    assert sizes, "no client_max_body_size in docs/deploy.md"
    factor = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
    for number, unit in sizes:
        assert MAX_MANIFEST <= int(number) * factor[unit] <= 2 * MAX_MANIFEST


# -- the example configuration ------------------------------------------------------------------------


def test_the_example_configuration_sets_every_key_to_its_default() -> None:
    """deploy/keyvault.toml documents every key, each with the value serve would use without it."""
    from click.testing import CliRunner

    from keyvault.cli.config import SERVE_KEYS
    from keyvault.cli.main import cli

    doc = tomllib.loads((DEPLOY / "keyvault.toml").read_text())
    assert set(doc) == {"store", "serve"} and set(doc["serve"]) == set(SERVE_KEYS)
    text = (DEPLOY / "keyvault.toml").read_text()
    assert "# pepper_file = " in text  # documented, left to the unit's credential and the image's volume
    shown = CliRunner().invoke(cli, ["config", "show", "--config", str(DEPLOY / "keyvault.toml"), "--json"])
    defaults = CliRunner().invoke(cli, ["config", "show", "--json"])
    assert shown.exit_code == defaults.exit_code == 0, shown.output + defaults.output
    from_file = json.loads(shown.output)["settings"]
    default = json.loads(defaults.output)["settings"]
    for key in SERVE_KEYS:
        assert from_file[f"serve.{key}"]["source"] == "file"
        assert from_file[f"serve.{key}"]["value"] == default[f"serve.{key}"]["value"], key
