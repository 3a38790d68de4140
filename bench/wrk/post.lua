-- POST the same body on every request: BENCH_BODY_FILE names the file that
-- holds it, BENCH_CONTENT_TYPE its type (default application/json).

local f = assert(io.open(assert(os.getenv("BENCH_BODY_FILE"),
                                "BENCH_BODY_FILE is not set"), "rb"))
wrk.method = "POST"
wrk.body = f:read("*a")
f:close()
wrk.headers["Content-Type"] = os.getenv("BENCH_CONTENT_TYPE")
                              or "application/json"
