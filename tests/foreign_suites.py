"""The foreign suites run under fastivc (tests/test_foreign.py, and at once
under load by scripts/foreign-load.py): each one's command and the pattern
that gives (test, outcome) per line of its output."""

from __future__ import annotations

import re
import sys

# tornado skips test_stop_in_callback when all its racing connects win,
# which under fastivc they do: the one outcome allowed to differ
RACY = {"test_stop_in_callback (tornado.test.tcpserver_test.TCPServerTest.test_stop_in_callback)"}

TWISTED = ["twisted.internet.test.test_tcp", "twisted.test.test_tcp", "twisted.test.test_ftp",
           "twisted.web.test.test_webclient", "twisted.internet.test.test_endpoints",
           "twisted.test.test_protocols", "twisted.internet.test.test_socket",
           "twisted.test.test_loopback", "twisted.web.test.test_xmlrpc",
           "twisted.words.test.test_irc"]
TORNADO_SUITE = ([sys.executable, "-m", "tornado.test.runtests", "--verbose"],
                 r"^(test\S* \([^)]*\)) \.\.\. (\S+)")


def twisted_suite(mods: list[str]) -> tuple[list[str], str]:
    return ([sys.executable, "-m", "twisted.trial", "--reporter=bwverbose", *mods],
            r"^(\S+) \.\.\. \[(\w+)\]$")


TWISTED_SUITE = twisted_suite(TWISTED)


def outcomes(suite: tuple, out: str) -> dict:
    """{test: outcome} from a suite's output."""
    return {m.group(1): m.group(2) for m in re.finditer(suite[1], out, re.M)}
