"""Charts of a `fastivc bench` results document (``--plot FILE``, PNG).

The panels follow from what the document holds, so every scenario gets the
charts that suit it:

- throughput against write size (log x), plain and fastivc, when there are
  streaming rows for two or more sizes (`bench ring`, `bench stream --sizes`);
- the round-trip latency distribution, plain and fastivc, when the raw
  results carry the helpers' quantile curves (`bench ring`, `bench rr`);
- round trip (p50, p99) against the number of idle connections, plain and
  fastivc, and fastivc's shared memory per idle connection (`bench scale`);
- plain against fastivc bars with the ratio written above, one panel per
  unit, for every other row (`connect`, `redis`, `nginx`, a single stream
  size).

Only the document is read: nothing here measures.  The names of the plotted
series go into the PNG's metadata ("Description") and are returned, so the
caller can list them in the JSON.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from .stats import size_label

PLAIN_COLOR = "#7f7f7f"
FAST_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c")


@dataclass
class Series:
    """One line or one set of bars, as plotted."""

    panel: str
    name: str

    def __str__(self) -> str:
        return f"{self.panel}: {self.name}"


@dataclass
class Chart:
    """What `plan` decides to draw."""

    title: str
    sweep: list[dict] = field(default_factory=list)  # rows with "size"
    latency: dict[str, list[dict]] = field(default_factory=dict)  # label -> raw rr results
    bars: dict[str, list[dict]] = field(default_factory=dict)  # unit -> rows
    scale: list[dict] = field(default_factory=list)  # rows with "idle" and "percentile"
    memory: list[dict] = field(default_factory=list)  # doc["memory"] of bench scale

    @property
    def panels(self) -> int:
        return (bool(self.sweep) + bool(self.latency) + len(self.bars) + bool(self.scale)
                + bool(self.memory))


def _latency_sources(doc: dict) -> dict[str, list[dict]]:
    """Label -> the raw round-trip results that carry a quantile curve."""
    raw = doc.get("raw", {})
    if doc.get("benchmark") == "ring":
        out = {doc.get("baseline", "TCP loopback").split(" (")[0]: raw.get("rr-tcp", []),
               "fastivc, spinning": raw.get("rr-ring-spin", []),
               "fastivc, sleeping": raw.get("rr-ring-sleep", [])}
    elif doc.get("benchmark") == "tcp" and "rr" in raw:
        out = {"plain TCP": raw["rr"]["plain"], "fastivc": raw["rr"]["fastivc"]}
    else:
        return {}
    out = {k: v for k, v in out.items() if v and all("quantiles_us" in r for r in v)}
    return out if len(out) >= 2 else {}


def plan(doc: dict) -> Chart:
    name = doc.get("benchmark", "?")
    if name == "tcp":
        name = " + ".join(doc.get("scenarios", [])) or "tcp"
    chart = Chart(f"fastivc bench {name}: fastivc vs "
                  f"{doc.get('baseline', 'baseline').split(' (')[0]}")
    rows = list(doc.get("rows", []))
    sized = [r for r in rows if "size" in r and r.get("unit") == "GB/s"]
    if len({r["size"] for r in sized}) >= 2:
        chart.sweep = sorted(sized, key=lambda r: r["size"])
        rows = [r for r in rows if r not in sized]
    if doc.get("benchmark") == "scale":
        chart.scale = [r for r in rows if "percentile" in r]
        chart.memory = list(doc.get("memory", []))
        return chart
    chart.latency = _latency_sources(doc)
    if chart.latency:
        rows = [r for r in rows if r.get("unit") != "us"]
    for r in rows:
        chart.bars.setdefault(r["unit"], []).append(r)
    return chart


def _ratio(r: float) -> str:
    return f"{r:.1f}×" if r < 100 else f"{r:.0f}×"


def _sweep_panel(ax, rows: list[dict], baseline: str) -> list[Series]:
    xs = [r["size"] for r in rows]
    out = []
    for side, label, color in (("baseline", baseline, PLAIN_COLOR),
                               ("fastivc", "fastivc", FAST_COLORS[0])):
        med = [r[side]["median"] for r in rows]
        ax.plot(xs, med, "o-", color=color, label=label, lw=2)
        ax.fill_between(xs, [r[side]["min"] for r in rows], [r[side]["max"] for r in rows],
                        color=color, alpha=0.2, lw=0)
        out.append(Series("throughput vs write size", label))
    for r in rows:
        ax.annotate(_ratio(r["ratio"]), (r["size"], r["fastivc"]["median"]),
                    textcoords="offset points", xytext=(0, 7), ha="center", fontsize=8)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(xs, [size_label(x) for x in xs])
    ax.minorticks_off()
    ax.set_xlabel("write size")
    ax.set_ylabel("GB/s (median, band: min–max)")
    ax.set_title("Streaming throughput against write size")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left")
    return out


def _curve(results: list[dict]) -> tuple[list[float], list[float]]:
    """Per quantile level, the median over the repeats (levels 0 and 1 left
    out: the logit axis cannot show them)."""
    levels = results[0]["quantile_levels"]
    us = [statistics.median(r["quantiles_us"][i] for r in results) for i in range(len(levels))]
    keep = [i for i, q in enumerate(levels) if 0 < q < 1]
    return [us[i] for i in keep], [levels[i] for i in keep]


def _latency_panel(ax, sources: dict[str, list[dict]]) -> list[Series]:
    out = []
    medians = {}
    for i, (label, results) in enumerate(sources.items()):
        color = PLAIN_COLOR if i == 0 else FAST_COLORS[(i - 1) % len(FAST_COLORS)]
        x, y = _curve(results)
        ax.plot(x, y, "-", color=color, lw=2, label=label)
        medians[label] = statistics.median(r["p50_us"] for r in results)
        out.append(Series("round-trip latency CDF", label))
    ax.set_xscale("log")
    ax.set_yscale("logit")
    ticks = [0.01, 0.1, 0.5, 0.9, 0.99, 0.999, 0.9999]
    ax.set_yticks(ticks, ["p1", "p10", "p50", "p90", "p99", "p99.9", "p99.99"])
    ax.minorticks_off()
    ax.set_ylim(0.005, 0.99995)
    ax.set_xlabel("round trip, µs (log)")
    ax.set_ylabel("percentile")
    size = next(iter(sources.values()))[0].get("size", 64)
    n = len(next(iter(sources.values())))
    ax.set_title(f"{size} B round-trip latency distribution (median of {n} repeat"
                 f"{'s' if n > 1 else ''})")
    ax.grid(True, which="major", alpha=0.3)
    base = next(iter(medians))
    lines = [f"p50 {label}: {v:.3g} µs" + (f" ({_ratio(medians[base] / v)})"
                                              if label != base and v > 0 else "")
             for label, v in medians.items()]
    ax.text(0.98, 0.03, "\n".join(lines), transform=ax.transAxes, ha="right", va="bottom",
            fontsize=8, bbox={"boxstyle": "round", "fc": "white", "alpha": 0.8})
    ax.legend(loc="upper left")
    return out


def _bar_panel(ax, unit: str, rows: list[dict], baseline: str) -> list[Series]:
    width = 0.38
    idx = list(range(len(rows)))
    out = []
    for k, (side, label, color) in enumerate((("baseline", baseline, PLAIN_COLOR),
                                              ("fastivc", "fastivc", FAST_COLORS[0]))):
        med = [r[side]["median"] for r in rows]
        err = [[m - r[side]["min"] for m, r in zip(med, rows, strict=True)],
               [r[side]["max"] - m for m, r in zip(med, rows, strict=True)]]
        xs = [i + (k - 0.5) * width for i in idx]
        ax.bar(xs, med, width, yerr=err, capsize=4, color=color, label=label)
        out.append(Series(f"{unit} bars", label))
    top = max(max(r["baseline"]["max"], r["fastivc"]["max"]) for r in rows)
    for i, r in zip(idx, rows, strict=True):
        hi = max(r["baseline"]["max"], r["fastivc"]["max"])
        ax.text(i, hi + top * 0.03, _ratio(r["ratio"]), ha="center", va="bottom",
                fontsize=10, fontweight="bold")
    ax.set_ylim(0, top * 1.18)
    ax.set_xlim(-0.8, len(rows) - 0.2)  # a single pair stays a pair of bars, not two slabs
    ax.set_xticks(idx, [_wrap(r["scenario"]) for r in rows], fontsize=8)
    better = "higher" if rows[0].get("better") == "higher" else "lower"
    ax.set_ylabel(f"{unit} (median, whiskers: min–max; {better} is better)")
    ax.set_title(f"Plain TCP vs fastivc, {unit} (× > 1: fastivc better)")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(loc="upper left")
    return out


def _scale_panel(ax, rows: list[dict], baseline: str) -> list[Series]:
    counts = sorted({r["idle"] for r in rows})
    xs = list(range(len(counts)))
    out = []
    for side, label, color in (("baseline", baseline, PLAIN_COLOR),
                               ("fastivc", "fastivc", FAST_COLORS[0])):
        for pct, style in (("p50", "o-"), ("p99", "s--")):
            sel = {r["idle"]: r for r in rows if r["percentile"] == pct}
            med = [sel[n][side]["median"] for n in counts]
            ax.plot(xs, med, style, color=color, lw=2, label=f"{label} {pct}")
            ax.fill_between(xs, [sel[n][side]["min"] for n in counts],
                            [sel[n][side]["max"] for n in counts], color=color, alpha=0.15,
                            lw=0)
            out.append(Series("round trip vs idle connections", f"{label} {pct}"))
    for r in rows:
        if r["percentile"] == "p50" and r.get("partial"):
            ax.annotate(f"partial: {r['accelerated_connections']}/{r['connections']}",
                        (counts.index(r["idle"]), r["fastivc"]["median"]),
                        textcoords="offset points", xytext=(0, -14), ha="center", fontsize=7)
    ax.set_yscale("log")
    ax.set_xticks(xs, [str(n) for n in counts])
    ax.set_xlabel("idle connections open besides the busy one")
    ax.set_ylabel("64 B round trip, µs (median, band: min–max)")
    ax.set_title("Busy connection's round trip against idle connections")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="upper left", fontsize=8)
    return out


def _memory_panel(ax, memory: list[dict]) -> list[Series]:
    xs = list(range(len(memory)))
    med = [m["per_connection"]["median"] / 1024 for m in memory]
    err = [[v - m["per_connection"]["min"] / 1024 for v, m in zip(med, memory, strict=True)],
           [m["per_connection"]["max"] / 1024 - v for v, m in zip(med, memory, strict=True)]]
    ax.bar(xs, med, 0.5, yerr=err, capsize=4, color=FAST_COLORS[0], label="fastivc")
    for x, v in zip(xs, med, strict=True):
        ax.text(x, v, f"{v:.3g} KiB", ha="center", va="bottom", fontsize=9)
    ax.set_xticks(xs, [str(m["idle"]) for m in memory])
    ax.set_xlabel("idle connections")
    ax.set_ylabel("KiB per idle connection (fabric file's st_blocks)")
    ax.set_title("Shared memory per idle connection")
    ax.grid(True, axis="y", alpha=0.3)
    return [Series("shared memory per idle connection", "fastivc")]


def _wrap(text: str, width: int = 28) -> str:
    words, lines, cur = text.split(), [], ""
    for w in words:
        if cur and len(cur) + 1 + len(w) > width:
            lines.append(cur)
            cur = w
        else:
            cur = f"{cur} {w}".strip()
    return "\n".join([*lines, cur])


def _footer(doc: dict) -> str:
    m = doc.get("machine", {})
    mem = m.get("memory_bytes")
    parts = [f"fastivc: {doc['fastivc']}" if doc.get("fastivc") else "",
             f"baseline: {doc['baseline']}" if doc.get("baseline") else "",
             m.get("hostname", ""), m.get("cpu", ""),
             f"{m['cpus']} cores" if m.get("cpus") else "",
             f"{mem / 2**30:.0f} GiB" if mem else "",
             f"Linux {m['kernel']}" if m.get("kernel") else "", m.get("os", ""),
             f"fastivc {doc.get('versions', {}).get('fastivc', '?')}", doc.get("date", ""),
             f"{doc.get('repeats', '?')} repeats x {doc.get('seconds_per_case', '?')} s"]
    return " · ".join(p for p in parts if p)


def render(doc: dict, path: str) -> list[str]:
    """Draw `doc` into the PNG file `path`; return the plotted series' names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    chart = plan(doc)
    if not chart.panels:
        raise ValueError("nothing to plot: the results have no rows")
    n = chart.panels
    ncols = 2 if n == 4 else min(n, 3)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(6.6 * ncols, 5.0 * nrows + 0.6),
                             squeeze=False)
    flat = list(axes.flat)
    baseline = doc.get("baseline", "plain TCP").split(" (")[0]
    series: list[Series] = []
    try:
        k = 0
        if chart.sweep:
            series += _sweep_panel(flat[k], chart.sweep, baseline)
            k += 1
        if chart.latency:
            series += _latency_panel(flat[k], chart.latency)
            k += 1
        if chart.scale:
            series += _scale_panel(flat[k], chart.scale, baseline)
            k += 1
        if chart.memory:
            series += _memory_panel(flat[k], chart.memory)
            k += 1
        for unit, rows in chart.bars.items():
            series += _bar_panel(flat[k], unit, rows, baseline)
            k += 1
        for ax in flat[k:]:
            ax.set_visible(False)
        fig.suptitle(_wrap(chart.title, 110), fontsize=12, fontweight="bold")
        width_chars = int(fig.get_figwidth() * 17)  # 7-point text at 110 dpi
        fig.text(0.5, 0.005, _wrap(_footer(doc), width_chars), ha="center", va="bottom",
                 fontsize=7, color="#555555")
        fig.tight_layout(rect=(0, 0.05, 1, 0.96))
        names = [str(s) for s in series]
        fig.savefig(path, format="png", dpi=110, metadata={
            "Title": chart.title,
            "Description": "series: " + "; ".join(names),
            "Software": f"fastivc {doc.get('versions', {}).get('fastivc', '?')}, "
                        f"matplotlib {matplotlib.__version__}",
        })
    finally:
        plt.close(fig)
    return names
