"""The transfer tables: medians per workload and tool, ratios to the anchors, as text and as Markdown.

Runs through the relay (the rtt and flaky regimes) add the relay's figures: bytes sent upstream per
byte delivered, connections cut, connections opened, and the relay's CPU as a share of the run's
wall time (the median, and the highest of any run).
"""
from __future__ import annotations

import statistics
from typing import Any, Callable, Dict, List, Tuple

from measure import ANCHORS, BASELINE, GiB


def summarize(runs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Medians per (workload, tool) of the verified runs, with ratios to the best anchor."""
    rows: List[Dict[str, Any]] = []
    for w in dict.fromkeys(r["workload"] for r in runs):
        per_tool: Dict[str, Dict[str, Any]] = {}
        for tool in dict.fromkeys(r["tool"] for r in runs if r["workload"] == w):
            ok = [r for r in runs if r["workload"] == w and r["tool"] == tool and r["verify"] == "OK"]
            n_all = sum(1 for r in runs if r["workload"] == w and r["tool"] == tool)
            if not ok:
                per_tool[tool] = {"workload": w, "tool": tool, "n": 0, "failed": n_all}
                continue
            files, nbytes = ok[0]["files"], ok[0]["bytes"]

            def med(f: Callable[[Dict[str, Any]], float]) -> float:
                return statistics.median(f(r) for r in ok)
            per_tool[tool] = {
                "workload": w, "tool": tool, "n": len(ok), "failed": n_all - len(ok), "files": files, "bytes": nbytes,
                "secs": med(lambda r: r["secs"]),
                "mb_s": med(lambda r: nbytes / 1e6 / r["secs"]),
                "files_s": med(lambda r: files / r["secs"]),
                "cpu_ms_per_file": med(lambda r: 1000 * r["cpu"] / files),
                "cpu_s_per_gib": med(lambda r: r["cpu"] / (nbytes / GiB)),
                "rss_mb": med(lambda r: r["rss_mb"]),
                "server_cpu_s": med(lambda r: r["server_cpu"]),
                "secs_min": min(r["secs"] for r in ok), "secs_max": max(r["secs"] for r in ok),
            }
            if "relay_up_bytes" in ok[0]:
                per_tool[tool].update(
                    sent_per_delivered=med(lambda r: r["sent_per_delivered"]), relay_cuts=med(lambda r: r["relay_cuts"]),
                    relay_conns=med(lambda r: r["relay_conns"]), relay_cpu_pct=med(lambda r: r["relay_cpu_pct"]),
                    relay_cpu_pct_max=max(r["relay_cpu_pct"] for r in ok))
        anchors = [per_tool[a] for a in ANCHORS if a in per_tool and per_tool[a]["n"]]
        best = max(anchors, key=lambda r: r["files_s"]) if anchors else None
        for row in per_tool.values():
            if best is not None and row["n"]:
                row["best_anchor"] = best["tool"]
                row["x_files_s"] = row["files_s"] / best["files_s"]
                row["x_cpu"] = row["cpu_ms_per_file"] / best["cpu_ms_per_file"]
                row["x_rss"] = row["rss_mb"] / best["rss_mb"]
                for a in anchors:  # and against each anchor, for the README
                    row[f"x_files_s_vs_{a['tool']}"] = row["files_s"] / a["files_s"]
                    row[f"x_cpu_vs_{a['tool']}"] = row["cpu_ms_per_file"] / a["cpu_ms_per_file"]
            base = per_tool.get(BASELINE)
            if base is not None and base["n"] and row["n"] and row["tool"] != BASELINE:
                # the A/B of two revisions: same data, same server, runs alternating in one process
                row["x_files_s_vs_baseline"] = row["files_s"] / base["files_s"]
                row["x_cpu_vs_baseline"] = row["cpu_ms_per_file"] / base["cpu_ms_per_file"]
            rows.append(row)
    return rows


def _rate(files_s: float) -> str:
    """Files/s as the tables show it: whole numbers, two digits below 10 (a few large files)."""
    return f"{files_s:,.0f}" if files_s >= 10 else f"{files_s:.2g}"


def print_table(rows: List[Dict[str, Any]]) -> None:
    hdr: Tuple[str, ...] = ("workload", "tool", "n", "secs", "MB/s", "files/s", "CPU ms/file", "CPU s/GiB",
                            "RSS MB", "srv CPU s", "x speed", "x CPU", "x RSS", "vs")
    relayed = any("sent_per_delivered" in r for r in rows)
    if relayed:
        hdr += ("sent/dlv", "cuts", "conns", "relay CPU%", "max")
    out = [hdr]
    for r in rows:
        if not r["n"]:
            out.append((r["workload"], r["tool"], "0", "FAILED", *[""] * (len(hdr) - 4)))
            continue
        row: Tuple[str, ...] = (
            r["workload"], r["tool"], str(r["n"]), f"{r['secs']:.2f}", f"{r['mb_s']:.1f}", _rate(r["files_s"]),
            f"{r['cpu_ms_per_file']:.3f}", f"{r['cpu_s_per_gib']:.2f}", f"{r['rss_mb']:.0f}",
            f"{r['server_cpu_s']:.1f}", f"{r.get('x_files_s', 0):.2f}", f"{r.get('x_cpu', 0):.2f}",
            f"{r.get('x_rss', 0):.2f}", r.get("best_anchor", ""))
        if relayed:
            row += (f"{r['sent_per_delivered']:.3f}", f"{r['relay_cuts']:g}", f"{r['relay_conns']:g}",
                    f"{r['relay_cpu_pct']:.1f}", f"{r['relay_cpu_pct_max']:.1f}")
        out.append(row)
    widths = [max(len(row[i]) for row in out) for i in range(len(hdr))]
    for row in out:
        print("  ".join(c.rjust(widths[i]) if i >= 2 else c.ljust(widths[i]) for i, c in enumerate(row)))
    print("x speed = files/s (and MB/s) / best anchor's; x CPU = CPU per file / best anchor's; x RSS = peak RSS / "
          "best anchor's. Medians of n verified runs." + (" sent/dlv = bytes sent upstream through the relay / "
                                                           "the workload's bytes." if relayed else ""))
    for r in rows:
        if "x_files_s_vs_baseline" in r:
            print(f"A/B {r['workload']}: {r['tool']} vs {BASELINE}: {r['x_files_s_vs_baseline']:.3f}x files/s, "
                  f"{r['x_cpu_vs_baseline']:.3f}x CPU per file")


def markdown(report: Dict[str, Any]) -> str:
    """A results file's tables for the docs: one per regime (a file from before regimes: its one table)."""
    regimes = report.get("regimes") or {"plain": {"summary": report.get("summary", [])}}
    if len(regimes) == 1:
        return markdown_table(next(iter(regimes.values()))["summary"])
    return "\n\n".join(f"**{name}**\n\n{markdown_table(r['summary'])}" for name, r in regimes.items())


def markdown_table(rows: List[Dict[str, Any]]) -> str:
    """One regime's table: medians, and speed and CPU as ratios to each anchor (and, through the relay,
    bytes sent per byte delivered, the connections cut and the relay's CPU)."""
    anchors = [a for a in ANCHORS if any(r["tool"] == a for r in rows)]
    relayed = any("sent_per_delivered" in r for r in rows)
    head = ["workload", "tool", "files/s", "MB/s", "CPU ms/file", "CPU s/GiB", "peak RSS MB"]
    head += [f"speed, CPU vs {a}" for a in anchors]
    if relayed:
        head += ["total time s", "sent / delivered", "cuts", "relay CPU"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        if not r["n"]:
            lines.append("| " + " | ".join([r["workload"], r["tool"], f"all {r['failed']} runs failed"]
                                           + [""] * (len(head) - 3)) + " |")
            continue
        cells = [r["workload"], f"`{r['tool']}`" if r["tool"].startswith("uploader") else r["tool"],
                 _rate(r["files_s"]), f"{r['mb_s']:.1f}", f"{r['cpu_ms_per_file']:.2f}",
                 f"{r['cpu_s_per_gib']:.1f}", f"{r['rss_mb']:.0f}"]
        for a in anchors:
            if f"x_files_s_vs_{a}" in r:
                cells.append(f"{r[f'x_files_s_vs_{a}']:.2f}×, {r[f'x_cpu_vs_{a}']:.2f}×")
            else:
                cells.append("")
        if relayed:
            cells += [f"{r['secs']:.1f}", f"{r['sent_per_delivered']:.3f}", f"{r['relay_cuts']:g}",
                      f"{r['relay_cpu_pct']:.0f}%"]
        if r.get("failed"):
            cells[1] += f" ({r['failed']} of {r['n'] + r['failed']} runs failed)"
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)

