#!/usr/bin/env python3
"""Fold one `scripts/bench.sh` run (bench/results/<stamp>/raw/*.json) into
results.json and the tables of BENCHMARKS.md.

Medians across repetitions; Vigil/DBOS ratios are taken between runs of the
same invocation, same PostgreSQL server, same concurrency. Everything below
the line `<!-- notes: kept by bench_report.py -->` in BENCHMARKS.md is kept
as written (hand-written reading of the numbers).
"""
import argparse
import glob
import json
import os
import re
import statistics

NOTES_MARK = "<!-- notes: kept by bench_report.py -->"


def load(path):
    with open(path) as f:
        return json.load(f)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=1):
    if x is None:
        return "n/a"
    if isinstance(x, (int,)) or (isinstance(x, float) and x.is_integer() and nd == 0):
        return f"{int(x)}"
    return f"{x:.{nd}f}"


def throughput(raw):
    groups = {}
    for p in sorted(glob.glob(os.path.join(raw, "tp-*.json"))):
        m = re.match(r"tp-(\w+)-(\w+)-p(\d+)-c(\d+)-r(\d+)\.json", os.path.basename(p))
        if not m:
            continue
        system, store, pods, conc, rep = m.groups()
        d = load(p)
        key = (system, store, int(pods), int(conc))
        if system == "dbos":
            row = {
                "runs_per_s": d["workflows_per_s"],
                "steps_per_s": d["steps_per_s"],
                "p50_ms": d["latency_ms"]["p50"],
                "p99_ms": d["latency_ms"]["p99"],
                "errors": d["errors"],
                "rss_mib": None,
                "version": d.get("dbos_version"),
            }
        else:
            rss = [r for r in d.get("pod_peak_rss_kib", []) if r]
            row = {
                "runs_per_s": d["runs_per_s"],
                "steps_per_s": d["steps_per_s"],
                "p50_ms": d["latency_ms"]["p50"],
                "p99_ms": d["latency_ms"]["p99"],
                "errors": d["runs_not_succeeded"] + d["extra_step_executions"],
                "rss_mib": max(rss) / 1024 if rss else None,
            }
        groups.setdefault(key, []).append(row)
    out = []
    for key, rows in sorted(groups.items(), key=lambda kv: (kv[0][3], kv[0][0] != "dbos", kv[0][1], kv[0][2])):
        system, store, pods, conc = key
        rps = [r["runs_per_s"] for r in rows]
        out.append({
            "system": system, "store": store, "pods": pods, "concurrency": conc,
            "reps": len(rows),
            "runs_per_s": med(rps), "runs_per_s_min": min(rps), "runs_per_s_max": max(rps),
            "steps_per_s": med([r["steps_per_s"] for r in rows]),
            "p50_ms": med([r["p50_ms"] for r in rows]),
            "p99_ms": med([r["p99_ms"] for r in rows]),
            "errors": sum(r["errors"] for r in rows),
            "peak_rss_mib": max([r["rss_mib"] for r in rows if r["rss_mib"]], default=None),
        })
    limit = {(c["store"], c["concurrency"]): c["commits_per_s"] for c in commits(raw)}
    for r in out:
        c = limit.get((r["store"], r["concurrency"]))
        r["commit_limit_per_s"] = c
        r["pct_of_commit_limit"] = (100.0 * r["steps_per_s"] / c) if c and r["system"] == "vigil" else None
    dbos = {r["concurrency"]: r for r in out if r["system"] == "dbos"}
    for r in out:
        d = dbos.get(r["concurrency"])
        r["ratio_vs_dbos"] = (r["runs_per_s"] / d["runs_per_s"]) if d and r["system"] == "vigil" else None
    return out


def commits(raw):
    """Median one-row commits/s per (store, concurrency), from `vigil bench commits`."""
    groups = {}
    for p in sorted(glob.glob(os.path.join(raw, "commits-*.json"))):
        d = load(p)
        groups.setdefault((d["store"], d["concurrency"]), []).append(d["commits_per_s"])
    return [{"store": k[0], "concurrency": k[1], "reps": len(v), "commits_per_s": med(v),
             "min": min(v), "max": max(v)} for k, v in sorted(groups.items())]


def statements(raw):
    """Round trips and commits per run as the server counted them (PostgreSQL runs)."""
    groups = {}
    for p in sorted(glob.glob(os.path.join(raw, "tp-vigil-postgres-*.json"))):
        d = load(p)
        st = d.get("statements") or {}
        if "round_trips_per_run" not in st:
            continue
        groups.setdefault((d["pods"], d["concurrency"]), []).append(st)
    out = []
    for (pods, conc), sts in sorted(groups.items()):
        top, exec_ms = {}, {}
        for st in sts:
            for q in st["by_statement"]:
                top.setdefault(q["query"], []).append(q["per_run"])
                exec_ms.setdefault(q["query"], []).append(q.get("mean_exec_ms"))
        out.append({
            "pods": pods, "concurrency": conc, "reps": len(sts),
            "round_trips_per_run": med([x["round_trips_per_run"] for x in sts]),
            "commits_per_run": med([x["commits_per_run"] for x in sts]),
            # Older runs carry none of these (None: printed as "n/a").
            "rt_less_bg": med([x["round_trips_per_run_less_background"] for x in sts
                               if "round_trips_per_run_less_background" in x]),
            "commits_less_bg": med([x["commits_per_run_less_background"] for x in sts
                                    if "commits_per_run_less_background" in x]),
            "bg_rt_per_s": med([x["background"]["round_trips_per_s"] for x in sts if "background" in x]),
            "rows": {k: med([x["rows_per_step"][k] for x in sts if "rows_per_step" in x])
                     for k in ("inserts", "updates", "hot_updates", "deletes")},
            "rows_by_table": next((x["rows_per_step"]["by_table"] for x in sts if "rows_per_step" in x), []),
            "by_statement": sorted(({"query": q, "per_run": med(v), "mean_exec_ms": med(exec_ms[q])}
                                    for q, v in top.items()),
                                   key=lambda x: -x["per_run"])[:12],
        })
    return out


def recovery(raw):
    vigil = []
    for p in sorted(glob.glob(os.path.join(raw, "rec-vigil-*.json"))):
        d = load(p)
        vigil.append({
            "system": "vigil", "store": d["store"], "signal": d["signal"],
            "n": d["rounds_measured"], "skipped": d["rounds_skipped_survivor_dispatched_first"],
            "detection_ms": d["detection_ms"], "claim_ms": d["claim_ms"],
            "first_resumed_ms": d["first_resumed_chunk_ms"], "complete_ms": d["run_complete_ms"],
            "finished_steps_executed_again": d["finished_steps_executed_again"],
            "interrupted_steps_restarted": d["interrupted_steps_restarted"],
            "bad_streams": d["runs_with_a_bad_final_stream"],
        })
    dbos_runs = [load(p) for p in sorted(glob.glob(os.path.join(raw, "rec-dbos-*.json")))]
    dbos = None
    if dbos_runs:
        def series(k):
            xs = sorted(x[k] for x in dbos_runs if x.get(k) is not None)
            return {"n": len(xs), "p50": med(xs), "max": max(xs) if xs else None, "all": xs}
        dbos = {
            "system": "dbos", "store": "postgres", "signal": "SIGKILL", "n": len(dbos_runs),
            "kill_to_first_step_ms": series("kill_to_first_B_step_ms"),
            "kill_to_complete_ms": series("kill_to_wf_complete_ms"),
            "kill_to_replacement_launched_ms": series("kill_to_B_launched_ms"),
            "steps_started_more_than_once": sum(len(x["steps_started_more_than_once"]) for x in dbos_runs),
            "steps_ended_more_than_once": sum(len(x["steps_ended_more_than_once"]) for x in dbos_runs),
            "all_ok": all(x.get("result_ok") for x in dbos_runs),
        }
    return vigil, dbos


def console(raw):
    out = {"render": [], "refresh": None, "rss_mib": None}
    for p in sorted(glob.glob(os.path.join(raw, "criterion-*.json"))):
        d = load(p)
        name = os.path.basename(p)[len("criterion-"):-5]
        m = d["median"]
        out["render"].append({
            "bench": name,
            "median_ms": m["point_estimate"] / 1e6,
            "ci95_ms": [m["confidence_interval"]["lower_bound"] / 1e6, m["confidence_interval"]["upper_bound"] / 1e6],
        })
    p = os.path.join(raw, "console-refresh.json")
    if os.path.exists(p):
        out["refresh"] = load(p)
    p = os.path.join(raw, "console-rss-kib.txt")
    if os.path.exists(p):
        txt = open(p).read().strip()
        out["rss_mib"] = int(txt) / 1024 if txt else None
    return out


def markdown(res, stamp, keep):
    L = []
    a = L.append
    a("# Benchmarks")
    a("")
    a(f"Generated by `just bench` (`scripts/bench.sh`, then `scripts/bench_report.py`) from run `{stamp}`; "
      f"raw JSON in `bench/results/{stamp}/` (one file per measurement, `results.json` for all of it).")
    a("Every figure is a median over the repetitions of one invocation; ratios compare runs of that same "
      "invocation on the same PostgreSQL server. Nothing here is asserted by a test.")
    a("")
    a("## Machine")
    a("")
    a("```")
    a(res["machine"].strip())
    a("```")
    a("")
    a("PostgreSQL: a throwaway cluster started by `scripts/with-pg.sh` with `VIGIL_PG_DURABLE=1` (PostgreSQL's "
      "defaults: fsync on, synchronous_commit on), on 127.0.0.1, shared by Vigil and DBOS. SQLite: WAL, "
      "synchronous=FULL, a fresh file per measurement.")
    a("")
    a("## Commands")
    a("")
    a("```sh")
    a("just bench                 # = scripts/bench.sh: everything below, then this file")
    a(f"vigil bench throughput --store <sqlite|postgres://...> --pods <1|3> --concurrency <1|16> --runs {res['params']['runs']} --warmup 50")
    a("vigil bench commits --store <sqlite|postgres://...> --concurrency <1|16> --seconds 5   # the commit limit")
    a(f"python dbos_anchor.py --db-url <same server>/dbos_anchor throughput --workflows {res['params']['runs']} --steps 5 --concurrency <1|16> --warmup 50")
    a(f"vigil bench recovery --store <sqlite|postgres://...> --signal <kill|term> --kills {res['params']['kills']}")
    a("python dbos_anchor.py --db-url <same server>/dbos_anchor recovery   # 20 steps of 100 ms, SIGKILL after step 5")
    a("cargo bench --bench console_render    # criterion")
    a("cargo bench --bench console           # refresh queries per second")
    a("vigil bench seed --store console.db --runs 10000 && vigil console --store console.db   # in tmux, VmHWM read from /proc")
    a("```")
    a("")
    a("## 1. Throughput: 5 trivial steps per run")
    a("")
    a("Vigil: C clients, each `POST /v1/runs` then waits for the `end` event on the run's SSE stream, through "
      "real pod processes (runs spread round-robin over the pods). DBOS: the anchor's `--mode start`, C threads "
      "in one Python process each calling `start_workflow(...).get_result()`. Every Vigil step is checkpointed "
      "(attempt and execution row before the body, output after it); after the clock stops every run is checked "
      "`succeeded` with each step executed once.")
    a("")
    a("The commit limit is `vigil bench commits`: C clients, each on its own connection, each committing "
      "one-row `INSERT`s in autocommit through sqlx, on the same server (a scratch database) or a SQLite file "
      "with the store's settings, in the same invocation. \"% of commit limit\" is Vigil's steps/s over it: "
      "a step is one durable checkpoint, so 100 % would mean one step per raw one-row commit.")
    a("")
    a("| store | clients | one-row commits/s (median, min-max) |")
    a("|---|---|---|")
    for c in res["commits"]:
        a(f"| {c['store']} | {c['concurrency']} | {fmt(c['commits_per_s'], 0)} ({fmt(c['min'], 0)}-{fmt(c['max'], 0)}, n={c['reps']}) |")
    a("")
    a("| system | store | pods | clients | runs/s (median, min-max) | steps/s | % of commit limit | p50 latency ms | p99 latency ms | pod peak RSS MiB | Vigil/DBOS (runs/s) | errors |")
    a("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in res["throughput"]:
        a(f"| {r['system']} | {r['store']} | {r['pods'] if r['system'] == 'vigil' else '1 process'} | {r['concurrency']} | "
          f"{fmt(r['runs_per_s'])} ({fmt(r['runs_per_s_min'])}-{fmt(r['runs_per_s_max'])}, n={r['reps']}) | "
          f"{fmt(r['steps_per_s'])} | {fmt(r['pct_of_commit_limit'], 0) + ' %' if r['pct_of_commit_limit'] else '-'} | "
          f"{fmt(r['p50_ms'])} | {fmt(r['p99_ms'])} | {fmt(r['peak_rss_mib'])} | "
          f"{fmt(r['ratio_vs_dbos'], 2) + 'x' if r['ratio_vs_dbos'] else '-'} | {r['errors']} |")
    if res["statements"]:
        a("")
        a("Round trips and commits per run on PostgreSQL, as the server counted them (`pg_stat_statements`, "
          "top-level statements, BEGIN and COMMIT included; `pg_stat_database.xact_commit`, read-only "
          "transactions included; the pods' background loops included):")
        a("")
        a("| pods | clients | round trips per run | commits per run | round trips per run, less background | commits per run, less background | background round trips/s (idle pods) |")
        a("|---|---|---|---|---|---|---|")
        for st in res["statements"]:
            a(f"| {st['pods']} | {st['concurrency']} | {fmt(st['round_trips_per_run'])} | {fmt(st['commits_per_run'])} | "
              f"{fmt(st['rt_less_bg'])} | {fmt(st['commits_less_bg'])} | {fmt(st['bg_rt_per_s'])} |")
        a("")
        a("The background is the pods' own loops (renewals, probes, the dispatcher's and the reaper's reads), "
          "counted alone for 3 s with the pods idle before the measured runs; its rate over the measured wall "
          "time is taken off. Rows written per step (`pg_stat_user_tables` over the measured runs, read once the "
          "pods exited; the `pods` table's renewals included):")
        a("")
        a("| pods | clients | inserts per step | updates per step | HOT updates per step | deletes per step |")
        a("|---|---|---|---|---|---|")
        for st in res["statements"]:
            r = st["rows"]
            a(f"| {st['pods']} | {st['concurrency']} | {fmt(r['inserts'], 2)} | {fmt(r['updates'], 2)} | "
              f"{fmt(r['hot_updates'], 2)} | {fmt(r['deletes'], 2)} |")
        one = next((st for st in res["statements"] if st["pods"] == 1 and st["concurrency"] == 1), None)
        if one:
            a("")
            a("The statements of one run (1 pod, 1 client), per run, with the server's mean execution time "
              "(`mean_exec_time`: in the executor, not the round trip nor the commit's flush):")
            a("")
            a("| per run | server execution ms (mean) | statement |")
            a("|---|---|---|")
            for q in one["by_statement"]:
                text = q["query"] if len(q["query"]) <= 110 else q["query"][:107] + "..."
                a(f"| {fmt(q['per_run'], 2)} | {fmt(q.get('mean_exec_ms'), 3)} | `{text.replace('|', '/')}` |")
    a("")
    a("## 2. Liveness and recovery")
    a("")
    a("Vigil: one survivor pod; each round a victim pod takes a `bench_stream` run (5 checkpointed steps, then a "
      "40-chunk stream over 4 s) and gets the signal once 3 chunks are out. Times from the signal to: the survivor "
      "recording the death, its claim, the first chunk of the resumed stream, the run's success. Duplicate "
      "executions are counted from the durable attempt counters: a step finished before the signal that shows a "
      "second attempt ran twice.")
    a("")
    a("| system | store | signal | rounds | detection p50 / p99 / max ms | claim p50 / p99 ms | first resumed chunk p50 / p99 / max ms | run complete p50 ms | finished steps executed again | interrupted step restarted |")
    a("|---|---|---|---|---|---|---|---|---|---|")
    for r in res["recovery"]["vigil"]:
        d, c, f, k = r["detection_ms"], r["claim_ms"], r["first_resumed_ms"], r["complete_ms"]
        a(f"| vigil | {r['store']} | {r['signal']} | {r['n']} | {fmt(d['p50'], 0)} / {fmt(d['p99'], 0)} / {fmt(d['max'], 0)} | "
          f"{fmt(c['p50'], 0)} / {fmt(c['p99'], 0)} | {fmt(f['p50'], 0)} / {fmt(f['p99'], 0)} / {fmt(f['max'], 0)} | "
          f"{fmt(k['p50'], 0)} | {r['finished_steps_executed_again']} | {r['interrupted_steps_restarted']} |")
    d = res["recovery"]["dbos"]
    if d:
        a("")
        a("DBOS anchor (`recovery`: a workflow of 20 steps of 100 ms, the process SIGKILLed once step 5 is "
          "checkpointed, a replacement process with the same executor id started at once; DBOS has no survivor "
          "that detects a dead peer, recovery is the restart):")
        a("")
        a("| system | rounds | kill -> replacement launched p50 ms | kill -> first step on the replacement p50 / max ms | kill -> workflow complete p50 ms | steps started twice | steps ended twice |")
        a("|---|---|---|---|---|---|---|")
        a(f"| dbos {res['dbos_version']} | {d['n']} | {fmt(d['kill_to_replacement_launched_ms']['p50'], 0)} | "
          f"{fmt(d['kill_to_first_step_ms']['p50'], 0)} / {fmt(d['kill_to_first_step_ms']['max'], 0)} | "
          f"{fmt(d['kill_to_complete_ms']['p50'], 0)} | {d['steps_started_more_than_once']} | {d['steps_ended_more_than_once']} |")
        vk = [r for r in res["recovery"]["vigil"] if r["store"] == "postgres" and r["signal"] == "SIGKILL"]
        if vk and d["kill_to_first_step_ms"]["p50"]:
            ratio = d["kill_to_first_step_ms"]["p50"] / vk[0]["first_resumed_ms"]["p50"]
            a("")
            a(f"Kill to the first resumed work, PostgreSQL, medians: DBOS / Vigil = {ratio:.1f}x "
              "(Vigil's survivor resumes; DBOS's replacement has to start first).")
    a("")
    a("## 3. Console")
    a("")
    c = res["console"]
    for r in c["render"]:
        a(f"- Render `{r['bench']}` at 200x50 (criterion median): {r['median_ms']:.3f} ms "
          f"(95% CI {r['ci95_ms'][0]:.3f}-{r['ci95_ms'][1]:.3f}); frame budget 16 ms.")
    if c["refresh"]:
        for r in c["refresh"]["rounds"]:
            a(f"- Refresh, {r['store']}, {r['what']} ({c['refresh']['runs_in_store']} runs in the store): "
              f"{r['round_ms_median']:.1f} ms per round, {r['queries_per_s_at_500ms']:.0f} queries/s at the 500 ms default.")
    a("")
    a("## 4. Memory")
    a("")
    tp = [r for r in res["throughput"] if r["system"] == "vigil" and r["peak_rss_mib"]]
    if tp:
        top = max(tp, key=lambda r: r["peak_rss_mib"])
        a(f"- Pod peak RSS (VmHWM) under the throughput load: at most {top['peak_rss_mib']:.1f} MiB "
          f"({top['store']}, {top['pods']} pods, {top['concurrency']} clients); per configuration in the table above.")
    if c["rss_mib"]:
        a(f"- Console peak RSS (VmHWM) on a real terminal (tmux, 200x50) over a store of 10,000 runs, after "
          f"scrolling, jumping and filtering: {c['rss_mib']:.1f} MiB (it loads the newest `runs_limit` runs, 1,000 by default).")
    a("")
    a("## Targets")
    a("")
    for t in res["targets"]:
        a(f"- {t}")
    a("")
    a(NOTES_MARK)
    if keep:
        a(keep.rstrip("\n"))
    a("")
    return "\n".join(L)


def targets(res):
    out = []
    pk = [r for r in res["recovery"]["vigil"] if r["store"] == "postgres" and r["signal"] == "SIGKILL"]
    if pk:
        r = pk[0]
        det, rec = r["detection_ms"]["p99"], r["first_resumed_ms"]["p99"]
        out.append(f"Detection of a SIGKILLed pod on PostgreSQL, p99 < 1 s: {fmt(det, 0)} ms "
                   f"({'met' if det is not None and det < 1000 else 'NOT met'}).")
        out.append(f"Recovery to the first resumed chunk on PostgreSQL, p99 < 2 s: {fmt(rec, 0)} ms "
                   f"({'met' if rec is not None and rec < 2000 else 'NOT met'}).")
    for conc in (1, 16):
        for pods in (1, 3):
            r = [x for x in res["throughput"] if x["system"] == "vigil" and x["store"] == "postgres"
                 and x["pods"] == pods and x["concurrency"] == conc]
            if r and r[0]["ratio_vs_dbos"]:
                ratio = r[0]["ratio_vs_dbos"]
                out.append(f"Throughput at least 2x DBOS, PostgreSQL, {pods} pod(s), {conc} client(s): "
                           f"{ratio:.2f}x ({'met' if ratio >= 2 else 'NOT met'}).")
    for conc in (1, 16):
        for store in ("postgres", "sqlite"):
            r = [x for x in res["throughput"] if x["system"] == "vigil" and x["store"] == store
                 and x["pods"] == 1 and x["concurrency"] == conc]
            if r and r[0]["pct_of_commit_limit"]:
                pct = r[0]["pct_of_commit_limit"]
                out.append(f"Steps/s at least 50 % of the one-row commit limit, {store}, 1 pod, {conc} client(s): "
                           f"{pct:.0f} % ({'met' if pct >= 50 else 'NOT met'}).")
    for store in ("postgres", "sqlite"):
        r = [x for x in res["recovery"]["vigil"] if x["store"] == store and x["signal"] == "SIGKILL"]
        if r and r[0]["detection_ms"]["p99"] is not None:
            det = r[0]["detection_ms"]["p99"]
            out.append(f"Detection of a SIGKILLed pod on {store}, p99 at most 25 ms: {fmt(det, 0)} ms "
                       f"({'met' if det <= 25 else 'NOT met'}).")
    dup = sum(r["finished_steps_executed_again"] for r in res["recovery"]["vigil"])
    n = sum(r["n"] for r in res["recovery"]["vigil"])
    out.append(f"Zero duplicate step executions in the recovery runs: {dup} in {n} rounds "
               f"({'met' if dup == 0 else 'NOT met'}); the interrupted stream step is restarted once per round by design.")
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("outdir")
    ap.add_argument("--markdown")
    a = ap.parse_args()
    raw = os.path.join(a.outdir, "raw")
    stamp = os.path.basename(os.path.normpath(a.outdir))
    vig, dbos = recovery(raw)
    tp = throughput(raw)
    dbos_version = next((load(p).get("dbos_version") for p in glob.glob(os.path.join(raw, "tp-dbos-*.json"))), None)
    kills = max((r["n"] for r in vig), default=0)
    res = {
        "stamp": stamp,
        "machine": open(os.path.join(raw, "machine.txt")).read() if os.path.exists(os.path.join(raw, "machine.txt")) else "",
        "params": {"runs": max((load(p).get("runs", 0) for p in glob.glob(os.path.join(raw, "tp-vigil-*.json"))), default=0),
                   "kills": kills},
        "dbos_version": dbos_version,
        "commits": commits(raw),
        "throughput": tp,
        "statements": statements(raw),
        "recovery": {"vigil": vig, "dbos": dbos},
        "console": console(raw),
    }
    res["targets"] = targets(res)
    with open(os.path.join(a.outdir, "results.json"), "w") as f:
        json.dump(res, f, indent=1)
    if a.markdown:
        keep = ""
        if os.path.exists(a.markdown):
            old = open(a.markdown).read()
            if NOTES_MARK in old:
                keep = old.split(NOTES_MARK, 1)[1].lstrip("\n")
        with open(a.markdown, "w") as f:
            f.write(markdown(res, stamp, keep))
    for t in res["targets"]:
        print(t)


if __name__ == "__main__":
    main()
