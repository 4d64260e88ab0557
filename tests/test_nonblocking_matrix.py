"""The fallback matrix of the upgrade issue again, with non-blocking
sockets in an event loop (tests/peer.py --io): poll, epoll level-triggered
and epoll edge-triggered, fastivc with event loops on (issue 4).  The same
48 cases per loop as tests/test_upgrade.py and the same checks: data
intact; both ends under fastivc -> upgraded, the ring carried the data; one
end plain -> plain TCP all the way; nothing left in the fabric."""

from __future__ import annotations

import pytest
from test_upgrade import fallback_case


@pytest.mark.parametrize("ipv", [4, 6])
@pytest.mark.parametrize("placement", ["loopback", "netns"])
@pytest.mark.parametrize("mode", ["client-first", "server-first", "both"])
@pytest.mark.parametrize("cfast,sfast", [(True, True), (True, False), (False, True),
                                         (False, False)],
                         ids=["both-fastivc", "plain-server", "plain-client", "both-plain"])
@pytest.mark.parametrize("io", ["poll", "epoll-lt", "epoll-et"])
def test_nonblocking_fallback_matrix(request, shm_path, io, cfast, sfast, mode, placement, ipv):
    fallback_case(request, shm_path, cfast, sfast, mode, placement, ipv, io=io)
