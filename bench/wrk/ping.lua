-- GET as fast as possible: the load generator's own ceiling.
request = function()
  return wrk.format("GET", nil, nil, nil)
end
