-- Header rewrite: every request upstream carries the tenant (from the client's X-Tenant, or
-- the route's default), and every response says which tenant served it.
-- Phases are global functions named after them; each one is optional.

function access(conf, ctx)
  local t = gatehouse.request.get_header("x-tenant") or conf.default_tenant
  if not t:match("^[%w-]+$") or #t > 32 then
    return gatehouse.response.exit(400, { error = "invalid x-tenant" })
  end
  ctx.tenant = t
  gatehouse.service.request.set_header("x-tenant", t)
  gatehouse.service.request.clear_header("x-debug")   -- never forwarded
end

function header_filter(conf, ctx)
  gatehouse.response.set_header("x-tenant", ctx.tenant)
end

function log(conf, ctx)
  gatehouse.log.info("tenant ", ctx.tenant, " status ", gatehouse.response.get_status())
end
