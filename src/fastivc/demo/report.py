"""How `fastivc demo` shows its numbers: a rich table and a PNG chart.
Both take the document `measure.measure` returns and measure nothing."""

from __future__ import annotations

import json
import textwrap

from .. import __version__

SERIES = ("plain TCP", "fastivc")
COLORS = ("#8c8c8c", "#e8710a")


def fmt_value(v: float, unit: str) -> str:
    if unit == "req/s":
        return f"{v:,.0f} {unit}"
    return f"{v:.3g} {unit}"


def fmt_speedup(row: dict) -> str:
    return f"{row['speedup']:.1f}×"


def where(doc: dict) -> str:
    """Where client and server ran, in words."""
    if doc["namespaces"]:
        a, b = doc["namespaces"]
        return f"{doc['placement']} ({a} ↔ {b}, {doc['subnet']})"
    return doc["placement"]


def table(doc: dict):
    """The side-by-side table: one row per scenario, medians and the speedup."""
    from rich.table import Table

    repeats = doc["settings"]["repeats"]
    t = Table(caption=(f"median of {repeats} runs each" if repeats > 1 else "1 run each")
              + "; speedup > 1 means fastivc is better (latency: plain ÷ fastivc)",
              caption_justify="left")
    t.add_column("scenario")
    t.add_column(SERIES[0], justify="right")
    t.add_column(SERIES[1], justify="right", style="bold")
    t.add_column("speedup", justify="right", style="bold")
    for row in doc["rows"]:
        if row["status"] != "measured":
            t.add_row(row["title"], "—", "—", "[red]missing[/red]")
            continue
        sp = f"[{'green' if row['speedup'] >= 1 else 'red'}]{fmt_speedup(row)}[/]"
        lo, hi = row["speedup_range"]
        if repeats > 1:
            sp += f" [dim]({lo:.1f}–{hi:.1f})[/dim]"
        t.add_row(row["title"], fmt_value(row["plain"]["median"], row["unit"]),
                  fmt_value(row["fastivc"]["median"], row["unit"]), sp)
    return t


def print_report(doc: dict, console) -> None:
    console.print("[bold]fastivc demo[/bold]: the same programs on plain TCP and under "
                  "fastivc run")
    console.print(f"client and server: {where(doc)}")
    console.print(table(doc))
    for row in doc["rows"]:
        if row["status"] != "measured":
            console.print(f"[red]missing[/red]: {row['title']}: {row['reason']}", markup=True,
                          highlight=False)
        for note in row.get("notes", ()):
            console.print(f"note: {row['title']}: {note}", highlight=False)
    if not doc["namespaces"]:
        console.print("[yellow]Client and server ran on loopback[/yellow] "
                      f"({doc['placement']}), not in two network namespaces: "
                      "run as root for the two-container setup.", highlight=False)


def chart_series(doc: dict) -> dict:
    """What the chart shows: its series and one panel per row, in order."""
    return {"series": list(SERIES), "panels": [row["title"] for row in doc["rows"]]}


def _description(doc: dict) -> str:
    parts = []
    for row in doc["rows"]:
        if row["status"] == "measured":
            plain, fast = (fmt_value(row[s]["median"], row["unit"]) for s in ("plain", "fastivc"))
            parts.append(f"{row['title']}: {SERIES[0]} {plain}, {SERIES[1]} {fast}, "
                         f"speedup {fmt_speedup(row)}")
        else:
            parts.append(f"{row['title']}: missing ({row['reason']})")
    return (f"fastivc demo, grouped bars per scenario, series: {', '.join(SERIES)}; "
            f"{where(doc)}. " + "; ".join(parts))


def write_chart(doc: dict, path: str) -> dict:
    """A PNG with one panel per row (units differ, so each has its own axis):
    a bar per series, min-max whiskers over the repeats, the speedup on top.
    The series and panels also go into the PNG's text chunks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = doc["rows"]
    fig, axes = plt.subplots(1, len(rows), figsize=(3.1 * len(rows), 4.6), squeeze=False)
    for ax, row in zip(axes[0], rows, strict=True):
        ax.set_title("\n".join(textwrap.wrap(row["title"], 26, break_on_hyphens=False)),
                     fontsize=10)
        if row["status"] != "measured":
            ax.set_axis_off()
            ax.text(0.5, 0.5, "not measured:\n" + "\n".join(textwrap.wrap(row["reason"], 30)[:8]),
                    ha="center", va="center", fontsize=8, color="#b00020",
                    transform=ax.transAxes)
            continue
        meds = [row["plain"]["median"], row["fastivc"]["median"]]
        err = None
        if doc["settings"]["repeats"] > 1:
            err = [[m - row[s]["min"] for m, s in zip(meds, ("plain", "fastivc"), strict=True)],
                   [row[s]["max"] - m for m, s in zip(meds, ("plain", "fastivc"), strict=True)]]
        bars = ax.bar(list(SERIES), meds, color=COLORS, yerr=err, capsize=4, width=0.6)
        for b, m, s in zip(bars, meds, ("plain", "fastivc"), strict=True):
            top = row[s]["max"] if err else m  # above the whisker
            ax.annotate(fmt_value(m, row["unit"]).replace(" req/s", ""),
                        (b.get_x() + b.get_width() / 2, top), ha="center", va="bottom",
                        xytext=(0, 3), textcoords="offset points", fontsize=8)
        gain = row["speedup"] >= 1
        better = ("lower latency" if row["better"] == "lower" else "faster") if gain else "(worse)"
        ax.text(0.5, 0.93, f"{fmt_speedup(row)} {better}", transform=ax.transAxes,
                ha="center", fontsize=12, fontweight="bold",
                color=COLORS[1] if gain else "#b00020")
        ax.set_ylabel(f"{row['unit']} ({row['better']} is better)")
        if row["unit"] == "req/s":
            ax.yaxis.set_major_formatter(lambda v, _pos: f"{v / 1000:g}k" if v else "0")
        ax.set_ylim(0, max(row["plain"]["max"], row["fastivc"]["max"]) * 1.3)
        ax.spines[["top", "right"]].set_visible(False)
    repeats = doc["settings"]["repeats"]
    fig.suptitle(f"fastivc vs plain TCP — {where(doc)}\n"
                 + (f"median of {repeats} runs each; whiskers: min–max" if repeats > 1
                    else "1 run each"), fontsize=11)
    fig.tight_layout()
    info = chart_series(doc)
    metadata = {"Title": "fastivc demo: plain TCP vs fastivc",
                "Description": _description(doc),
                "Software": f"fastivc {__version__}",
                "fastivc:series": json.dumps(info["series"]),
                "fastivc:panels": json.dumps(info["panels"])}
    try:
        fig.savefig(path, format="png", dpi=110, metadata=metadata)
    finally:
        plt.close(fig)
    return {"path": path, **info}
