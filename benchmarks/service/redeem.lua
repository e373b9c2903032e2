-- POST /v1/redeem, each request a distinct key never redeemed before, with a unique order id.
-- Keys KVB_FIRST .. KVB_LAST-1 of the key file are split into one contiguous range per wrk thread,
-- used in order; a thread that reaches the end of its range stops (counted in `exhausted`:
-- run.py then fails the run). Order ids: KVB_RUN-<thread>-<n>.
package.path = os.getenv("KVB_DIR") .. "/?.lua;" .. package.path
local kv = require("kvbench")

setup = kv.setup
done = kv.done

local run = kv.env("KVB_RUN")
init = kv.init_range

function request()
  local key, order = kv.next_order(run)
  if key == nil then
    return wrk.format("GET", "/healthz", {}, nil)
  end
  local body = '{"key": "' .. key .. '", "order_id": "' .. order .. '", "client": "bench"}'
  return wrk.format(nil, "/v1/redeem", nil, body)
end

function response(status, headers, body)
  kv.check(status, body, "accepted", 1)
end
