"""Fabric trust (issue 13, DESIGN.md "Fabric trust"): whoever can write a
fabric reads and steers every connection in it, so the library refuses one
that another user planted (owned by neither root nor us), a symbolic link,
and one whose mode gives others anything or gives a group that is neither
FASTIVC_FABRIC_GROUP nor one of ours.  Refused means plain TCP and one
clear line at FASTIVC_LOG=info; `fastivc doctor` FAILs and names the fix.
A fabric that follows the rule still accelerates."""

from __future__ import annotations

import grp
import json
import os
import pwd
import subprocess
import sys

import pytest
from test_fabric_perms import SELF_CONNECT  # (one process, two ends on loopback)

from fastivc import fabric as F
from fastivc._paths import helper_path
from fastivc.run import build_env


def mkfabric(path: str) -> None:
    r = subprocess.run([str(helper_path("fastivc-mkfabric")), path, "16"], capture_output=True,
                       text=True)
    assert r.returncode == 0, r.stderr


def self_connect(path: str, log: str, **extra: str) -> subprocess.CompletedProcess:
    env = {**build_env(os.environ, fabric=path, log=log), **extra}
    r = subprocess.run([sys.executable, "-c", SELF_CONNECT], env=env, capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr
    return r


def doctor_fabric(path: str, **extra: str) -> dict:
    r = subprocess.run([sys.executable, "-m", "fastivc", "doctor", "--fabric", path, "--json"],
                       capture_output=True, text=True, timeout=120, env={**os.environ, **extra})
    doc = json.loads(r.stdout)
    fab = next(c for c in doc["checks"] if c["name"] == "fabric")
    assert (r.returncode == 1) == (fab["status"] == "FAIL"), (r.returncode, fab)
    return fab


def assert_refused_and_plain(path: str, why: str, **extra: str) -> None:
    r = self_connect(path, "info", **extra)
    lines = [ln for ln in r.stderr.splitlines() if "fastivc[" in ln]
    assert len(lines) == 1 and "is refused" in lines[0] and why in lines[0], r.stderr
    assert "plain TCP" in lines[0], lines
    r = self_connect(path, "debug", **extra)
    assert "switched to the ring" not in r.stderr and "adopted offer" not in r.stderr, r.stderr
    target = os.path.realpath(path)
    with F.Fabric(target) as fab:  # never joined, never a slot
        assert not fab.slots() and not fab.members(), fab.members()


def assert_accelerated(path: str, **extra: str) -> None:
    r = self_connect(path, "debug", **extra)
    assert "switched to the ring" in r.stderr and "is refused" not in r.stderr, r.stderr


@pytest.fixture
def root():
    if os.geteuid() != 0:
        pytest.skip("planting a fabric as another user needs root (chown)")


def _nobody() -> tuple[int, int]:
    try:
        uid = pwd.getpwnam("nobody").pw_uid
    except KeyError:
        pytest.skip("no user nobody")
    for g in ("nogroup", "nobody"):
        try:
            return uid, grp.getgrnam(g).gr_gid
        except KeyError:
            pass
    pytest.skip("no group nogroup/nobody")


def test_fabric_planted_by_another_user_is_refused(root, shm_path):
    mkfabric(shm_path)
    uid, gid = _nobody()
    os.chown(shm_path, uid, gid)
    os.chmod(shm_path, 0o666)
    assert_refused_and_plain(shm_path, f"owned by uid {uid}")
    fab = doctor_fabric(shm_path)
    assert fab["status"] == "FAIL" and "is refused" in fab["detail"], fab
    assert f"owned by uid {uid}" in fab["detail"] and f"rm {shm_path}" in fab["fix"], fab


def test_fabric_open_to_every_user_is_refused(shm_path):
    mkfabric(shm_path)
    os.chmod(shm_path, 0o606)
    assert_refused_and_plain(shm_path, "mode 0606")
    fab = doctor_fabric(shm_path)
    assert fab["status"] == "FAIL" and f"chmod o-rwx {shm_path}" in fab["fix"], fab


def test_fabric_behind_a_symlink_is_refused(shm_path):
    real = shm_path + ".real"
    mkfabric(real)
    os.symlink(real, shm_path)
    try:
        assert_refused_and_plain(shm_path, "symbolic link")
        fab = doctor_fabric(shm_path)
        assert fab["status"] == "FAIL" and "symbolic link" in fab["detail"], fab
        assert f"rm {shm_path}" in fab["fix"], fab
        assert_accelerated(real)  # the file itself is fine
    finally:
        os.unlink(real)


def test_group_access_only_for_the_configured_group_or_ours(root, shm_path):
    try:
        gid = grp.getgrnam("daemon").gr_gid
    except KeyError:
        pytest.skip("no group daemon")
    if gid == os.getegid() or gid in os.getgroups():
        pytest.skip("we are in group daemon")
    mkfabric(shm_path)
    os.chown(shm_path, 0, gid)
    os.chmod(shm_path, 0o660)
    assert_refused_and_plain(shm_path, f"gives group {gid}")
    fab = doctor_fabric(shm_path)
    assert fab["status"] == "FAIL" and f"FASTIVC_FABRIC_GROUP={gid}" in fab["fix"], fab
    # shared with that group on purpose: trusted
    assert_accelerated(shm_path, FASTIVC_FABRIC_GROUP="daemon")
    assert doctor_fabric(shm_path, FASTIVC_FABRIC_GROUP="daemon")["status"] == "OK"
    # and our own group may have it (0660 with our gid)
    os.chown(shm_path, 0, os.getegid())
    assert_accelerated(shm_path)


def test_a_correct_fabric_still_accelerates(shm_path):
    mkfabric(shm_path)
    assert_accelerated(shm_path)
    fab = doctor_fabric(shm_path)
    assert fab["status"] == "OK", fab


def test_another_users_fabric_is_trusted_only_through_the_configured_group(root, shm_path):
    """A server running as postgres may create the fabric (0660, group
    postgres) that a root client uses: both are started with
    --fabric-group, which declares that group the trust domain."""
    try:
        gid = grp.getgrnam("daemon").gr_gid
    except KeyError:
        pytest.skip("no group daemon")
    uid, _ = _nobody()
    mkfabric(shm_path)
    os.chown(shm_path, uid, gid)
    os.chmod(shm_path, 0o660)
    assert_refused_and_plain(shm_path, f"owned by uid {uid}")
    assert f"FASTIVC_FABRIC_GROUP={gid}" in doctor_fabric(shm_path)["fix"]
    assert_accelerated(shm_path, FASTIVC_FABRIC_GROUP="daemon")
    assert doctor_fabric(shm_path, FASTIVC_FABRIC_GROUP=str(gid))["status"] == "OK"


def _make_stale(path: str) -> None:
    """A fabric of the previous layout version at path (what an upgrade of
    the library leaves behind): a real one with its version word changed."""
    mkfabric(path)
    with open(path, "r+b") as f:
        f.seek(8)  # (magic, then the layout version)
        f.write((F.LAYOUT_VERSION - 1).to_bytes(4, "little"))


def test_stale_fabric_nobody_uses_is_replaced(shm_path):
    _make_stale(shm_path)
    before = os.stat(shm_path).st_ino
    r = self_connect(shm_path, "debug")
    assert f"replaced one of layout version {F.LAYOUT_VERSION - 1}" in r.stderr, r.stderr
    assert "switched to the ring" in r.stderr, r.stderr
    assert os.stat(shm_path).st_ino != before
    with F.Fabric(shm_path) as fab:
        assert fab.header.layout_version == F.LAYOUT_VERSION


def test_stale_fabric_in_use_is_left_alone(shm_path):
    """A member of the old version still holds its lock: not replaced, and
    this process stays plain, saying why."""
    import fcntl

    _make_stale(shm_path)
    before = os.stat(shm_path).st_ino
    with open(shm_path, "r+b") as f:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, F.LOCK_BASE + 3, 0)
        r = self_connect(shm_path, "debug")
    assert "replaced" not in r.stderr and "switched to the ring" not in r.stderr, r.stderr
    assert f"layout version {F.LAYOUT_VERSION - 1}" in r.stderr, r.stderr
    assert os.stat(shm_path).st_ino == before
