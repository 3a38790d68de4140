-- Prepended to every wrk script of bench/run (and used alone for plain
-- GETs): one machine-readable line at the end of a run.  Defining only
-- done() keeps wrk's fast path (a static request, no Lua per request).

function done(summary, latency, requests)
    local e = summary.errors
    io.write(string.format(
        "BENCH requests=%d duration_us=%d bytes=%d p50_us=%d p99_us=%d " ..
        "connect=%d read=%d write=%d status=%d timeout=%d\n",
        summary.requests, summary.duration, summary.bytes,
        latency:percentile(50), latency:percentile(99),
        e.connect, e.read, e.write, e.status, e.timeout))
end
