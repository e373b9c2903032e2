-- POST /v1/verify with KVB_BATCH (default 1,000) random keys of the key file per request.
-- The requests are made in init(): KVB_POOL (default 256) per thread, each picked at random,
-- so that the load generator spends its CPU sending, not building JSON.
package.path = os.getenv("KVB_DIR") .. "/?.lua;" .. package.path
local kv = require("kvbench")

setup = kv.setup
done = kv.done

local batch = tonumber(os.getenv("KVB_BATCH") or "1000")
local pool = {}

function init(args)
  kv.load_keys()
  math.randomseed(os.time() * 1000 + thread_id)
  for p = 1, tonumber(os.getenv("KVB_POOL") or "256") do
    local keys = {}
    for i = 1, batch do
      keys[i] = kv.key(math.random(0, kv.count - 1))
    end
    local body = '{"keys": ["' .. table.concat(keys, '", "') .. '"], "client": "bench"}'
    pool[p] = wrk.format(nil, "/v1/verify", nil, body)
  end
  kv.data = nil -- the requests are all made: free the key file's copy
  collectgarbage()
end

function request()
  sent = sent + 1
  return pool[math.random(1, #pool)]
end

function response(status, headers, body)
  kv.check(status, body, "valid", batch)
end
