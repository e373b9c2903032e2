-- POST /v1/redeem, each request a distinct key never redeemed before, with a unique order id.
-- Keys KVB_FIRST .. KVB_LAST-1 of the key file are split into one contiguous range per wrk thread,
-- used in order; a thread that reaches the end of its range stops (counted in `exhausted`:
-- run.py then fails the run). Order ids: KVB_RUN-<thread>-<n>.
package.path = os.getenv("KVB_DIR") .. "/?.lua;" .. package.path
local kv = require("kvbench")

setup = kv.setup
done = kv.done

local run = kv.env("KVB_RUN")
local next_key, stop_key

function init(args)
  kv.load_keys()
  local low = tonumber(kv.env("KVB_FIRST"))
  local high = math.min(tonumber(kv.env("KVB_LAST")), kv.count)
  local share = math.floor((high - low) / thread_count)
  first = low + thread_id * share -- a global: done() reports it
  next_key, stop_key = first, first + share
end

function request()
  if next_key >= stop_key then
    exhausted = 1
    wrk.thread:stop()
    return wrk.format("GET", "/healthz", {}, nil)
  end
  sent = sent + 1
  local body = '{"key": "' .. kv.key(next_key) .. '", "order_id": "' .. run .. "-" .. thread_id .. "-" .. sent
    .. '", "client": "bench"}'
  next_key = next_key + 1
  return wrk.format(nil, "/v1/redeem", nil, body)
end

function response(status, headers, body)
  kv.check(status, body, "accepted", 1)
end
