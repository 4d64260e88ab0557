"""`fastivc stat`: one row per accelerated connection of a fabric, like ss.

`connections()` turns a Snapshot into plain rows (the data), `summary()`
sums them up (by state, members, the fabric's size and resident memory, the
largest rings by bytes in flight) and `ordered()` sorts and cuts them to the
top N; `render()` builds the summary and the rich table; `watch()` refreshes
it in place.  Nothing here writes to the fabric.

At scale (65k connections) the table shows the top 50 rows by default: rich
takes minutes for 65k rows, the summary and 50 rows take well under a second
on top of reading the fabric.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from .fabric import Fabric, FabricError, Member, Ring, Slot, Snapshot, resident_bytes

SORT_KEYS = ("bytes", "fill", "age", "pid", "port")
DEFAULT_TOP = 50  # rows in the table unless --top says otherwise
LARGEST = 5  # rings by bytes in flight named in the summary


def our_pidns() -> int:
    """Inode of this process's pid namespace (0 if /proc cannot tell)."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return 0


def _mode(sleeping: bool) -> str:
    return "sleeping" if sleeping else "active"


def _holders(ids: tuple[int, ...], members: dict[int, Member], pidns: int) -> list[dict]:
    out = []
    for i in ids:
        m = members.get(i)
        if m is None:  # the entry is no longer in use: a holder id left behind
            out.append({"member": i, "pid": None, "comm": "", "alive": False,
                        "other_pidns": None})
            continue
        other = None if not (pidns and m.pidns_ino) else m.pidns_ino != pidns
        out.append({"member": i, "pid": m.pid, "comm": m.comm, "alive": m.alive,
                    "other_pidns": other})
    return out


def _ring_row(r: Ring) -> dict:
    return {"bytes": r.produced, "queued": r.fill, "fill": r.fill / r.size if r.size else 0.0,
            "valid": r.valid, "problem": r.problem}


def connection(s: Slot, members: dict[int, Member], pidns: int) -> dict:
    """One connection as a flat dict: addresses, state, byte counters (the
    rings' free-running tails), fill, wait mode of each side, holders."""
    c2s, s2c = s.client_to_server, s.server_to_client
    # The client consumes s2c and produces c2s; the server the other way round.
    client_sleeping = s2c.consumer_waiting or c2s.producer_waiting
    server_sleeping = c2s.consumer_waiting or s2c.producer_waiting
    return {
        "slot": s.index,
        "local": f"{_hostport(s.local.address, s.local.port)}",
        "peer": f"{_hostport(s.peer.address, s.peer.port)}",
        "state": s.state,
        "ring_size": c2s.size,
        "switch_bytes": s.switch_bytes,
        "bytes_client_to_server": c2s.produced,
        "bytes_server_to_client": s2c.produced,
        "queued_client_to_server": c2s.fill,
        "queued_server_to_client": s2c.fill,
        "fill_client_to_server": round(c2s.fill / c2s.size, 6) if c2s.size else 0.0,
        "fill_server_to_client": round(s2c.fill / s2c.size, 6) if s2c.size else 0.0,
        "client_mode": _mode(client_sleeping),
        "server_mode": _mode(server_sleeping),
        "client_holders": _holders(s.client_holders, members, pidns),
        "server_holders": _holders(s.server_holders, members, pidns),
        "valid": c2s.valid and s2c.valid,
        "problem": "; ".join(p for p in (c2s.problem, s2c.problem) if p),
    }


def connections(snap: Snapshot, pidns: int | None = None) -> list[dict]:
    """The rows of `fastivc stat`, one per slot in use."""
    members = {m.index: m for m in snap.members}
    ns = our_pidns() if pidns is None else pidns
    return [connection(s, members, ns) for s in snap.slots]


def _in_flight(r: dict) -> int:
    return r["queued_client_to_server"] + r["queued_server_to_client"]


def _first_pid(holders: list[dict]) -> int:
    return min((h["pid"] for h in holders if h["pid"] is not None), default=1 << 62)


def _port(hostport: str) -> int:
    return int(hostport.rsplit(":", 1)[1])


def ordered(rows: list[dict], snap: Snapshot, sort: str | None = None,
            top: int | None = None) -> list[dict]:
    """rows sorted by `sort` (None: slot order) and cut to the first `top`
    (None or 0: all).  bytes: most carried first (both directions); fill:
    fullest ring first; age: oldest first, by when the client-side process
    joined the fabric (the layout keeps no time per connection); pid: by the
    client's pid, then the server's; port: by the server's port, then the
    client's."""
    if sort is not None and sort not in SORT_KEYS:
        raise ValueError(f"sort must be one of {', '.join(SORT_KEYS)}, not {sort!r}")
    if sort == "bytes":
        rows = sorted(rows, key=lambda r: (-(r["bytes_client_to_server"]
                                             + r["bytes_server_to_client"]), r["slot"]))
    elif sort == "fill":
        rows = sorted(rows, key=lambda r: (-max(r["fill_client_to_server"],
                                                r["fill_server_to_client"]),
                                           -_in_flight(r), r["slot"]))
    elif sort == "age":
        joined = {m.index: m.joined_ns for m in snap.members}
        far = 1 << 63
        rows = sorted(rows, key=lambda r: (min((joined.get(h["member"], far)
                                                for h in r["client_holders"]), default=far),
                                           r["slot"]))
    elif sort == "pid":
        rows = sorted(rows, key=lambda r: (_first_pid(r["client_holders"]),
                                           _first_pid(r["server_holders"]), r["slot"]))
    elif sort == "port":
        rows = sorted(rows, key=lambda r: (_port(r["peer"]), _port(r["local"]), r["slot"]))
    return rows[:top] if top else list(rows)


def summary(snap: Snapshot, rows: list[dict] | None = None) -> dict:
    """What a person needs first at scale: connections by state, accelerated
    (both sides attached) against pending offers, members, the fabric's size
    and the memory it holds (st_blocks), and the largest rings by bytes in
    flight."""
    rows = connections(snap) if rows is None else rows
    h = snap.header
    by_state: dict[str, int] = {"connected": 0, "offered": 0, "half-closed": 0}
    for r in rows:
        by_state[r["state"]] = by_state.get(r["state"], 0) + 1
    offers: dict[str, int] = {}
    for o in snap.offers:
        offers[o.state] = offers.get(o.state, 0) + 1
    try:
        resident = resident_bytes(h.path)
        file_size = os.stat(h.path).st_size
    except OSError:
        resident = file_size = None
    busiest = sorted((r for r in rows if _in_flight(r)), key=lambda r: (-_in_flight(r),
                                                                          r["slot"]))[:LARGEST]
    return {
        "connections": len(rows),
        "by_state": by_state,
        "accelerated": by_state.get("connected", 0),
        "pending": offers.get("pending", 0) + offers.get("writing", 0),
        "offers": offers,
        "listeners": len(snap.listeners),
        "downgraded": dict(snap.downgrades),
        "corrupt": sum(1 for r in rows if not r["valid"]),
        "members": {"total": len(snap.members),
                    "alive": sum(1 for m in snap.members if m.alive is True),
                    "dead": sum(1 for m in snap.members if m.alive is False),
                    "unknown": sum(1 for m in snap.members if m.alive is None)},
        "fabric": {"path": h.path, "layout_size": h.total_size, "file_size": file_size,
                   "resident_bytes": resident, "slots": h.nslots, "slots_used": len(snap.slots),
                   "ring_size": h.ring_size},
        "largest_in_flight": [{"slot": r["slot"], "local": r["local"], "peer": r["peer"],
                               "in_flight": _in_flight(r),
                               "queued_client_to_server": r["queued_client_to_server"],
                               "queued_server_to_client": r["queued_server_to_client"]}
                              for r in busiest],
    }


def _plain(o):
    """dataclasses.asdict without its deep copies (4 s of 65k slots -> 1 s)."""
    fields = getattr(o, "__dataclass_fields__", None)
    if fields is not None:
        return {k: _plain(getattr(o, k)) for k in fields}
    if isinstance(o, (list, tuple)):
        return [_plain(x) for x in o]
    return o


def document(snap: Snapshot, sort: str | None = None, top: int | None = None) -> dict:
    """`fastivc stat --json`: the raw snapshot (header, members, slots, offers,
    as before), `connections`, the rows of the table (all of them unless
    `top`; in `sort` order), and `summary` (see summary())."""
    doc = {"header": _plain(snap.header), "members": _plain(snap.members),
           "slots": _plain(snap.slots), "offers": _plain(snap.offers),
           "listeners": _plain(snap.listeners)}
    rows = connections(snap)
    doc["summary"] = summary(snap, rows)
    doc["connections"] = ordered(rows, snap, sort, top)
    return doc


def read(path: str) -> Snapshot:
    """A snapshot of the fabric at path (FabricError names the file)."""
    with Fabric(path) as fab:
        return fab.snapshot()


PRETTY_MAX_SLOTS = 2000  # above this, indent=2 (pure-Python json, 7 s at 65k) is too slow


def dumps(doc: dict, pretty: bool = True) -> str:
    """The JSON text of document(): indented when pretty and small; a big one
    gets one line per top-level key (C json encoder)."""
    import json

    if not pretty:
        return json.dumps(doc)
    if len(doc.get("slots", ())) <= PRETTY_MAX_SLOTS:
        return json.dumps(doc, indent=2)
    return "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in doc.items()) \
        + "\n}"


# -- presentation -----------------------------------------------------------
def _hostport(addr: str, port: int) -> str:
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


def human(n: int) -> str:
    if n < 10000:
        return f"{n} B"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        n /= 1024
        if n < 10000 or unit == "TiB":
            return f"{n:.1f} {unit}"
    return f"{n} B"  # not reached


def _n(k: int, what: str) -> str:
    return f"{k} {what}" if k == 1 else f"{k} {what}s"


def _fill(queued: int, frac: float) -> str:
    return f"{frac * 100:.0f}% ({human(queued)})" if queued else "0%"


def _pids(holders: list[dict]) -> str:
    parts = []
    for h in holders:
        if h["pid"] is None:
            parts.append(f"member {h['member']} (gone)")
            continue
        mark = "*" if h["other_pidns"] else ""
        dead = " (dead)" if h["alive"] is False else ""
        parts.append(f"{h['pid']}{mark} {h['comm']}{dead}")
    return "\n".join(parts) or "-"


def summary_lines(s: dict) -> list[str]:
    """The summary as text, under the title line."""
    f, m, st = s["fabric"], s["members"], s["by_state"]
    size = "?" if f["file_size"] is None else human(f["file_size"])
    res = "?" if f["resident_bytes"] is None else human(f["resident_bytes"])
    states = ", ".join(f"{k} {v}" for k, v in st.items())
    lines = [f"  memory: file {size}, resident {res}; slots {f['slots_used']} used of "
             f"{f['slots']}",
             f"  connections: {s['connections']} ({states}); accelerated {s['accelerated']}, "
             f"pending offers {s['pending']}" + (f"; CORRUPT {s['corrupt']}" if s["corrupt"]
                                                  else ""),
             f"  members: {m['total']} ({m['alive']} alive" + (f", {m['dead']} dead" if m["dead"]
                                                              else "") + ")"
             + f"; accelerated listeners {s['listeners']}"]
    if any(s["downgraded"].values()):
        lines.append("  back to TCP (downgraded): " + ", ".join(
            f"{k.replace('_', ' ')} {v}" for k, v in s["downgraded"].items()))
    if s["largest_in_flight"]:
        lines.append("  largest in flight: " + "; ".join(
            f"slot {r['slot']} {r['local']} -> {r['peer']} {human(r['in_flight'])}"
            for r in s["largest_in_flight"]))
    else:
        lines.append("  largest in flight: none (every ring is empty)")
    return lines


def render(snap: Snapshot, show_all: bool = False, top: int | None = DEFAULT_TOP,
           sort: str | None = None):
    """The rich renderable for a snapshot: a title line, the summary and the
    connection table (the first `top` rows in `sort` order, then a line
    saying how many more); with show_all also the offers and the members."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    h = snap.header
    all_rows = connections(snap)
    rows = ordered(all_rows, snap, sort, top)
    title = Text(f"fabric {h.path}: {h.nslots} slots, rings of {h.small_ring // 1024} KiB "
                 f"growing to {h.ring_size // 1024} KiB, "
                 f"{_n(len(all_rows), 'connection')}, {_n(len(snap.offers), 'offer')}, "
                 f"{_n(len(snap.members), 'member')}\n"
                 + "\n".join(summary_lines(summary(snap, all_rows))))
    t = Table(box=None, pad_edge=False, header_style="bold")
    for name, just in (("Local", "left"), ("Peer", "left"), ("State", "left"),
                       ("Bytes\nc->s", "right"), ("Bytes\ns->c", "right"),
                       ("Fill\nc->s", "right"), ("Fill\ns->c", "right"),
                       ("Client\nmode", "left"), ("Server\nmode", "left"),
                       ("Client\npids", "left"), ("Server\npids", "left")):
        t.add_column(name, justify=just, no_wrap=True)
    foreign = False
    for r in rows:
        foreign |= any(x["other_pidns"] for x in r["client_holders"] + r["server_holders"])
        state = r["state"] if r["valid"] else f"{r['state']} CORRUPT"
        t.add_row(r["local"], r["peer"], state,
                  human(r["bytes_client_to_server"]), human(r["bytes_server_to_client"]),
                  _fill(r["queued_client_to_server"], r["fill_client_to_server"]),
                  _fill(r["queued_server_to_client"], r["fill_server_to_client"]),
                  r["client_mode"], r["server_mode"],
                  _pids(r["client_holders"]), _pids(r["server_holders"]),
                  style="red" if not r["valid"] else None)
    parts: list = [title]
    if rows:
        parts.append(t)
    if len(all_rows) > len(rows):
        parts.append(Text(f"… {len(all_rows) - len(rows)} more (--top N shows N rows, --top 0 "
                          "all; --sort bytes|fill|age|pid|port)"))
    if foreign:
        parts.append(Text("* pid in another pid namespace (as that namespace numbers it)"))
    if show_all:
        parts += _secondary(snap)
    return Group(*parts)


def _secondary(snap: Snapshot) -> list:
    from rich.table import Table
    from rich.text import Text

    out: list = []
    if snap.offers:
        t = Table(title="offers", title_justify="left", box=None, pad_edge=False,
                  header_style="bold")
        for c in ("#", "State", "Source", "Destination", "Slot", "Owner", "Adopter"):
            t.add_column(c, no_wrap=True)
        for o in snap.offers:
            t.add_row(str(o.index), o.state, _hostport(o.source.address, o.source.port),
                      _hostport(o.destination.address, o.destination.port),
                      "-" if o.slot is None else str(o.slot),
                      "-" if o.owner_member is None else str(o.owner_member),
                      "-" if o.adopter_member is None else str(o.adopter_member))
        out.append(t)
    else:
        out.append(Text("no offers"))
    if snap.members:
        pidns = our_pidns()
        t = Table(title="members", title_justify="left", box=None, pad_edge=False,
                  header_style="bold")
        for c in ("#", "Pid", "Command", "Alive", "Pid namespace"):
            t.add_column(c, no_wrap=True)
        for m in snap.members:
            ns = ("?" if not (pidns and m.pidns_ino) else
                  "ours" if m.pidns_ino == pidns else f"other ({m.pidns_ino})")
            t.add_row(str(m.index), str(m.pid), m.comm,
                      {True: "yes", False: "no (dead)", None: "?"}[m.alive], ns)
        out.append(t)
    else:
        out.append(Text("no members"))
    return out


def console(**kw):
    """A rich Console that leaves a closed pipe (`fastivc stat | head`) to the
    CLI, which treats it as success; rich's own handling exits with 1."""
    from rich.console import Console

    class _Console(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError

    return _Console(**kw)


def print_wide(renderable, file=None) -> None:
    """Print without cutting cells short: as wide as the content needs (a
    terminal then wraps long lines rather than losing their ends)."""
    from rich.measure import Measurement

    con = console(file=file, soft_wrap=False)
    need = Measurement.get(con, con.options.update_width(100000), renderable).maximum
    if need > con.width:
        con = console(file=file, soft_wrap=False, width=need)
    con.print(renderable)


@dataclass
class Watch:
    """Refresh `render()` of the fabric at path every interval seconds until
    interrupted.  A fabric that becomes unreadable is shown as an error and
    retried; the caller decides about the first read."""

    path: str
    interval: float
    show_all: bool = False
    top: int | None = DEFAULT_TOP
    sort: str | None = None

    def frame(self):
        from rich.text import Text

        try:
            return render(read(self.path), self.show_all, self.top, self.sort)
        except FabricError as e:
            return Text(f"{e} (retrying every {self.interval:g} s)", style="red")

    def run(self, con=None, sleep: Callable[[float], None] = time.sleep) -> None:
        """Until KeyboardInterrupt: in place on a terminal (rich Live), else
        one frame after another."""
        from rich.live import Live

        con = con or console(soft_wrap=False)
        if not con.is_terminal:
            while True:
                print_wide(self.frame(), con.file)
                con.file.write("\n")
                con.file.flush()
                sleep(self.interval)
        with Live(self.frame(), console=con, auto_refresh=False,
                  redirect_stdout=False, redirect_stderr=False) as live:
            while True:
                sleep(self.interval)
                live.update(self.frame(), refresh=True)
