-- A storefront's purchase: POST /v1/hold of a distinct, never redeemed key for a new order, and once
-- that is answered `held`, POST /v1/confirm of the order (answered `accepted`). Keys KVB_FIRST ..
-- KVB_LAST-1 of the key file are split into one contiguous range per wrk thread, as redeem.lua does;
-- `sent` counts the holds (the keys used). Order ids: KVB_RUN-<thread>-<n>.
package.path = os.getenv("KVB_DIR") .. "/?.lua;" .. package.path
local kv = require("kvbench")

setup = kv.setup
done = kv.done

local run = kv.env("KVB_RUN")
local waiting, first_waiting, last_waiting = {}, 1, 0 -- orders answered `held`, waiting for their confirm

init = kv.init_range

function request()
  if first_waiting <= last_waiting then -- a confirm whose hold is on disk comes first
    local order = waiting[first_waiting]
    waiting[first_waiting] = nil
    first_waiting = first_waiting + 1
    return wrk.format(nil, "/v1/confirm", nil, '{"order_id": "' .. order .. '"}')
  end
  local key, order = kv.next_order(run)
  if key == nil then
    return wrk.format("GET", "/healthz", {}, nil)
  end
  local body = '{"key": "' .. key .. '", "order_id": "' .. order .. '", "ttl": 600, "client": "bench"}'
  return wrk.format(nil, "/v1/hold", nil, body)
end

function response(status, headers, body)
  if body:find('"results"', 1, true) then -- a confirm's answer: one result per key of the order
    local before = unexpected
    kv.check(status, body, "accepted", 1)
    if status == 200 and unexpected == before then
      confirmed = confirmed + 1
    end
    return
  end
  local before = unexpected
  kv.check(status, body, "held", 1)
  local order = status == 200 and unexpected == before and body:match('"order_id":%s*"([^"]*)"')
  if order then
    held = held + 1
    last_waiting = last_waiting + 1
    waiting[last_waiting] = order
  end
end
