-- POST /emails/verify-email/batch with BENCH_BATCH mails (default 100), each to a new address.
-- BENCH_API_KEY: the Bearer key; BENCH_PREFIX keeps runs apart.
local key = os.getenv("BENCH_API_KEY") or ""
local prefix = os.getenv("BENCH_PREFIX") or "wrk"
local size = tonumber(os.getenv("BENCH_BATCH") or "100")
local counter = 0
local headers = {
  ["Content-Type"] = "application/json",
  ["Authorization"] = "Bearer " .. key,
}

request = function()
  local items = {}
  for i = 1, size do
    counter = counter + 1
    items[i] = string.format(
      '{"to":"%s-%d@example.com","params":{"verification_url":"https://proworks.jp/verify?token=%s%d"},"user_id":"user-%d"}',
      prefix, counter, prefix, counter, counter)
  end
  return wrk.format("POST", nil, headers, '{"emails":[' .. table.concat(items, ",") .. ']}')
end
