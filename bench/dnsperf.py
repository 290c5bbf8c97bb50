"""Run several dnsperf processes at once (one per ECS subnet) and add up what they say.

dnsperf sends one EDNS option set per process (`-E 8:<hex>`), so a mix of client
subnets needs one process per subnet. All processes are pinned to the load
generator's CPU, run for the same time and share the total rate limit (`-Q`)
equally when one is given.
"""

from __future__ import annotations

import re
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import servers

_NUM = r"([0-9]+(?:\.[0-9]+)?)"


@dataclass(frozen=True)
class Job:
    datafile: Path
    ecs_hex: str | None = None  # RFC 7871 option body for -E 8:<hex>
    edns: bool = True  # -e when there is no ECS option (resolvers send EDNS)
    do: bool = False  # -D: the DNSSEC OK bit (validating resolvers set it)


@dataclass
class Result:
    clients: int = 0
    sent: int = 0
    completed: int = 0
    lost: int = 0
    qps: float = 0.0
    avg_latency_s: float = 0.0
    max_latency_s: float = 0.0
    runtime_s: float = 0.0
    rcodes: dict[str, int] = field(default_factory=dict)
    target_qps: float | None = None
    server_cpu: float | None = None  # server CPU seconds / wall seconds during the run
    server_cpu_s: float | None = None  # server CPU seconds during the run
    errors: list[str] = field(default_factory=list)
    # with stats_interval: answered QPS per second of wall clock, summed over all clients
    timeline: list[tuple[int, float]] = field(default_factory=list)
    cpu_busy: dict[int, float] = field(default_factory=dict)  # per CPU, 0..1, all processes
    # with latencies=True (dnsperf -v): percentiles over every answered query
    p50_latency_s: float | None = None
    p99_latency_s: float | None = None
    p999_latency_s: float | None = None

    @property
    def loss_pct(self) -> float:
        return 100.0 * self.lost / self.sent if self.sent else 0.0

    @property
    def noerror_pct(self) -> float:
        return 100.0 * self.rcodes.get("NOERROR", 0) / self.completed if self.completed else 0.0

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["loss_pct"] = self.loss_pct
        return d


def cpu_times() -> dict[int, tuple[int, int]]:
    """Per CPU (busy, total) jiffies from /proc/stat."""
    out: dict[int, tuple[int, int]] = {}
    try:
        for line in Path("/proc/stat").read_text().splitlines():
            if line.startswith("cpu") and line[3:4].isdigit():
                f = line.split()
                v = [int(x) for x in f[1:]]
                idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
                out[int(f[0][3:])] = (sum(v[:8]) - idle, sum(v[:8]))
    except OSError:
        pass
    return out


def parse(text: str) -> dict[str, object]:
    out: dict[str, object] = {}
    pats = {
        "sent": rf"Queries sent:\s+{_NUM}",
        "completed": rf"Queries completed:\s+{_NUM}",
        "lost": rf"Queries lost:\s+{_NUM}",
        "qps": rf"Queries per second:\s+{_NUM}",
        "runtime": rf"Run time \(s\):\s+{_NUM}",
        "avg_latency": rf"Average Latency \(s\):\s+{_NUM}",
        "max_latency": rf"Average Latency \(s\):.*max {_NUM}\)",
    }
    for k, pat in pats.items():
        m = re.search(pat, text)
        if m:
            out[k] = float(m.group(1))
    m = re.search(r"Response codes:\s+(.*)", text)
    if m:
        out["rcodes"] = {
            code: int(n) for code, n in re.findall(r"([A-Z]+) ([0-9]+) \(", m.group(1))
        }
    return out


def run(
    port: int,
    jobs: list[Job],
    seconds: float,
    *,
    total_qps: float | None = None,
    outstanding: int = 10,
    cpu: int | None = 1,
    timeout_s: float = 2.0,
    workdir: Path,
    cpu_probe=None,
    stats_interval: int | None = None,
    latencies: bool = False,
    buffer_kib: int | None = None,
) -> Result:  # type: ignore[no-untyped-def]
    """Run len(jobs) dnsperf processes concurrently against 127.0.0.1:port.

    cpu_probe: optional callable returning the server's CPU seconds (sampled before/after).
    latencies: dnsperf -v (one line per answer with its latency) for percentiles; costs
    dnsperf some CPU, so it is meant for rate-limited runs.
    buffer_kib: dnsperf -b, its sockets' buffer size; large, so that a load
    generator that loses its CPU for a moment does not drop answers itself.
    """
    procs: list[tuple[subprocess.Popen[bytes], Path]] = []
    per_qps = (total_qps / len(jobs)) if total_qps else None
    res = Result(clients=len(jobs), target_qps=total_qps)
    cpu0 = cpu_probe() if cpu_probe else None
    stat0 = cpu_times()
    t0 = time.monotonic()
    try:
        for i, job in enumerate(jobs):
            argv = servers.prefix(cpu, server=False) + [
                "dnsperf",
                "-s",
                "127.0.0.1",
                "-p",
                str(port),
                "-d",
                str(job.datafile),
                "-l",
                f"{seconds:g}",
                "-c",
                "1",
                "-T",
                "1",
                "-q",
                str(outstanding),
                "-t",
                f"{timeout_s:g}",
            ]
            if job.ecs_hex:
                argv += ["-E", f"8:{job.ecs_hex}"]
            elif job.edns:
                argv += ["-e"]
            if job.do:
                argv += ["-D"]
            if per_qps:
                argv += ["-Q", str(max(1, int(round(per_qps))))]
            if stats_interval:
                argv += ["-S", str(stats_interval)]
            if latencies:
                argv += ["-v"]
            if buffer_kib:
                argv += ["-b", str(buffer_kib)]
            out = workdir / f"dnsperf-{port}-{i}.out"
            fh = open(out, "wb")  # noqa: SIM115
            try:
                procs.append(
                    (
                        subprocess.Popen(
                            argv, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                        ),
                        out,
                    )
                )
            finally:
                fh.close()
        deadline = seconds + timeout_s + 30
        for p, _ in procs:
            remaining = max(1.0, deadline - (time.monotonic() - t0))
            try:
                p.wait(remaining)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(5)
                res.errors.append(f"dnsperf pid {p.pid} overran and was killed")
    finally:
        for p, _ in procs:  # Ctrl-C / error: stop the load generators we started
            if p.poll() is None:
                p.kill()
                p.wait(5)
    wall = time.monotonic() - t0
    stat1 = cpu_times()
    for c, (b1, t1) in stat1.items():
        b0, t0_ = stat0.get(c, (b1, t1))
        if t1 > t0_:
            res.cpu_busy[c] = round((b1 - b0) / (t1 - t0_), 3)
    if cpu_probe:
        res.server_cpu_s = cpu_probe() - cpu0
        res.server_cpu = res.server_cpu_s / max(1e-6, min(wall, seconds + 0.5))
    lat_weighted = 0.0
    timeline: dict[int, float] = {}
    each: list[float] = []
    for p, out in procs:
        text = out.read_text(errors="replace")
        d = parse(text)
        if latencies:  # "> NOERROR dl.example.org A 0.000154" ("> T ..." = timed out)
            each.extend(float(x) for x in re.findall(r"^> [A-Z]+ .* ([0-9]+\.[0-9]+)$", text, re.M))
        for ts, q in re.findall(r"^([0-9]{9,}\.[0-9]+): ([0-9.]+)$", text, re.M):
            k = int(float(ts))
            timeline[k] = timeline.get(k, 0.0) + float(q)
        if "sent" not in d:
            res.errors.append(f"dnsperf exit {p.returncode}: {text.strip()[-300:]}")
            continue
        res.sent += int(d["sent"])  # type: ignore[call-overload]
        res.completed += int(d.get("completed", 0))  # type: ignore[call-overload]
        res.lost += int(d.get("lost", 0))  # type: ignore[call-overload]
        res.qps += float(d.get("qps", 0.0))  # type: ignore[arg-type]
        res.runtime_s = max(res.runtime_s, float(d.get("runtime", 0.0)))  # type: ignore[arg-type]
        lat_weighted += float(d.get("avg_latency", 0.0)) * int(d.get("completed", 0))  # type: ignore[arg-type, call-overload]
        res.max_latency_s = max(res.max_latency_s, float(d.get("max_latency", 0.0)))  # type: ignore[arg-type]
        for code, n in dict(d.get("rcodes", {})).items():  # type: ignore[call-overload]
            res.rcodes[code] = res.rcodes.get(code, 0) + n
        out.unlink(missing_ok=True)
    res.avg_latency_s = lat_weighted / res.completed if res.completed else 0.0
    res.timeline = sorted(timeline.items())
    if each:
        each.sort()
        pick = lambda q: each[min(len(each) - 1, int(q * len(each)))]  # noqa: E731
        res.p50_latency_s, res.p99_latency_s, res.p999_latency_s = (
            pick(0.5),
            pick(0.99),
            pick(0.999),
        )
    return res
