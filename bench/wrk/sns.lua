-- POST /sns/ses-events as SNS does, each body a signed notification read from the file in
-- BENCH_SNS_BODIES (one JSON per line), in order; the bench counts what was applied.
local path = os.getenv("BENCH_SNS_BODIES")
local bodies = {}
for line in io.lines(path) do
  bodies[#bodies + 1] = line
end
local i = 0
local headers = {
  ["Content-Type"] = "text/plain; charset=UTF-8",
  ["x-amz-sns-message-type"] = "Notification",
  ["User-Agent"] = "Amazon Simple Notification Service Agent",
}

request = function()
  i = i + 1
  if i > #bodies then
    i = 1
  end
  return wrk.format("POST", nil, headers, bodies[i])
end
