//! One sandboxed Lua 5.4 state and the `gatehouse.*` API its scripts call.
//!
//! A [`State`] belongs to one worker thread and one plugin instance (see `super`): it is
//! created from the instance's compiled [`Script`] the first time the thread serves the
//! instance, and used by one phase call at a time, synchronously. The sandbox:
//!
//! - only the base, string, table, math, utf8 and coroutine libraries; `load`, `loadfile`,
//!   `dofile`, `require`, `collectgarbage`, `rawset`, `string.dump` and `print`'s stdout are
//!   gone (`print` writes to gatehouse's log);
//! - globals are read-only once the script has loaded (a write is an error naming it), and so
//!   are the library tables, `gatehouse`, `conf` and every table the script left in a global;
//! - an instruction budget per call (a count hook every [`STEP`] instructions, also in
//!   coroutines; `pcall`, `xpcall` and `coroutine.resume` pass a blown budget, and an
//!   `exit`, on instead of catching them) and a memory limit per state;
//! - the pattern functions (`find`, `match`, `gmatch`, `gsub`) refuse subjects longer than
//!   [`MAX_SUBJECT`]: the count hook does not run inside C functions, so a bounded subject is
//!   what bounds their time.
//!
//! The API functions reach the request through raw pointers that [`State::call`] sets for
//! the length of one call and clears after it (see [`View`]).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{HeaderName, HeaderValue};
use mlua::chunk::ChunkMode;
use mlua::{
    Function, HookTriggers, Lua, LuaOptions, LuaSerdeExt, MultiValue, StdLib, Table, Value, VmState,
};

use crate::api::{Reply, ReplyBody, RequestHeader, RequestInfo, ResponseHeader, VerifiedClaims};

/// Instructions between two budget checks (the budget's granularity).
pub const STEP: u32 = 1000;
/// The longest subject the pattern functions accept, in bytes.
pub const MAX_SUBJECT: usize = 16 * 1024;
/// The most a `gatehouse.log` line keeps, in bytes.
const MAX_LOG_LINE: usize = 2048;
/// Bounds of what `ctx` may carry from one phase to the next.
const MAX_CTX_VALUES: usize = 256;
const MAX_CTX_BYTES: usize = 64 * 1024;
const MAX_CTX_DEPTH: usize = 8;
/// The most entries a table handed to the script has (query args, headers).
const MAX_LISTED: usize = 100;

/// The phases a script may define, in request order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Access,
    HeaderFilter,
    Log,
}

impl Phase {
    pub const ALL: [Phase; 3] = [Phase::Access, Phase::HeaderFilter, Phase::Log];

    pub fn name(self) -> &'static str {
        match self {
            Phase::Access => "access",
            Phase::HeaderFilter => "header_filter",
            Phase::Log => "log",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// A script compiled once per config version: bytecode every thread's state loads.
pub struct Script {
    /// `file:`: one chunk defining the phase functions as globals. Inline: one chunk per
    /// phase, its body (called with `conf, ctx`).
    pub chunks: Vec<Chunk>,
    /// Which phases the script defines.
    pub defines: [bool; 3],
    /// `config:`, handed to every call as `conf` (read-only).
    pub conf: serde_json::Value,
    pub max_instructions: u64,
    pub max_memory: usize,
}

/// One compiled chunk.
pub struct Chunk {
    /// `None` for a file (it defines the phases); `Some(phase)` for an inline phase body.
    pub phase: Option<Phase>,
    pub bytecode: Vec<u8>,
}

/// Why a call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The script raised an error (or misused the API).
    Error(String),
    /// The instruction budget ran out.
    Budget,
    /// The memory limit was reached.
    Memory,
}

impl Failure {
    /// The outcome recorded for the access log and metrics.
    pub fn outcome(&self) -> &'static str {
        match self {
            Failure::Error(_) => "error",
            Failure::Budget => "budget",
            Failure::Memory => "memory",
        }
    }

    /// A short description (bounded).
    pub fn message(&self) -> String {
        match self {
            Failure::Error(m) => truncate(m, 300),
            Failure::Budget => "instruction budget exhausted".into(),
            Failure::Memory => "memory limit reached".into(),
        }
    }

    /// Whether the state should be replaced (it may hold half-updated values).
    pub fn poisons(&self) -> bool {
        !matches!(self, Failure::Error(_))
    }
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A header change.
#[derive(Debug, Clone)]
pub enum HeaderEdit {
    Set(HeaderName, HeaderValue),
    Add(HeaderName, HeaderValue),
    Clear(HeaderName),
}

impl HeaderEdit {
    /// Applies the change to a request's or a response's headers.
    pub fn apply(&self, h: &mut dyn crate::api::HeaderEdit) -> pingora_error::Result<()> {
        match self {
            HeaderEdit::Set(n, v) => h.set(n.clone(), v.clone()),
            HeaderEdit::Add(n, v) => h.add(n.clone(), v.clone()),
            HeaderEdit::Clear(n) => {
                h.remove(n);
                Ok(())
            }
        }
    }
}

/// What one call asked for, applied by the plugin after it.
#[derive(Debug, Default)]
pub struct Out {
    /// Changes to the request that goes upstream (`gatehouse.service.request.*`).
    pub upstream: Vec<HeaderEdit>,
    pub path: Option<String>,
    /// `Some("")` clears the query.
    pub query: Option<String>,
    /// `gatehouse.service.set_upstream`.
    pub upstream_choice: Option<Arc<str>>,
    /// Response header changes made in `access`, applied to whatever the response is.
    pub response: Vec<HeaderEdit>,
    /// `gatehouse.response.exit`.
    pub exit: Option<Reply>,
}

/// What the API functions see during one call. The pointers are set by [`State::call`] from
/// references that outlive the call and are cleared (null) when it returns; a state is used
/// by one thread, one call at a time, so they are never read outside the call they were
/// set for. Outside a call (while the script loads) every request function errors.
struct View {
    phase: Option<Phase>,
    req: *const RequestHeader,
    info: *const RequestInfo,
    /// `header_filter`: the response on its way to the client.
    resp: *mut ResponseHeader,
    /// `log`: the response as it was sent.
    sent: *const ResponseHeader,
    out: Out,
}

// SAFETY: the pointers are only dereferenced during `State::call`, on the thread that set
// them (a `State` is never used by two threads at once: it lives in a `ThreadLocal` cell);
// outside a call they are null.
unsafe impl Send for View {}

impl Default for View {
    fn default() -> Self {
        View {
            phase: None,
            req: std::ptr::null(),
            info: std::ptr::null(),
            resp: std::ptr::null_mut(),
            sent: std::ptr::null(),
            out: Out::default(),
        }
    }
}

impl View {
    /// Ends the call: no request to see any more.
    fn clear(&mut self) {
        self.phase = None;
        self.req = std::ptr::null();
        self.info = std::ptr::null();
        self.resp = std::ptr::null_mut();
        self.sent = std::ptr::null();
    }

    fn req(&self) -> mlua::Result<&RequestHeader> {
        // SAFETY: see `View`
        unsafe { self.req.as_ref() }.ok_or_else(|| outside("the request"))
    }

    fn info(&self) -> mlua::Result<&RequestInfo> {
        // SAFETY: see `View`
        unsafe { self.info.as_ref() }.ok_or_else(|| outside("the request"))
    }

    /// The response headers this phase can read: the one being filtered or the one sent.
    fn response(&self) -> Option<&ResponseHeader> {
        // SAFETY: see `View`
        unsafe { self.resp.as_ref().or(self.sent.as_ref()) }
    }

    fn in_phase(&self, allowed: &[Phase], what: &str) -> mlua::Result<Phase> {
        match self.phase {
            Some(p) if allowed.contains(&p) => Ok(p),
            Some(p) => Err(mlua::Error::runtime(format!(
                "{what} is not available in {}",
                p.name()
            ))),
            None => Err(outside(what)),
        }
    }
}

fn outside(what: &str) -> mlua::Error {
    mlua::Error::runtime(format!("{what} is only available while serving a request"))
}

/// The instruction budget of the call in progress, in [`STEP`]s.
#[derive(Default)]
struct Budget {
    used: AtomicU64,
    limit: AtomicU64,
    exhausted: AtomicBool,
}

impl Budget {
    fn reset(&self, instructions: u64) {
        self.used.store(0, Ordering::Relaxed);
        self.limit
            .store(instructions.div_ceil(u64::from(STEP)), Ordering::Relaxed);
        self.exhausted.store(false, Ordering::Relaxed);
    }
}

/// A per-request value `ctx` carries from one phase to the next (as plain data: the next
/// phase may run on another thread's state).
#[derive(Debug, Clone, PartialEq)]
pub enum Saved {
    Bool(bool),
    Int(i64),
    Num(f64),
    Str(Bytes),
    Table(Vec<(Saved, Saved)>),
}

/// A sandboxed state with a script loaded.
pub struct State {
    lua: Lua,
    budget: Arc<Budget>,
    phases: [Option<Function>; 3],
    conf: Table,
    max_instructions: u64,
}

/// The sandbox's own setup, run before the script with the unrestricted base library.
/// Receives the budget check; returns `freeze` (makes a table read-only) and `seal` (ends
/// the load: globals become read-only).
const PRELUDE: &str = r##"
local stopping, log_info = ...
local error, next, type, tostring, setmetatable, rawlen, select =
      error, next, type, tostring, setmetatable, rawlen, select
local raw_pcall, raw_xpcall, raw_resume = pcall, xpcall, coroutine.resume
-- a spent budget and an exit end the call: what catches errors passes them on
local function check(...)
  local why = stopping()
  if why then error(why, 0) end
  return ...
end
pcall = function(...) return check(raw_pcall(...)) end
xpcall = function(...) return check(raw_xpcall(...)) end
coroutine.resume = function(...) return check(raw_resume(...)) end
local raw = { find = string.find, match = string.match, gmatch = string.gmatch, gsub = string.gsub }
local MAX_SUBJECT = MAX_SUBJECT_VALUE
for name, f in next, raw do
  string[name] = function(s, ...)
    if type(s) == "string" and #s > MAX_SUBJECT then
      error("string." .. name .. ": subject longer than " .. MAX_SUBJECT .. " bytes", 2)
    end
    return f(s, ...)
  end
end
string.dump = nil
getmetatable("").__metatable = false
print = function(...)
  local n, parts = select("#", ...), {}
  for i = 1, n do parts[i] = tostring((select(i, ...))) end
  log_info(table.concat(parts, "\t"))
end
warn = nil
dofile, loadfile, load, require, collectgarbage, rawset = nil, nil, nil, nil, nil, nil
local frozen = setmetatable({}, { __mode = "k" })
local function freeze(t, name)
  if frozen[t] then return t end
  local proxy = setmetatable({}, {
    __index = t,
    __newindex = function(_, k)
      error(name .. " is read-only (writing " .. tostring(k) .. ")", 2)
    end,
    __len = function() return rawlen(t) end,
    __pairs = function() return next, t, nil end,
    __metatable = false,
  })
  frozen[proxy] = true
  for k, v in next, t do
    if type(v) == "table" and v ~= t then
      local inner = type(k) == "string" and (name .. "." .. k) or name
      t[k] = freeze(v, inner)
    end
  end
  return proxy
end
local backing, loading = {}, true
for k, v in next, _G do backing[k] = v end
for _, lib in next, { "string", "table", "math", "utf8", "coroutine", "gatehouse" } do
  backing[lib] = freeze(backing[lib], lib)
end
local env = setmetatable({}, {
  __index = backing,
  __newindex = function(_, k, v)
    if loading then
      backing[k] = v
    else
      error("global '" .. tostring(k) .. "' written while serving a request: globals are " ..
            "read-only once the script has loaded (use local, or ctx)", 2)
    end
  end,
  __pairs = function() return next, backing, nil end,
  __metatable = false,
})
backing._G = env
local function seal()
  loading = false
  for k, v in next, backing do
    if type(v) == "table" and k ~= "_G" then backing[k] = freeze(v, k) end
  end
end
return env, freeze, seal
"##;

impl State {
    /// A new state with `script` loaded. An error names what failed (with the Lua line for
    /// the script's own errors).
    pub fn new(script: &Script, route: Arc<str>) -> Result<State, Failure> {
        let lua = Lua::new_with(
            StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8 | StdLib::COROUTINE,
            LuaOptions::default(),
        )
        .map_err(classify)?;
        let budget = Arc::new(Budget::default());
        let b = budget.clone();
        lua.set_global_hook(
            HookTriggers::new().every_nth_instruction(STEP),
            move |_lua, _debug| {
                let used = b.used.fetch_add(1, Ordering::Relaxed) + 1;
                if used > b.limit.load(Ordering::Relaxed) {
                    b.exhausted.store(true, Ordering::Relaxed);
                    return Err(mlua::Error::runtime("instruction budget exhausted"));
                }
                Ok(VmState::Continue)
            },
        )
        .map_err(classify)?;
        lua.set_app_data(View::default());
        // the limit applies from the start: what the script needs to load counts against it
        lua.set_memory_limit(script.max_memory).map_err(classify)?;
        budget.reset(script.max_instructions);
        let run = || -> mlua::Result<(Table, Function, Function)> {
            lua.globals()
                .raw_set("gatehouse", api(&lua, route.clone())?)?;
            let b = budget.clone();
            let stopping = lua.create_function(move |lua, ()| {
                if b.exhausted.load(Ordering::Relaxed) {
                    return Ok(Some("instruction budget exhausted"));
                }
                let exiting = lua
                    .app_data_ref::<View>()
                    .is_some_and(|v| v.out.exit.is_some());
                Ok(exiting.then_some(EXIT))
            })?;
            let log_route = route.clone();
            let log_info = lua.create_function(move |lua, msg: mlua::LuaString| {
                emit(lua, log::Level::Info, &log_route, &msg.to_string_lossy());
                Ok(())
            })?;
            let prelude = PRELUDE.replace("MAX_SUBJECT_VALUE", &MAX_SUBJECT.to_string());
            lua.load(prelude)
                .set_name("=gatehouse prelude")
                .call::<(Table, Function, Function)>((stopping, log_info))
        };
        let (env, freeze, seal) = run().map_err(classify)?;
        let conf: Table = lua
            .to_value(&script.conf)
            .and_then(|v| match v {
                Value::Table(t) => Ok(t),
                _ => lua.create_table(),
            })
            .and_then(|t| freeze.call::<Table>((t, "conf")))
            .map_err(classify)?;
        let mut phases: [Option<Function>; 3] = [None, None, None];
        for chunk in &script.chunks {
            let f = lua
                .load(&chunk.bytecode[..])
                .set_mode(ChunkMode::Binary)
                .set_environment(env.clone())
                .into_function()
                .map_err(classify)?;
            match chunk.phase {
                Some(p) => phases[p.index()] = Some(f),
                None => {
                    f.call::<()>(()).map_err(|e| classify_with(e, &budget))?;
                    for p in Phase::ALL {
                        if let Value::Function(f) = env.get::<Value>(p.name()).map_err(classify)? {
                            phases[p.index()] = Some(f);
                        }
                    }
                }
            }
        }
        seal.call::<()>(()).map_err(classify)?;
        Ok(State {
            lua,
            budget,
            phases,
            conf,
            max_instructions: script.max_instructions,
        })
    }

    /// Bytes the state holds (the script, its globals, the sandbox).
    #[cfg(test)]
    pub fn used_memory(&self) -> usize {
        self.lua.used_memory()
    }

    /// Whether the script defines `phase`.
    pub fn defines(&self, phase: Phase) -> bool {
        self.phases[phase.index()].is_some()
    }

    /// Calls `phase` with `ctx` (restored from `saved`): what the script asked for, and
    /// `ctx` saved again when `keep_ctx` (a later phase will want it).
    #[allow(clippy::too_many_arguments)]
    pub fn call(
        &self,
        phase: Phase,
        req: &RequestHeader,
        info: &RequestInfo,
        resp: Option<&mut ResponseHeader>,
        sent: Option<&ResponseHeader>,
        saved: Option<&Saved>,
        keep_ctx: bool,
    ) -> Result<(Out, Option<Saved>), Failure> {
        let Some(f) = &self.phases[phase.index()] else {
            return Ok((Out::default(), saved.cloned()));
        };
        {
            let Some(mut v) = self.lua.app_data_mut::<View>() else {
                return Err(Failure::Error("no request view".into()));
            };
            v.phase = Some(phase);
            v.req = req;
            v.info = info;
            v.resp = resp.map_or(std::ptr::null_mut(), |r| r as *mut _);
            v.sent = sent.map_or(std::ptr::null(), |r| r as *const _);
            v.out = Out::default();
        }
        // clears the view however the call ends
        struct Clear<'a>(&'a Lua);
        impl Drop for Clear<'_> {
            fn drop(&mut self) {
                if let Some(mut v) = self.0.app_data_mut::<View>() {
                    v.clear();
                }
            }
        }
        let clear = Clear(&self.lua);
        self.budget.reset(self.max_instructions);
        let result = (|| -> mlua::Result<Option<Saved>> {
            let ctx = match saved {
                Some(s) => match restore(&self.lua, s)? {
                    Value::Table(t) => t,
                    _ => self.lua.create_table()?,
                },
                None => self.lua.create_table()?,
            };
            f.call::<()>((&self.conf, &ctx))?;
            if keep_ctx {
                let mut budget = (MAX_CTX_VALUES, MAX_CTX_BYTES);
                save_table(&ctx, 0, &mut budget, "ctx")
                    .map(|t| (!t.is_empty()).then_some(Saved::Table(t)))
            } else {
                Ok(None)
            }
        })();
        // (the guard's work, and the call's requests taken out, in one borrow)
        let out = match self.lua.app_data_mut::<View>() {
            Some(mut v) => {
                v.clear();
                std::mem::take(&mut v.out)
            }
            None => Out::default(),
        };
        std::mem::forget(clear);
        match result {
            Ok(saved) => Ok((out, saved)),
            // an exit ends the call, through pcall too: it stands
            Err(_) if out.exit.is_some() => Ok((out, None)),
            Err(e) => Err(classify_with(e, &self.budget)),
        }
    }
}

/// The sentinel error `exit` raises to end the call.
const EXIT: &str = "gatehouse: exit";

fn classify_with(e: mlua::Error, budget: &Budget) -> Failure {
    if budget.exhausted.load(Ordering::Relaxed) {
        return Failure::Budget;
    }
    classify(e)
}

/// A Lua error as a [`Failure`].
pub fn classify(e: mlua::Error) -> Failure {
    match root(&e) {
        mlua::Error::MemoryError(_) => Failure::Memory,
        mlua::Error::SyntaxError { message, .. } => Failure::Error(message.clone()),
        // (without the traceback mlua appends)
        mlua::Error::RuntimeError(m) => Failure::Error(
            m.split_once("\nstack traceback:")
                .map_or(m.as_str(), |(head, _)| head)
                .to_string(),
        ),
        other => Failure::Error(other.to_string()),
    }
}

fn root(e: &mlua::Error) -> &mlua::Error {
    match e {
        mlua::Error::CallbackError { cause, .. } => root(cause),
        mlua::Error::WithContext { cause, .. } => root(cause),
        e => e,
    }
}

/// Saves a ctx table as plain data (bounded; functions and userdata are refused).
fn save_table(
    t: &Table,
    depth: usize,
    left: &mut (usize, usize),
    path: &str,
) -> mlua::Result<Vec<(Saved, Saved)>> {
    if depth >= MAX_CTX_DEPTH {
        return Err(mlua::Error::runtime(format!(
            "{path}: ctx nests deeper than {MAX_CTX_DEPTH} tables"
        )));
    }
    let mut out = Vec::new();
    for pair in t.pairs::<Value, Value>() {
        let (k, v) = pair?;
        let key_path = match &k {
            Value::String(s) => format!("{path}.{}", s.to_string_lossy()),
            other => format!("{path}[{}]", other.to_string().unwrap_or_default()),
        };
        let key = save_value(&k, depth, left, &key_path)?;
        let value = save_value(&v, depth, left, &key_path)?;
        out.push((key, value));
    }
    Ok(out)
}

fn save_value(
    v: &Value,
    depth: usize,
    left: &mut (usize, usize),
    path: &str,
) -> mlua::Result<Saved> {
    if left.0 == 0 {
        return Err(mlua::Error::runtime(format!(
            "ctx holds more than {MAX_CTX_VALUES} values"
        )));
    }
    left.0 -= 1;
    Ok(match v {
        Value::Boolean(b) => Saved::Bool(*b),
        Value::Integer(i) => Saved::Int(*i),
        Value::Number(n) => Saved::Num(*n),
        Value::String(s) => {
            let b = s.as_bytes();
            if b.len() > left.1 {
                return Err(mlua::Error::runtime(format!(
                    "ctx holds more than {MAX_CTX_BYTES} bytes of strings"
                )));
            }
            left.1 -= b.len();
            Saved::Str(Bytes::copy_from_slice(&b))
        }
        Value::Table(t) => Saved::Table(save_table(t, depth + 1, left, path)?),
        other => {
            return Err(mlua::Error::runtime(format!(
                "{path}: a {} cannot be kept in ctx between phases",
                other.type_name()
            )))
        }
    })
}

fn restore(lua: &Lua, s: &Saved) -> mlua::Result<Value> {
    Ok(match s {
        Saved::Bool(b) => Value::Boolean(*b),
        Saved::Int(i) => Value::Integer(*i),
        Saved::Num(n) => Value::Number(*n),
        Saved::Str(b) => Value::String(lua.create_string(b)?),
        Saved::Table(items) => {
            let t = lua.create_table_with_capacity(0, items.len())?;
            for (k, v) in items {
                t.raw_set(restore(lua, k)?, restore(lua, v)?)?;
            }
            Value::Table(t)
        }
    })
}

/// Runs `f` with the view of the call in progress.
fn view<R>(lua: &Lua, f: impl FnOnce(&mut View) -> mlua::Result<R>) -> mlua::Result<R> {
    let mut v = lua
        .app_data_mut::<View>()
        .ok_or_else(|| mlua::Error::runtime("gatehouse API used re-entrantly"))?;
    f(&mut v)
}

/// A setter allowed in the `access` phase only: `check` turns the script's string into the
/// value (or says why it is not one), `set` keeps it for the proxy.
fn access_setter<T: 'static>(
    lua: &Lua,
    what: &'static str,
    check: fn(&str) -> Result<T, &'static str>,
    set: fn(&mut Out, T),
) -> mlua::Result<Function> {
    lua.create_function(move |lua, s: mlua::LuaString| {
        let s = s.to_str()?;
        let value = check(&s)
            .map_err(|why| mlua::Error::runtime(format!("{what}: '{}' {why}", truncate(&s, 64))))?;
        view(lua, |v| {
            v.in_phase(&[Phase::Access], what)?;
            set(&mut v.out, value);
            Ok(())
        })
    })
}

fn header_name(name: &[u8], what: &str) -> mlua::Result<HeaderName> {
    HeaderName::from_bytes(name).map_err(|_| {
        mlua::Error::runtime(format!(
            "{what}: invalid header name '{}'",
            truncate(&String::from_utf8_lossy(name), 64)
        ))
    })
}

fn header_value(value: &Value, what: &str) -> mlua::Result<HeaderValue> {
    let invalid = || {
        mlua::Error::runtime(format!(
            "{what}: invalid header value (control characters?)"
        ))
    };
    let bytes: Vec<u8> = match value {
        Value::String(s) => return HeaderValue::from_bytes(&s.as_bytes()).map_err(|_| invalid()),
        Value::Integer(i) => return Ok(HeaderValue::from(*i)),
        Value::Number(n) => n.to_string().into_bytes(),
        other => {
            return Err(mlua::Error::runtime(format!(
                "{what}: a header value must be a string or a number, not a {}",
                other.type_name()
            )))
        }
    };
    HeaderValue::from_bytes(&bytes).map_err(|_| invalid())
}

/// Names a script may not set or clear: they frame the message, the gateway owns them.
fn framing(name: &HeaderName) -> bool {
    use http::header::*;
    [
        CONTENT_LENGTH,
        TRANSFER_ENCODING,
        CONNECTION,
        UPGRADE,
        TE,
        TRAILER,
    ]
    .iter()
    .any(|h| h == name)
        || name.as_str() == "keep-alive"
        || name.as_str() == "proxy-connection"
}

fn edit(
    kind: u8,
    name: &mlua::LuaString,
    value: Option<&Value>,
    what: &str,
) -> mlua::Result<HeaderEdit> {
    let n = header_name(&name.as_bytes(), what)?;
    if framing(&n) {
        return Err(mlua::Error::runtime(format!(
            "{what}: '{n}' frames the message and is managed by the gateway"
        )));
    }
    Ok(match (kind, value) {
        (b's', Some(v)) => HeaderEdit::Set(n, header_value(v, what)?),
        (b'a', Some(v)) => HeaderEdit::Add(n, header_value(v, what)?),
        _ => HeaderEdit::Clear(n),
    })
}

/// Writes a script's log line to gatehouse's log, with the route and request id.
fn emit(lua: &Lua, level: log::Level, route: &str, msg: &str) {
    let id = lua
        .app_data_ref::<View>()
        .and_then(|v| {
            // SAFETY: see `View`
            unsafe { v.info.as_ref() }.map(|i| i.request_id.clone())
        })
        .unwrap_or_default();
    log::log!(target: "gatehouse::lua", level, "route={route} request_id={id} {}", truncate(msg, MAX_LOG_LINE));
}

fn join_args(args: &MultiValue) -> String {
    let mut out = String::new();
    for v in args {
        let s = match v {
            Value::String(s) => s.to_string_lossy(),
            Value::Nil => "nil".into(),
            other => other
                .to_string()
                .unwrap_or_else(|_| other.type_name().into()),
        };
        out.push_str(&s);
        if out.len() > MAX_LOG_LINE {
            break;
        }
    }
    out
}

/// Percent-decodes a query component (`+` is a space).
fn decode_component(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < s.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(s[i + 1]), hex(s[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    out
}

/// The query's `(name, value)` pairs, decoded, at most [`MAX_LISTED`].
fn query_pairs(query: &str) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
    query
        .split('&')
        .filter(|p| !p.is_empty())
        .take(MAX_LISTED)
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (
                decode_component(k.as_bytes()),
                decode_component(v.as_bytes()),
            )
        })
}

/// A table of names to values; a name seen more than once maps to an array of its values.
fn multi_table<'a>(
    lua: &Lua,
    pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    for (k, v) in pairs.take(MAX_LISTED) {
        let key = lua.create_string(k)?;
        let value = lua.create_string(v)?;
        match t.raw_get::<Value>(&key)? {
            Value::Nil => t.raw_set(key, value)?,
            Value::Table(arr) => arr.raw_push(value)?,
            first => {
                let arr = lua.create_sequence_from([first, Value::String(value)])?;
                t.raw_set(key, arr)?;
            }
        }
    }
    Ok(t)
}

/// `set_header(name, value)`, `add_header(name, value)` and `clear_header(name)` in `t`
/// (named `<prefix>.<function>` in errors), each handing its checked edit to `apply`.
fn header_setters(
    lua: &Lua,
    t: &Table,
    prefix: &str,
    apply: fn(&mut View, HeaderEdit, &str) -> mlua::Result<()>,
) -> mlua::Result<()> {
    for (name, kind) in [
        ("set_header", b's'),
        ("add_header", b'a'),
        ("clear_header", b'c'),
    ] {
        let what = format!("{prefix}.{name}");
        t.raw_set(
            name,
            lua.create_function(move |lua, (n, value): (mlua::LuaString, Value)| {
                let value = (kind != b'c').then_some(&value);
                if kind != b'c' && matches!(value, Some(Value::Nil)) {
                    return Err(mlua::Error::runtime(format!("{what}: no value")));
                }
                let e = edit(kind, &n, value, &what)?;
                view(lua, |v| apply(v, e, &what))
            })?,
        )?;
    }
    Ok(())
}

/// The `gatehouse` table.
fn api(lua: &Lua, route: Arc<str>) -> mlua::Result<Table> {
    use Phase::*;
    let gh = lua.create_table()?;
    let request = lua.create_table()?;
    let client = lua.create_table()?;
    let service = lua.create_table()?;
    let service_request = lua.create_table()?;
    let response = lua.create_table()?;
    let logt = lua.create_table()?;
    let json = lua.create_table()?;
    const ANY: &[Phase] = &[Access, HeaderFilter, Log];

    request.raw_set(
        "get_method",
        lua.create_function(|lua, ()| view(lua, |v| lua.create_string(v.req()?.method.as_str())))?,
    )?;
    request.raw_set(
        "get_path",
        lua.create_function(|lua, ()| view(lua, |v| lua.create_string(v.req()?.uri.path())))?,
    )?;
    request.raw_set(
        "get_raw_query",
        lua.create_function(|lua, ()| {
            view(lua, |v| {
                lua.create_string(v.req()?.uri.query().unwrap_or(""))
            })
        })?,
    )?;
    request.raw_set(
        "get_query_arg",
        lua.create_function(|lua, name: mlua::LuaString| {
            view(lua, |v| {
                let q = v.req()?.uri.query().unwrap_or("");
                let name = name.as_bytes();
                match query_pairs(q).find(|(k, _)| k[..] == name[..]) {
                    Some((_, value)) => Ok(Value::String(lua.create_string(value)?)),
                    None => Ok(Value::Nil),
                }
            })
        })?,
    )?;
    request.raw_set(
        "get_query",
        lua.create_function(|lua, ()| {
            view(lua, |v| {
                let q = v.req()?.uri.query().unwrap_or("");
                let pairs: Vec<_> = query_pairs(q).collect();
                multi_table(lua, pairs.iter().map(|(k, v)| (&k[..], &v[..])))
            })
        })?,
    )?;
    request.raw_set(
        "get_header",
        lua.create_function(|lua, name: mlua::LuaString| {
            view(lua, |v| {
                let req = v.req()?;
                match req.headers.get(&*name.to_str()?) {
                    Some(h) => Ok(Value::String(lua.create_string(h.as_bytes())?)),
                    None => Ok(Value::Nil),
                }
            })
        })?,
    )?;
    request.raw_set(
        "get_headers",
        lua.create_function(|lua, ()| {
            view(lua, |v| {
                let req = v.req()?;
                multi_table(
                    lua,
                    req.headers
                        .iter()
                        .map(|(k, v)| (k.as_str().as_bytes(), v.as_bytes())),
                )
            })
        })?,
    )?;
    request.raw_set(
        "get_host",
        lua.create_function(|lua, ()| {
            view(lua, |v| {
                let req = v.req()?;
                let host = req
                    .headers
                    .get(http::header::HOST)
                    .map(|h| h.as_bytes())
                    .or_else(|| req.uri.authority().map(|a| a.as_str().as_bytes()))
                    .unwrap_or(b"");
                lua.create_string(host)
            })
        })?,
    )?;
    request.raw_set(
        "get_id",
        lua.create_function(|lua, ()| view(lua, |v| lua.create_string(&v.info()?.request_id)))?,
    )?;
    request.raw_set(
        "get_route_id",
        lua.create_function(|lua, ()| view(lua, |v| lua.create_string(&*v.info()?.route_id)))?,
    )?;
    request.raw_set(
        "get_claims",
        lua.create_function(|lua, ()| {
            view(lua, |v| match v.info()?.ext.get::<VerifiedClaims>() {
                Some(c) => lua.to_value(&*c.0),
                None => Ok(Value::Nil),
            })
        })?,
    )?;
    let get_ip = lua.create_function(|lua, ()| {
        view(lua, |v| lua.create_string(v.info()?.client_ip.to_string()))
    })?;
    let get_cert = lua.create_function(|lua, ()| {
        view(lua, |v| match &v.info()?.client_cert {
            Some(c) => {
                let t = lua.create_table()?;
                t.raw_set("subject", c.subject.as_str())?;
                t.raw_set("fingerprint", c.fingerprint.as_str())?;
                t.raw_set("serial", c.serial.as_str())?;
                t.raw_set("not_after", c.not_after)?;
                t.raw_set(
                    "sans",
                    lua.create_sequence_from(c.sans.iter().map(|s| s.as_str()))?,
                )?;
                Ok(Value::Table(t))
            }
            None => Ok(Value::Nil),
        })
    })?;
    request.raw_set("get_client_ip", get_ip.clone())?;
    client.raw_set("get_ip", get_ip)?;
    client.raw_set("get_cert", get_cert)?;

    // the request that goes upstream: changes made in access, applied before it leaves
    header_setters(
        lua,
        &service_request,
        "gatehouse.service.request",
        |v, e, what| {
            v.in_phase(&[Access], what)?;
            v.out.upstream.push(e);
            Ok(())
        },
    )?;
    service_request.raw_set(
        "set_path",
        access_setter(
            lua,
            "gatehouse.service.request.set_path",
            |p| {
                let valid = p.starts_with('/')
                    && !p.contains('?')
                    && http::uri::PathAndQuery::try_from(p).is_ok();
                valid
                    .then(|| p.to_string())
                    .ok_or("is not a valid path (it starts with '/', has no '?')")
            },
            |out, p| out.path = Some(p),
        )?,
    )?;
    service_request.raw_set(
        "set_raw_query",
        access_setter(
            lua,
            "gatehouse.service.request.set_raw_query",
            |q| {
                let valid = !q.contains('#')
                    && http::uri::PathAndQuery::try_from(format!("/?{q}").as_str()).is_ok();
                valid.then(|| q.to_string()).ok_or("is not a valid query")
            },
            |out, q| out.query = Some(q),
        )?,
    )?;
    service.raw_set(
        "set_upstream",
        access_setter(
            lua,
            "gatehouse.service.set_upstream",
            |n| Ok(Arc::<str>::from(n)),
            |out, n| out.upstream_choice = Some(n),
        )?,
    )?;
    service.raw_set("request", service_request)?;

    // the response
    response.raw_set(
        "get_status",
        lua.create_function(|lua, ()| {
            view(lua, |v| {
                v.in_phase(ANY, "gatehouse.response.get_status")?;
                Ok(v.response().map(|r| r.status.as_u16()))
            })
        })?,
    )?;
    response.raw_set(
        "get_header",
        lua.create_function(|lua, name: mlua::LuaString| {
            view(lua, |v| {
                v.in_phase(ANY, "gatehouse.response.get_header")?;
                match v
                    .response()
                    .and_then(|r| r.headers.get(&*name.to_str().ok()?))
                {
                    Some(h) => Ok(Value::String(lua.create_string(h.as_bytes())?)),
                    None => Ok(Value::Nil),
                }
            })
        })?,
    )?;
    header_setters(lua, &response, "gatehouse.response", |v, e, what| {
        match v.in_phase(&[Access, HeaderFilter], what)? {
            // applied to whatever the response turns out to be
            Access => {
                v.out.response.push(e);
                Ok(())
            }
            _ => {
                // SAFETY: see `View`; no other reference to the response is alive
                let resp = unsafe { v.resp.as_mut() }.ok_or_else(|| outside(what))?;
                crate::api::edit_response(resp, 1, |h| e.apply(h))
                    .map_err(|err| mlua::Error::runtime(format!("{what}: {err}")))
            }
        }
    })?;
    response.raw_set(
        "exit",
        lua.create_function(
            |lua, (status, body, headers): (Value, Value, Option<Table>)| {
                let status = match status {
                    Value::Integer(s) if (100..=599).contains(&s) => s as u16,
                    Value::Number(s) if s.fract() == 0.0 && (100.0..=599.0).contains(&s) => {
                        s as u16
                    }
                    _ => return Err(mlua::Error::runtime(
                        "gatehouse.response.exit: the status must be an integer from 100 to 599",
                    )),
                };
                let mut content_type = None;
                let mut extra = Vec::new();
                if let Some(h) = headers {
                    for pair in h.pairs::<mlua::LuaString, Value>() {
                        let (k, v) = pair?;
                        let n = header_name(&k.as_bytes(), "gatehouse.response.exit")?;
                        if framing(&n) {
                            continue;
                        }
                        let values = match v {
                            Value::Table(t) => t
                                .sequence_values::<Value>()
                                .collect::<mlua::Result<Vec<_>>>()?,
                            v => vec![v],
                        };
                        for v in values {
                            let hv = header_value(&v, "gatehouse.response.exit")?;
                            if n == http::header::CONTENT_TYPE {
                                content_type = Some(hv);
                            } else {
                                extra.push((n.clone(), hv));
                            }
                        }
                    }
                }
                let body = match body {
                    Value::Nil => ReplyBody::Empty,
                    Value::String(s) => ReplyBody::Raw {
                        content_type: content_type
                            .unwrap_or(HeaderValue::from_static("text/plain; charset=utf-8")),
                        bytes: Bytes::copy_from_slice(&s.as_bytes()),
                    },
                    Value::Table(t) => {
                        let json: serde_json::Value = lua.from_value(Value::Table(t))?;
                        ReplyBody::Raw {
                            content_type: content_type
                                .unwrap_or(HeaderValue::from_static("application/json")),
                            bytes: Bytes::from(
                                serde_json::to_vec(&json).map_err(mlua::Error::external)?,
                            ),
                        }
                    }
                    other => {
                        return Err(mlua::Error::runtime(format!(
                        "gatehouse.response.exit: the body must be a string or a table, not a {}",
                        other.type_name()
                    )))
                    }
                };
                view(lua, |v| {
                    v.in_phase(&[Access], "gatehouse.response.exit")?;
                    let mut reply = Reply {
                        status,
                        headers: extra,
                        body,
                    };
                    // response headers set earlier in this phase apply to the exit too
                    for e in v.out.response.drain(..) {
                        match e {
                            HeaderEdit::Set(n, val) => {
                                reply.headers.retain(|(k, _)| *k != n);
                                reply.headers.push((n, val));
                            }
                            HeaderEdit::Add(n, val) => reply.headers.push((n, val)),
                            HeaderEdit::Clear(n) => reply.headers.retain(|(k, _)| *k != n),
                        }
                    }
                    v.out.exit = Some(reply);
                    Ok(())
                })?;
                Err::<(), _>(mlua::Error::runtime(EXIT))
            },
        )?,
    )?;

    // logging
    for (name, level) in [
        ("debug", log::Level::Debug),
        ("info", log::Level::Info),
        ("notice", log::Level::Info),
        ("warn", log::Level::Warn),
        ("err", log::Level::Error),
        ("crit", log::Level::Error),
    ] {
        let route = route.clone();
        logt.raw_set(
            name,
            lua.create_function(move |lua, args: MultiValue| {
                if log::log_enabled!(target: "gatehouse::lua", level) {
                    emit(lua, level, &route, &join_args(&args));
                }
                Ok(())
            })?,
        )?;
    }

    json.raw_set(
        "encode",
        lua.create_function(|lua, v: Value| {
            let j: serde_json::Value = lua.from_value(v)?;
            let s = serde_json::to_vec(&j).map_err(mlua::Error::external)?;
            lua.create_string(s)
        })?,
    )?;
    json.raw_set(
        "decode",
        lua.create_function(|lua, s: mlua::LuaString| {
            let j: serde_json::Value = serde_json::from_slice(&s.as_bytes())
                .map_err(|e| mlua::Error::runtime(format!("gatehouse.json.decode: {e}")))?;
            lua.to_value(&j)
        })?,
    )?;
    gh.raw_set(
        "now",
        lua.create_function(|_, ()| {
            Ok(std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |d| d.as_secs_f64()))
        })?,
    )?;
    gh.raw_set("request", request)?;
    gh.raw_set("client", client)?;
    gh.raw_set("service", service)?;
    gh.raw_set("response", response)?;
    gh.raw_set("log", logt)?;
    gh.raw_set("json", json)?;
    Ok(gh)
}

/// Compiles `source` (named `name` in errors) into bytecode, checking its syntax.
pub fn compile(name: &str, source: &[u8]) -> Result<Vec<u8>, Failure> {
    let lua = Lua::new_with(StdLib::NONE, LuaOptions::default()).map_err(classify)?;
    let f = lua
        .load(source)
        .set_name(format!("@{name}"))
        .set_mode(ChunkMode::Text)
        .into_function()
        .map_err(classify)?;
    Ok(f.dump(false))
}
