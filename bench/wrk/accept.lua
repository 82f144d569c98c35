-- POST /emails/verify-email, each request to a new address (a new recipient row, as in real
-- sign-ups). BENCH_API_KEY: the Bearer key; BENCH_PREFIX keeps runs apart.
local key = os.getenv("BENCH_API_KEY") or ""
local prefix = os.getenv("BENCH_PREFIX") or "wrk"
local counter = 0
local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Bearer " .. key,
}

request = function()
  counter = counter + 1
  local body = string.format(
    '{"to":"%s-%d@example.com","params":{"verification_url":"https://proworks.jp/verify?token=%s%d"},"user_id":"user-%d"}',
    prefix, counter, prefix, counter, counter)
  return wrk.format("POST", nil, headers, body)
end
