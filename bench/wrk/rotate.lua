-- GET a different request each time, in turn: BENCH_ROTATE_FILE holds one
-- "path<TAB>token" per line (many instances, or many tokens).  The requests
-- are formatted once, in init() (wrk sets the Host header just before it),
-- so the per-request cost stays small.

local lines = {}
local requests_ = {}
local n, i = 0, 0

local f = assert(io.open(assert(os.getenv("BENCH_ROTATE_FILE"),
                                "BENCH_ROTATE_FILE is not set"), "r"))
for line in f:lines() do
    local path, token = line:match("^(%S+)\t(%S+)$")
    if path then
        n = n + 1
        lines[n] = { path, token }
    end
end
f:close()
assert(n > 0, "no requests in BENCH_ROTATE_FILE")

function init(args)
    for k = 1, n do
        requests_[k] = wrk.format("GET", lines[k][1],
            { ["Host"] = wrk.headers["Host"],
              ["Authorization"] = "Bearer " .. lines[k][2] })
    end
    -- each run starts at another place in the list
    i = math.random(n) - 1
end

function request()
    i = i % n + 1
    return requests_[i]
end
