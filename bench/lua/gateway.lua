-- The peer an OpenResty user would write: Upstash-style GET
-- /redis/{id}/{command}/{args...} and POST /redis/{id} with a JSON array,
-- a Bearer token checked by its SHA-256 against one configured key, one
-- instance, a keepalive pool to Redis, and {"result": ...} from cjson.
--
-- nginx.conf:  init_by_lua_block { require("gateway").init{ ... } }
--              location /redis/ { content_by_lua_block {
--                  require("gateway").handle() } }

local ffi = require "ffi"
local cjson = require "cjson.safe"

local ngx = ngx
local byte, char, lower, sub = string.byte, string.char, string.lower,
                                string.sub
local unpack = unpack

ffi.cdef [[
unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);
]]

local digest = ffi.new("unsigned char[32]")

local _M = {}
local conf, redis

-- conf: redis_module ("resty.redis" or Debian's "nginx.redis"), redis_host,
-- redis_port, instance (its id), key_sha256 (64 hex digits), pool_size
function _M.init(c)
    conf = c
    redis = require(c.redis_module)
    conf.key = c.key_sha256:lower():gsub("%x%x", function(h)
        return char(tonumber(h, 16))
    end)
end

local function reply(status, body)
    ngx.status = status
    ngx.header["Content-Type"] = "application/json"
    ngx.print(cjson.encode(body))
end

-- the 32 digest bytes compared in full, whatever the first difference
local function token_ok(token)
    ffi.C.SHA256(token, #token, digest)
    local key, diff = conf.key, 0
    for i = 1, 32 do
        if digest[i - 1] ~= byte(key, i) then
            diff = diff + 1
        end
    end
    return diff == 0
end

function _M.handle()
    local auth = ngx.var.http_authorization
    if not auth or sub(auth, 1, 7) ~= "Bearer " or not token_ok(sub(auth, 8))
    then
        return reply(401, { error = "Unauthorized" })
    end

    local id, rest = ngx.var.uri:match("^/redis/([^/]+)(.*)$")
    if id ~= conf.instance then
        return reply(404, { error = "instance not found" })
    end

    local cmd
    if rest == "" or rest == "/" then
        if ngx.req.get_method() ~= "POST" then
            return reply(405, { error = "POST a JSON array" })
        end
        ngx.req.read_body()
        local body = ngx.req.get_body_data()
        cmd = body and cjson.decode(body)
        if type(cmd) ~= "table" or type(cmd[1]) ~= "string" then
            return reply(400, { error = "expected a JSON array of strings" })
        end
    else
        cmd = {}
        for seg in rest:gmatch("[^/]+") do
            cmd[#cmd + 1] = ngx.unescape_uri(seg)
        end
    end

    local red = redis:new()
    red:set_timeout(5000)
    local ok, err = red:connect(conf.redis_host, conf.redis_port)
    if not ok then
        return reply(500, { error = "could not connect to Redis: " .. err })
    end

    local res
    res, err = red[lower(cmd[1])](red, unpack(cmd, 2))
    if res == nil then
        red:close()
        return reply(500, { error = err })
    end
    red:set_keepalive(10000, conf.pool_size)

    if res == false then                  -- an error reply from Redis
        return reply(400, { error = err })
    end
    if res == ngx.null then
        res = cjson.null
    end
    return reply(200, { result = res })
end

return _M
