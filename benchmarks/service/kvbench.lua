-- Shared by the wrk scripts of benchmarks/service/run.py: settings from the environment, the key
-- file, per-thread counters and the JSON summary done() writes. Never prints a key or the token.
--
-- Environment (set by run.py): KVB_KEYS (file of keys, one 39-character key and "\n" a line),
-- KVB_TOKEN (bearer token), KVB_THREADS (wrk -t), KVB_OUT (where done() writes its JSON).
local M = {}

M.WIDTH = 40 -- bytes a line of the key file: the key and "\n"

function M.env(name)
  local value = os.getenv(name)
  if value == nil or value == "" then
    error("kvbench: the environment variable " .. name .. " is not set (run benchmarks/service/run.py)")
  end
  return value
end

-- Requests: POST with JSON and the bearer token, in every Lua state.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. M.env("KVB_TOKEN")

-- The key file, read whole into one string (fixed-width lines: M.key(i) is a substring).
function M.load_keys()
  local f = assert(io.open(M.env("KVB_KEYS"), "rb"))
  M.data = f:read("*a")
  f:close()
  if #M.data == 0 or #M.data % M.WIDTH ~= 0 then
    error("kvbench: the key file is not made of " .. M.WIDTH .. "-byte lines")
  end
  M.count = #M.data / M.WIDTH
end

-- Key i, for 0 <= i < M.count.
function M.key(i)
  local at = i * M.WIDTH
  return M.data:sub(at + 1, at + M.WIDTH - 1)
end

-- This thread's share of keys KVB_FIRST .. KVB_LAST-1: one contiguous range per wrk thread, used in order.
function M.init_range()
  M.load_keys()
  local low = tonumber(M.env("KVB_FIRST"))
  local high = math.min(tonumber(M.env("KVB_LAST")), M.count)
  local share = math.floor((high - low) / thread_count)
  first = low + thread_id * share -- a global: done() reports it
  M.next_key, M.stop_key = first, first + share
end

-- The next unused key of this thread and a new order id (RUN-<thread>-<n>), or nil once the range is used
-- up: the thread then stops (counted in `exhausted`: run.py fails the run).
function M.next_order(run)
  if M.next_key >= M.stop_key then
    exhausted = 1
    wrk.thread:stop()
    return nil
  end
  sent = sent + 1
  local key = M.key(M.next_key)
  M.next_key = M.next_key + 1
  return key, run .. "-" .. thread_id .. "-" .. sent
end

-- Counters: globals of each thread's state, read back by done() through thread:get().
sent, answered, non2xx, unexpected, exhausted = 0, 0, 0, 0, 0
held, confirmed = 0, 0 -- holdconfirm.lua: holds answered `held`, confirms answered `accepted`
first_problem, other_status = "", ""

-- How many times `needle` occurs in `body` (plain text, no patterns).
function M.occurrences(body, needle)
  local n, at = 0, 1
  while true do
    local found = body:find(needle, at, true)
    if found == nil then
      return n
    end
    n = n + 1
    at = found + #needle
  end
end

-- Check one answer: 2xx, and `expected` results with status `status` in it.
function M.check(status, body, want, expected)
  answered = answered + 1
  if status < 200 or status > 299 then
    non2xx = non2xx + 1
    if first_problem == "" then -- the problem type only: never a body (it could quote input)
      first_problem = status .. " " .. (body:match('"type":%s*"([^"]*)"') or "")
    end
    return
  end
  local got = M.occurrences(body, '"status": "' .. want .. '"')
  if got ~= expected then
    unexpected = unexpected + math.abs(expected - got)
    if other_status == "" then
      for s in body:gmatch('"status":%s*"([^"]*)"') do
        if s ~= want then
          other_status = s
          break
        end
      end
      if other_status == "" then
        other_status = "(" .. got .. " of " .. expected .. " results '" .. want .. "')"
      end
    end
  end
end

-- setup() and done() run in the main Lua state; each thread gets its number.
local threads = {}

function M.setup(thread)
  thread:set("thread_id", #threads)
  thread:set("thread_count", tonumber(M.env("KVB_THREADS")))
  table.insert(threads, thread)
end

local function json_value(v)
  if type(v) == "number" then
    if v ~= v or v == math.huge or v == -math.huge then
      return "null"
    end
    return string.format("%.17g", v)
  end
  return '"' .. tostring(v):gsub('[%c"\\]', function(c) return string.format("\\u%04x", c:byte()) end) .. '"'
end

local function json_object(t)
  local parts = {}
  for k, v in pairs(t) do
    if type(v) == "table" then
      table.insert(parts, json_value(k) .. ": " .. json_object(v))
    else
      table.insert(parts, json_value(k) .. ": " .. json_value(v))
    end
  end
  return "{" .. table.concat(parts, ", ") .. "}"
end

function M.done(summary, latency, requests)
  local out = {
    requests = summary.requests,
    duration_us = summary.duration,
    bytes = summary.bytes,
    errors = summary.errors,
    latency_us = {
      mean = latency.mean, max = latency.max, stdev = latency.stdev,
      p50 = latency:percentile(50), p90 = latency:percentile(90),
      p99 = latency:percentile(99), p999 = latency:percentile(99.9),
    },
    sent = 0, answered = 0, non2xx = 0, unexpected = 0, exhausted = 0, held = 0, confirmed = 0,
    first_problem = "", other_status = "", per_thread = {},
  }
  for i, thread in ipairs(threads) do
    local mine = {}
    for _, name in ipairs({ "sent", "answered", "non2xx", "unexpected", "exhausted", "held", "confirmed" }) do
      mine[name] = thread:get(name) or 0
      out[name] = out[name] + mine[name]
    end
    for _, name in ipairs({ "first_problem", "other_status" }) do
      local value = thread:get(name) or ""
      if out[name] == "" then
        out[name] = value
      end
    end
    mine.first = thread:get("first") or 0
    out.per_thread[tostring(i - 1)] = mine
  end
  local f = assert(io.open(M.env("KVB_OUT"), "w"))
  f:write(json_object(out), "\n")
  f:close()
end

return M
