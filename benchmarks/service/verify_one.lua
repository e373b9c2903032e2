-- POST /v1/verify with one random key of the key file per request (every key valid).
package.path = os.getenv("KVB_DIR") .. "/?.lua;" .. package.path
local kv = require("kvbench")

setup = kv.setup
done = kv.done

function init(args)
  kv.load_keys()
  math.randomseed(os.time() * 1000 + thread_id)
end

function request()
  sent = sent + 1
  local body = '{"keys": ["' .. kv.key(math.random(0, kv.count - 1)) .. '"], "client": "bench"}'
  return wrk.format(nil, "/v1/verify", nil, body)
end

function response(status, headers, body)
  kv.check(status, body, "valid", 1)
end
