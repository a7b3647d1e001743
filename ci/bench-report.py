#!/usr/bin/env python3
"""Turn the console log of one benchmark boot (ci/scenarios/bench.sh) into a report.

usage: ci/bench-report.py LOG --json OUT.json --md OUT.md [--png OUT.png]

The guest prints one "BENCHJSON {...}" line per fact: the configuration, what became of
each target (ready, skipped, failed, and why), one line per fio run (rep 0 is the
warm-up, not counted) and the end. This gathers them (the last configuration in the log
and what follows it), and writes:
  OUT.json  config, targets, per target and workload: median, min, max, reps, p99, CPU
            per I/O, write amplification, the ratios to rublk and to loop; and every run
  OUT.md    the same as markdown tables (also printed on stdout)
  OUT.png   grouped bars: per workload, each target's median relative to rublk (defaults)
            (needs gnuplot; without it, no plot and a message saying so)
Standard library only. BENCHMARKS.md explains every column.
"""

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

# workload -> (description, unit, how its figure is read from a run)
WORKLOADS = {
    "randwrite": ("4 KiB random writes, QD32", "IOPS"),
    "randread": ("4 KiB random reads, QD32", "IOPS"),
    "fsync32": ("4 KiB random writes, QD32, fsync every 32", "IOPS"),
    "seqwrite": ("1 MiB sequential writes, QD8", "MiB/s"),
    "seqread": ("1 MiB sequential reads, QD8", "MiB/s"),
    "randrw": ("4 KiB random 70% read / 30% write, QD32", "IOPS (r+w)"),
    "lat": ("4 KiB random writes, QD1", "IOPS"),
}
READS = {"randread", "seqread"}
BLOCK = {w: (1 << 20 if w.startswith("seq") else 4096) for w in WORKLOADS}
BASELINES = ("rublk", "loop")


def figure(w, run):
    """The workload's figure of merit for one run (higher is better)."""
    if w in ("randwrite", "fsync32", "lat"):
        return float(run["write_iops"])
    if w == "randread":
        return float(run["read_iops"])
    if w == "randrw":
        return float(run["read_iops"] + run["write_iops"])
    if w == "seqwrite":
        return run["write_kib_s"] / 1024.0
    if w == "seqread":
        return run["read_kib_s"] / 1024.0
    raise ValueError(w)


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def parse(path):
    records = []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\r\n")
            i = line.find("BENCHJSON ")
            if i < 0:
                continue
            try:
                records.append(json.loads(line[i + len("BENCHJSON "):]))
            except json.JSONDecodeError as e:
                print(f"bench-report: WARNING: unreadable line skipped ({e}): {line[:120]}",
                      file=sys.stderr)
    starts = [i for i, r in enumerate(records) if r.get("kind") == "config"]
    if not starts:
        sys.exit(f"bench-report: ERROR: no BENCHJSON config line in {path}: "
                 "the benchmark did not start (see the log)")
    return records[starts[-1]:]


def summarize(records):
    config = records[0]
    targets = {}
    for r in records:
        if r.get("kind") == "target":
            targets[r["target"]] = r
    for t in config["targets"]:
        targets.setdefault(t, {"target": t, "label": t, "state": "failed",
                               "detail": "never reported (the guest stopped before setting it up)"})
    runs = [r for r in records if r.get("kind") == "run"]
    end = next((r for r in records if r.get("kind") == "end"), None)

    results = {}
    for t in config["targets"]:
        results[t] = {}
        for w in config["workloads"]:
            mine = [r for r in runs if r["target"] == t and r["workload"] == w and r["rep"] >= 1]
            good = [r for r in mine if r["ok"]]
            res = {"reps": len(good), "failed_reps": len(mine) - len(good),
                   "errors": sorted({r["error"] for r in mine if not r["ok"]}),
                   "unit": WORKLOADS[w][1], "values": [round(figure(w, r), 1) for r in good]}
            vals = res["values"]
            res["median"] = median(vals)
            res["min"] = min(vals) if vals else None
            res["max"] = max(vals) if vals else None
            res["read_p99_us"] = median([r["read_p99_us"] for r in good]) if w not in WRITES_ONLY else None
            res["write_p99_us"] = median([r["write_p99_us"] for r in good]) if w not in READS else None
            res["read_lat_us"] = median([r["read_lat_us"] for r in good]) if w not in WRITES_ONLY else None
            res["write_lat_us"] = median([r["write_lat_us"] for r in good]) if w not in READS else None
            # Per I/O of the workload's size, counted from the bytes the device moved in
            # the same window as the CPU time (ramp included; requests split or merged on
            # the way do not change the count).
            cpu = []
            for r in good:
                ios = (r.get("dev_read_bytes", 0) + r["dev_write_bytes"]) / BLOCK[w]
                if r.get("cpu_ticks") is not None and ios > 0:
                    cpu.append(r["cpu_ticks"] / r["clk_tck"] * 1e6 / ios)
            res["cpu_us_per_io"] = round(median(cpu), 2) if cpu else None
            wa = []
            for r in good:
                below = r.get("image_bytes_written")
                if below is None:
                    below = r.get("backing_bytes_written")
                if below is not None and r["dev_write_bytes"] > 0:
                    wa.append(below / r["dev_write_bytes"])
            res["write_amplification"] = round(median(wa), 2) if wa else None
            res["snapshots"] = [r["snapshots"] for r in good if r.get("snapshots") is not None]
            res["notes"] = [r["note"] for r in good if r.get("note")]
            results[t][w] = res
    for t in config["targets"]:
        for w in config["workloads"]:
            res = results[t][w]
            for b in BASELINES:
                base = results.get(b, {}).get(w, {}).get("median")
                key = f"vs_{b}"
                if res["median"] is not None and base:
                    res[key] = round(res["median"] / base, 3)
                else:
                    res[key] = None
    return config, targets, results, runs, end


WRITES_ONLY = {"randwrite", "fsync32", "seqwrite", "lat"}


def fmt(x, digits=0):
    if x is None:
        return "-"
    if digits == 0:
        return f"{x:,.0f}".replace(",", " ")
    return f"{x:.{digits}f}"


def markdown(config, targets, results, end, kernel_label):
    out = []
    out.append(f"## Kernel {config['kernel']}\n")
    warm = f"after a {config['warmup_s']} s warm-up" if config["warmup_s"] else "without warm-up"
    out.append(f"{config['cpus']} vCPUs (qemu TCG), {config['mem_mib']} MiB; every device "
               f"{config['size_mib']} MiB over a file on the guest's tmpfs; fio {config['engine']}, "
               f"direct=1; {config['ramp_s']} s ramp + {config['runtime_s']} s per run; "
               f"{config['reps']} interleaved repetition{'' if config['reps'] == 1 else 's'} {warm}; "
               f"rewind: {config['rewind']}; rublk: {config['rublk']}."
               + (f" Guest run: {end['seconds']} s." if end else " The run did NOT finish (no end record)."))
    out.append("")
    out.append("### Targets\n")
    out.append("| target | state | detail |")
    out.append("| --- | --- | --- |")
    for t in config["targets"]:
        r = targets[t]
        out.append(f"| {r['label']} | {r['state']} | {r['detail']} |")
    out.append("")
    ws = config["workloads"]
    for b in BASELINES:
        if targets.get(b, {}).get("state") != "ready":
            continue
        out.append(f"### Median relative to {targets[b]['label']}"
                   f"{' (defaults)' if b == 'rublk' else ''} (higher is better)\n")
        out.append("| target | " + " | ".join(ws) + " |")
        out.append("| --- |" + " ---: |" * len(ws))
        for t in config["targets"]:
            if targets[t]["state"] != "ready":
                out.append(f"| {targets[t]['label']} | " + " | ".join([targets[t]["state"]] * len(ws)) + " |")
                continue
            cells = [fmt(results[t][w][f"vs_{b}"], 2) for w in ws]
            out.append(f"| {targets[t]['label']} | " + " | ".join(cells) + " |")
        out.append("")
    for w in ws:
        desc, unit = WORKLOADS[w]
        out.append(f"### {w}: {desc} ({unit})\n")
        out.append("| target | median | min | max | reps | ×rublk | ×loop | p99 µs | mean lat µs "
                   "| daemon CPU µs/IO | bytes below/byte | notes |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |")
        for t in config["targets"]:
            tr = targets[t]
            if tr["state"] != "ready":
                why = tr["detail"] if tr["detail"].startswith(tr["state"]) else f"{tr['state']}: {tr['detail']}"
                out.append(f"| {tr['label']} | {why} |" + " |" * 10)
                continue
            r = results[t][w]
            if w == "randrw":
                p99 = f"r {fmt(r['read_p99_us'])} / w {fmt(r['write_p99_us'])}"
                lat = f"r {fmt(r['read_lat_us'])} / w {fmt(r['write_lat_us'])}"
            elif w in READS:
                p99, lat = fmt(r["read_p99_us"]), fmt(r["read_lat_us"])
            else:
                p99, lat = fmt(r["write_p99_us"]), fmt(r["write_lat_us"])
            notes = []
            if r["failed_reps"]:
                notes.append(f"{r['failed_reps']} rep(s) FAILED: " + "; ".join(r["errors"])[:300])
            if r["snapshots"]:
                notes.append(f"snapshots taken per run: {', '.join(str(s) for s in r['snapshots'])}")
            if t in ("thin", "thin-snap", "dm-snap") and r["notes"]:
                notes.append(r["notes"][-1])
            digits = 1 if unit == "MiB/s" else 0
            out.append(f"| {tr['label']} | {fmt(r['median'], digits)} | {fmt(r['min'], digits)} | "
                       f"{fmt(r['max'], digits)} | {r['reps']} | {fmt(r['vs_rublk'], 2)} | "
                       f"{fmt(r['vs_loop'], 2)} | {p99} | {lat} | {fmt(r['cpu_us_per_io'], 1)} | "
                       f"{fmt(r['write_amplification'], 2)} | {'; '.join(notes)} |")
        out.append("")
    return "\n".join(out)


def plot(config, targets, results, png):
    gnuplot = shutil.which("gnuplot")
    if not gnuplot:
        print("bench-report: no gnuplot (apt install gnuplot-nox; ci/setup.sh --bench does): no plot",
              file=sys.stderr)
        return False
    base = next((b for b in BASELINES if targets.get(b, {}).get("state") == "ready"), None)
    if base is None:
        print("bench-report: neither rublk nor loop was measured: no plot", file=sys.stderr)
        return False
    ready = [t for t in config["targets"] if targets[t]["state"] == "ready"]
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "data")
        with open(data, "w") as f:
            for w in config["workloads"]:
                cells = [results[t][w][f"vs_{base}"] for t in ready]
                f.write(w + "\t" + "\t".join("-" if c is None else f"{c:.3f}" for c in cells) + "\n")
        label = targets[base]["label"] + (" (defaults)" if base == "rublk" else "")
        cols = []
        for i, t in enumerate(ready):
            using = f"{i + 2}:xtic(1)" if i == 0 else f"{i + 2}"
            cols.append(f"'{data}' using {using} title '{targets[t]['label']}'")
        script = f"""
set terminal pngcairo size 1400,640 font ",11"
set output '{png}'
set title "{config['kernel']}: median of {config['reps']} run(s) relative to {label}, per workload (higher is better)\\n{config['size_mib']} MiB devices, {config['runtime_s']} s runs, qemu TCG with {config['cpus']} vCPUs: compare ratios, not absolute figures"
set style data histograms
set style histogram clustered gap 1
set style fill solid 0.9 border -1
set boxwidth 0.9
set datafile missing "-"
set datafile separator "\\t"
set ylabel "relative to {label}"
set yrange [0:*]
set grid ytics
set key outside right top vertical
set arrow from graph 0, first 1 to graph 1, first 1 nohead dashtype 2 linewidth 1.5 linecolor rgb "black" front
plot {", ".join(cols)}
"""
        sp = os.path.join(tmp, "plot.gp")
        with open(sp, "w") as f:
            f.write(script)
        r = subprocess.run([gnuplot, sp], capture_output=True, text=True)
        if r.returncode != 0:
            print(f"bench-report: gnuplot failed: {r.stderr.strip()}", file=sys.stderr)
            return False
    return True


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("log")
    ap.add_argument("--json", required=True)
    ap.add_argument("--md", required=True)
    ap.add_argument("--png")
    a = ap.parse_args()
    records = parse(a.log)
    config, targets, results, runs, end = summarize(records)
    md = markdown(config, targets, results, end, config["kernel"])
    doc = {"config": config, "targets": [targets[t] for t in config["targets"]],
           "results": results, "end": end, "runs": runs}
    with open(a.json, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    with open(a.md, "w") as f:
        f.write(md + "\n")
    print(md)
    if a.png and plot(config, targets, results, a.png):
        print(f"plot: {a.png}")
    # Non-zero if nothing at all was measured.
    sys.exit(0 if any(r["ok"] and r["rep"] >= 1 for r in runs) else 1)


if __name__ == "__main__":
    main()
