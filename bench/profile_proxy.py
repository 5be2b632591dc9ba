"""Profile graygate's request path under the proxy bench's load, with py-spy.

    python bench/profile_proxy.py [--duration S] [--rate HZ] [--native] [--processes N]
                                  [--connections N] [--top N] [--out DIR] [--source DIR]
                                  [--writer]

Starts what ``bench_proxy.py`` starts (nginx primary and canary on the load CPUs, a scratch
database, ``graygate serve --role proxy`` on the other CPUs, mirror sample 1.0, recorder
on), drives it with wrk at its peak (64 connections) and samples graygate's process(es)
with ``py-spy record --format raw`` (``--native``: C frames of uvloop, httptools, aiohttp's
extensions too; ``--writer``: the record writer process instead of the proxy's). Then it
prints, and writes to ``DIR/profile-<time>.md``, the top entries by own time (the sampled
frame) and by cumulative time (every function on the stack, once per sample), as a share
of the samples in which a thread held the GIL (``py-spy --gil``: a thread blocked in a C
call, as the idle workers of the default executor, is not taken for a busy one). The raw
stacks go beside it (``.txt``: ``flamegraph.pl`` or speedscope read them).

Also prints the proxy's CPU per request in the profiled window and in an unprofiled one
just before it: py-spy stops the process to sample it, so the profiled figure is higher.
Needs ``py-spy`` (PyPI; sampling another process needs ptrace: root, or
``kernel.yama.ptrace_scope=0``), ``wrk``, nginx and PostgreSQL as ``bench_proxy.py``.
"""

from __future__ import annotations

import argparse
import collections
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_proxy as bp

__all__ = ["aggregate", "main"]


def aggregate(raw: str) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Total samples, own samples and cumulative samples by frame, from py-spy's raw
    (collapsed) output: one ``frame;frame;...;leaf COUNT`` line per distinct stack."""
    total = 0
    own: collections.Counter[str] = collections.Counter()
    cumulative: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        own[frames[-1]] += n
        for frame in set(frames):
            cumulative[frame] += n
    return total, own, cumulative


# Where a sample's time goes, by the first rule that matches its stack (frames as py-spy
# names them, ``function (file:line)``): (component, test on the leaf, test on any frame).
COMPONENTS: list[tuple[str, tuple[str, ...], tuple[str, ...]]] = [
    ("metrics (prometheus_client)", ("prometheus_client/", "proxy/metrics.py"), ()),
    (
        "recording: building the record (Proxy._finish: decode, redact, endpoint)",
        (),
        ("Proxy._finish (",),
    ),
    (
        "recording: the writer (Recorder, proxy/recording, store, asyncpg COPY)",
        (),
        ("proxy/recorder.py", "proxy/recording/", "store/", "asyncpg/", "sqlalchemy/"),
    ),
    (
        "upstream client (proxy/upstream.py: requests written, answers parsed; both sides)",
        (),
        ("proxy/upstream.py",),
    ),
    (
        "server (proxy/server.py, proxy/client_answer.py; aiohttp, multidict, yarl frames)",
        ("proxy/server.py", "proxy/client_answer.py", "aiohttp/", "multidict/", "yarl/"),
        (),
    ),
    ("forward (the client's answer; less the above)", (), ("forward (proxy/forward",)),
    ("mirror task (Mirror._run, fetch; less the above)", (), ("Mirror._run (",)),
    (
        "handler (tag, route, headers, spawn; Proxy.handle less the above)",
        (),
        ("Proxy.handle (", "Proxy.handle_shadow ("),
    ),
    ("event loop (uvloop, asyncio tasks and futures)", (), ("asyncio/", "uvloop/")),
]
OTHER = "other"


def components(raw: str) -> collections.Counter[str]:
    """Samples by :data:`COMPONENTS` (first match), from py-spy's raw output."""
    out: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        leaf = frames[-1]
        name = OTHER
        for component, leaf_has, stack_has in COMPONENTS:
            if any(x in leaf for x in leaf_has) or any(x in f for f in frames for x in stack_has):
                name = component
                break
        out[name] += int(count)
    return out


TRUNK = 0.97  # frames on more of the stacks than this are the process's trunk (main, loop)


def _table(
    title: str, counts: collections.Counter[str], total: int, top: int, *, trunk: bool = True
) -> list[str]:
    lines = [f"### {title}", "", "| % | samples | function (file:line) |", "| ---: | ---: | --- |"]
    shown = 0
    for frame, n in counts.most_common():
        if shown == top:
            break
        if not trunk and n >= TRUNK * total:
            continue
        lines.append(f"| {100.0 * n / total:.1f} | {n} | `{frame}` |")
        shown += 1
    return [*lines, ""]


def _role(pid: int) -> str:
    """``pid``'s part: a proxy process or a record writer (``graygate record-writer``)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return f"{pid}"
    return f"record writer {pid}" if b"record-writer" in cmdline else f"proxy {pid}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=20.0, help="seconds sampled")
    ap.add_argument("--rate", type=int, default=250, help="samples per second")
    ap.add_argument("--native", action="store_true", help="C frames too (slower sampling)")
    ap.add_argument("--processes", type=int, default=1)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--out", default=str(bp.RESULTS_DIR), help="where the tables go")
    ap.add_argument("--source", default=None, help="graygate from this source tree")
    ap.add_argument(
        "--writer",
        action="store_true",
        help="sample the record writer process(es) instead of the proxy's",
    )
    args = ap.parse_args(argv)
    for tool in ("wrk", "py-spy"):
        if not shutil.which(tool):
            print(f"profile_proxy: {tool} is not installed", file=sys.stderr)
            return 2

    main_place, _ = bp.placements("split")
    settings = bp.Settings(
        duration=args.duration,
        warmup=3.0,
        c1_duration=2.0,
        connections=args.connections,
        repeats=1,
        pinning=main_place.name,
        slow_ms=None,
        quiet_wait=60.0,
        source=Path(args.source).resolve() if args.source else None,
        no_nginx=False,
        main=main_place,
        unpinned=None,
    )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    workdir = Path(tempfile.mkdtemp(prefix="graygate-profile-"))
    bench = bp.Bench(settings, workdir, stamp)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    raw_path = out_dir / f"profile-{stamp}.txt"
    try:
        bench.prepare()
        run = f"profile-{stamp}"
        child, port = bench.start_graygate(run, args.processes, "canary")
        url = f"http://127.0.0.1:{port}{bp.PATH}"
        pids = bp.tree_pids(child.pid)
        bench.wait_quiet()
        bench.wrk(url, args.connections, settings.warmup)

        def window(profiled: bool) -> tuple[dict[str, object], float]:
            spy = None
            if profiled:
                cmd = ["py-spy", "record", "--format", "raw", "--function", "-r", str(args.rate)]
                # Only samples holding the GIL: py-spy takes a thread blocked in a C call
                # (the default executor's idle workers, the loop's epoll) for a busy one.
                cmd += ["--gil"]
                cmd += ["-d", str(round(args.duration) + 2), "-o", str(raw_path)]
                cmd += ["--native"] if args.native else []
                if args.writer:
                    writers = [p for p in pids if _role(p).startswith("record writer")]
                    if not writers:
                        raise bp.BenchError("no record writer process to sample")
                    target = writers[0]  # (with several proxy processes: the first one's)
                else:
                    target = child.pid
                    cmd += ["--subprocesses"] if args.processes > 1 else []
                spy = subprocess.Popen(
                    [*cmd, "-p", str(target)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
                time.sleep(1.0)  # attached before the load starts
            before = [bp.proc_cpu_split(pid) or (0.0, 0.0) for pid in pids]
            res = bench.wrk(url, args.connections, args.duration)
            after = [bp.proc_cpu_split(pid) or (0.0, 0.0) for pid in pids]
            user = sum(b[0] - a[0] for a, b in zip(before, after, strict=True))
            system = sum(b[1] - a[1] for a, b in zip(before, after, strict=True))
            used = user + system
            res["user_share"] = user / used if used else 0.0
            n = max(1, int(res["requests"] or 0))
            res["by_process"] = {
                _role(pid): 1e6 * (b[0] + b[1] - a[0] - a[1]) / n
                for pid, a, b in zip(pids, before, after, strict=True)
            }
            if spy is not None:
                _, err = spy.communicate(timeout=args.duration + 60)
                if spy.returncode != 0:
                    raise bp.BenchError(f"py-spy failed ({spy.returncode}): {err}")
            return res, 1e6 * used / max(1, int(res["requests"] or 0))

        plain, plain_us = window(False)
        profiled, profiled_us = window(True)
    except (bp.BenchError, subprocess.TimeoutExpired, OSError) as exc:
        bp.log(f"profile failed: {exc}")
        return 2
    finally:
        bench.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)

    raw = raw_path.read_text()
    total, own, cumulative = aggregate(raw)
    if not total:
        print("profile_proxy: py-spy took no samples", file=sys.stderr)
        return 2
    m = bp.machine()
    head = [
        f"# graygate proxy profile {stamp}",
        "",
        f"machine: {m['cpu_model']}, {m['cpus']} CPUs, Python {m['python']}; graygate "
        f"{' '.join(bench.graygate)} {'(' + str(settings.source) + ')' if settings.source else ''}"
        f", --processes {args.processes} on CPU {main_place.sut_cpus}"
        f"{' (the record writer sampled)' if args.writer else ''}; wrk "
        f"-c{args.connections} {args.duration:g}s at the peak; py-spy {args.rate} Hz"
        f"{', native' if args.native else ''}, {total} samples holding the GIL",
        "",
        f"unprofiled: {plain['rps']:.0f} req/s, {plain_us:.0f} us CPU per request "
        f"({plain['user_share']:.0%} user, the rest system); profiled: {profiled['rps']:.0f} "
        f"req/s, {profiled_us:.0f} us CPU per request",
        "",
        "unprofiled, by process (us CPU per request): "
        + ", ".join(f"{k} {v:.0f}" for k, v in plain["by_process"].items()),  # type: ignore[attr-defined]
        "",
        "### Where the time goes (first match from the top; shares of the samples)",
        "",
        "| % | component |",
        "| ---: | --- |",
        *(f"| {100.0 * n / total:.1f} | {c} |" for c, n in components(raw).most_common()),
        "",
        *_table(f"Top {args.top} by own time", own, total, args.top),
        *_table(
            f"Top {args.top} by cumulative time (the trunk, on over {TRUNK:.0%} of the "
            "stacks: main, click, the event loop's run, left out)",
            cumulative,
            total,
            args.top,
            trunk=False,
        ),
    ]
    text = "\n".join(head)
    md = out_dir / f"profile-{stamp}.md"
    md.write_text(text)
    print(text)
    print(f"\nraw stacks: {raw_path}\ntables: {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
