"""Fabric permissions for servers that drop privileges: FASTIVC_FABRIC_MODE
and FASTIVC_FABRIC_GROUP (`fastivc run --fabric-mode/--fabric-group`) give a
fabric the library creates a mode and a group, so that a process running as
another user of that group is accelerated against it."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import stat
import subprocess
import sys

import pytest

from fastivc.run import build_env

# One process, two ends: a connection to its own listener on loopback.
SELF_CONNECT = r"""
import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); s.listen()
c = socket.create_connection(s.getsockname()); a, _ = s.accept()
c.sendall(b"ping"); assert a.recv(4) == b"ping"
a.sendall(b"pong"); assert c.recv(4) == b"pong"
c.close(); a.close(); print("ok")
"""
# The system python: readable and runnable by any user, unlike a checkout's venv.
PY = "/usr/bin/python3"


def _as_daemon(argv: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["setpriv", "--reuid", "daemon", "--regid", "daemon", "--clear-groups",
                           *argv], env=env, capture_output=True, text=True, timeout=60)


@pytest.fixture
def daemon_user():
    if os.geteuid() != 0:
        pytest.skip("changing user needs root")
    if not shutil.which("setpriv"):
        pytest.fail("setpriv is missing (util-linux)")
    try:
        return pwd.getpwnam("daemon").pw_uid, grp.getgrnam("daemon").gr_gid
    except KeyError:
        pytest.skip("no user and group `daemon` on this system")


def test_group_member_is_accelerated_against_a_root_created_0660_fabric(shm_path, daemon_user):
    _, gid = daemon_user
    env = build_env(os.environ, fabric=shm_path, log="debug", fabric_mode="0660",
                    fabric_group="daemon")
    r = subprocess.run([PY, "-c", SELF_CONNECT], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    st = os.stat(shm_path)
    assert stat.S_IMODE(st.st_mode) == 0o660 and st.st_gid == gid and st.st_uid == 0

    env = build_env(os.environ, fabric=shm_path, log="debug")
    r = _as_daemon([PY, "-c", SELF_CONNECT], env)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert "adopted offer" in r.stderr and "switched to the ring" in r.stderr, r.stderr


def test_other_user_stays_plain_against_a_default_0600_fabric(shm_path, daemon_user):
    env = build_env(os.environ, fabric=shm_path, log="debug")
    r = subprocess.run([PY, "-c", SELF_CONNECT], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE(os.stat(shm_path).st_mode) == 0o600
    r = _as_daemon([PY, "-c", SELF_CONNECT], {**env, "FASTIVC_LOG": "info"})
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    assert f"cannot open fabric {shm_path}: Permission denied" in r.stderr, r.stderr


def test_numeric_group_and_umask_do_not_narrow_the_mode(shm_path, daemon_user):
    _, gid = daemon_user
    env = build_env(os.environ, fabric=shm_path, fabric_mode="640", fabric_group=str(gid))
    r = subprocess.run(["sh", "-c", f'umask 077; exec {PY} -c "$0"', SELF_CONNECT], env=env,
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    st = os.stat(shm_path)
    assert stat.S_IMODE(st.st_mode) == 0o640 and st.st_gid == gid


@pytest.mark.parametrize("mode,group", [("0999", None), ("660", "no-such-group-fivc"),
                                        ("0660", "4294967296")])
def test_invalid_settings_are_named_and_the_fabric_stays_0600(shm_path, mode, group):
    env = build_env(os.environ, fabric=shm_path, log="info")
    env["FASTIVC_FABRIC_MODE"] = mode
    if group:
        env["FASTIVC_FABRIC_GROUP"] = group
    r = subprocess.run([PY, "-c", SELF_CONNECT], env=env, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0, r.stderr
    var = "FASTIVC_FABRIC_MODE" if not group else "FASTIVC_FABRIC_GROUP"
    assert f"{var}={mode if not group else group}" in r.stderr, r.stderr
    st = os.stat(shm_path)
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_gid == os.getegid()


@pytest.mark.parametrize("args,msg", [
    (["--fabric-mode", "0o660"], "--fabric-mode '0o660' is not an octal mode such as 0660"),
    (["--fabric-mode", "rw-rw----"], "is not an octal mode"),
    (["--fabric-mode", "01660"], "only permission bits (at most 0777)"),
    (["--fabric-mode", "0460"], "the owner needs read and write (0600)"),
    (["--fabric-group", "no-such-group-fivc"], "--fabric-group no-such-group-fivc: no such group"),
])
def test_cli_rejects_bad_fabric_mode_and_group(args, msg):
    r = subprocess.run([sys.executable, "-m", "fastivc", "run", *args, "--", "true"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and msg in r.stderr, r.stderr


def test_cli_passes_mode_and_group_and_prints_nothing_extra():
    gid = os.getegid()
    r = subprocess.run([sys.executable, "-m", "fastivc", "run", "--fabric-mode", "0660",
                        "--fabric-group", grp.getgrgid(gid).gr_name, "--", "sh", "-c",
                        "echo $FASTIVC_FABRIC_MODE $FASTIVC_FABRIC_GROUP"],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stderr == ""
    assert r.stdout == f"0660 {gid}\n"
