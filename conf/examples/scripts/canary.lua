-- Canary split: `X-Canary: 1` always goes to the canary; otherwise a stable share of users
-- (by X-User-Id) does, so one user never flips between versions. Responses from the canary
-- are not cached (the cache is keyed by URL).

local function bucket(id)
  -- a small stable hash of the user id into 0..99
  local h = 0
  for i = 1, #id do
    h = (h * 31 + id:byte(i)) % 1000003
  end
  return h % 100
end

function access(conf, ctx)
  local forced = gatehouse.request.get_header("x-canary")
  local user = gatehouse.request.get_header("x-user-id")
  if forced == "1" or (forced ~= "0" and user and bucket(user) < conf.percent) then
    gatehouse.service.set_upstream(conf.upstream)
    ctx.canary = true
  end
end

function header_filter(conf, ctx)
  if ctx.canary then
    gatehouse.response.set_header("x-canary", "1")
  end
end
