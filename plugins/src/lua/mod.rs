//! `lua` plugin: user scripts in Lua 5.4, run in the request's phases, sandboxed.
//!
//! ```yaml
//! - lua:
//!     file: scripts/tenant.lua          # defines access / header_filter / log (all optional)
//!     # or inline bodies per phase, called with `conf` and `ctx`:
//!     # access: |
//!     #   if gatehouse.request.get_header("x-tenant") == nil then
//!     #     return gatehouse.response.exit(400, { error = "x-tenant required" })
//!     #   end
//!     config: { default_tenant: acme }  # `conf`, read-only
//!     max_instructions: 1000000         # per phase call
//!     max_memory: 4MiB                  # per Lua state
//! ```
//!
//! Phases: `access` runs in the request hook (it may answer with `exit`; its
//! `gatehouse.service.*` changes are applied to the request that goes upstream),
//! `header_filter` on the response headers (upstream's or the gateway's own), `log` after the
//! response. `ctx` is one table per request, carried from phase to phase as plain data.
//!
//! Scripts are compiled once per config version (a syntax error is a config error with the
//! Lua line); each worker thread gets its own state per plugin instance, created the first
//! time it serves one, and dropped with the instance (a reload that changes the script or its
//! file builds a new instance). A script that fails, runs out of its instruction budget or
//! its memory answers 500 with the gateway's JSON error; the outcome is recorded (`error`,
//! `budget`, `memory`; `exit` for a script's own answer) and a state that ran out of budget or
//! memory is replaced. See [`vm`] for the sandbox and the API.

mod vm;

use std::cell::RefCell;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;
use thread_local::ThreadLocal;

use crate::api::units::Size;
use crate::api::{
    BuildEnv, BuildError, BuildResult, Error, ErrorType, Flow, Plugin, PluginCtx, PluginSpec,
    Reply, RequestHeader, ResponseHeader, Result, Session, UpstreamChoice,
};
use vm::{Failure, HeaderEdit, Saved};
pub use vm::{Phase, MAX_SUBJECT, STEP};

/// The plugin's YAML config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LuaConfig {
    /// A script defining the phase functions (relative to the config file).
    file: Option<String>,
    /// Inline phase bodies (instead of `file`).
    access: Option<String>,
    header_filter: Option<String>,
    log: Option<String>,
    /// Handed to every call as `conf`.
    #[serde(default)]
    config: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default = "default_instructions")]
    max_instructions: u64,
    #[serde(default = "default_memory")]
    max_memory: Size,
}

fn default_instructions() -> u64 {
    1_000_000
}

fn default_memory() -> Size {
    Size(4 * 1024 * 1024)
}

/// What a request carries from one phase to the next.
#[derive(Default)]
struct PerRequest {
    ctx: Option<Saved>,
    upstream: Vec<HeaderEdit>,
    path: Option<String>,
    query: Option<String>,
    response: Vec<HeaderEdit>,
}

/// The `lua` plugin.
pub struct Lua {
    script: vm::Script,
    route: Arc<str>,
    /// One state per worker thread (created on first use there).
    states: ThreadLocal<RefCell<Option<vm::State>>>,
    /// Whether `ctx` must be saved after each phase (a later phase is defined).
    keep_ctx: [bool; 3],
}

impl Lua {
    fn defines(&self, p: Phase) -> bool {
        self.script.defines[p as usize]
    }

    /// Runs `f` on this thread's state (made first if needed); a state that ran out of
    /// budget or memory is dropped, the next call makes a fresh one.
    fn with_state<R>(
        &self,
        f: impl FnOnce(&vm::State) -> std::result::Result<R, Failure>,
    ) -> std::result::Result<R, Failure> {
        let cell = self.states.get_or(|| RefCell::new(None));
        let Ok(mut slot) = cell.try_borrow_mut() else {
            return Err(Failure::Error("the script's state is busy".into()));
        };
        if slot.is_none() {
            *slot = Some(vm::State::new(&self.script, self.route.clone())?);
        }
        let Some(state) = slot.as_ref() else {
            return Err(Failure::Error("no state".into()));
        };
        let r = f(state);
        if matches!(&r, Err(e) if e.poisons()) {
            *slot = None;
        }
        r
    }

    fn failed(&self, phase: Phase, f: &Failure, cx: &mut PluginCtx<'_>) {
        cx.info.record(Self::KIND, f.outcome());
        let message = f.message();
        log::warn!(
            "lua: route={} request_id={} {} failed: {message}",
            self.route,
            cx.info.request_id,
            phase.name()
        );
        cx.info.detail(
            Self::KIND,
            serde_json::json!({ "phase": phase.name(), "error": message }),
        );
    }

    fn call(
        &self,
        phase: Phase,
        req: &RequestHeader,
        resp: Option<&mut ResponseHeader>,
        sent: Option<&ResponseHeader>,
        cx: &mut PluginCtx<'_>,
    ) -> std::result::Result<vm::Out, Failure> {
        let saved = cx.state_mut::<PerRequest>().and_then(|p| p.ctx.take());
        let keep = self.keep_ctx[phase as usize];
        let (out, saved) =
            self.with_state(|st| st.call(phase, req, cx.info, resp, sent, saved.as_ref(), keep))?;
        if let Some(saved) = saved {
            match cx.state_mut::<PerRequest>() {
                Some(p) => p.ctx = Some(saved),
                None => cx.set_state(PerRequest {
                    ctx: Some(saved),
                    ..Default::default()
                }),
            }
        }
        Ok(out)
    }
}

fn script_error() -> Error {
    *Error::explain(ErrorType::InternalError, "lua script failed")
}

#[async_trait]
impl Plugin for Lua {
    async fn request_filter(&self, s: &mut Session, cx: &mut PluginCtx<'_>) -> Result<Flow> {
        if !self.defines(Phase::Access) {
            return Ok(Flow::Continue);
        }
        let out = match self.call(Phase::Access, s.req_header(), None, None, cx) {
            Ok(out) => out,
            Err(f) => {
                self.failed(Phase::Access, &f, cx);
                return Ok(Flow::Respond(Reply::error(500, "lua script failed")));
            }
        };
        if let Some(reply) = out.exit {
            cx.info.record(Self::KIND, "exit");
            return Ok(Flow::Respond(reply));
        }
        if let Some(u) = out.upstream_choice {
            cx.info.ext.insert(UpstreamChoice(u));
        }
        if !out.upstream.is_empty()
            || out.path.is_some()
            || out.query.is_some()
            || !out.response.is_empty()
        {
            if cx.state::<PerRequest>().is_none() {
                cx.set_state(PerRequest::default());
            }
            if let Some(p) = cx.state_mut::<PerRequest>() {
                p.upstream = out.upstream;
                p.path = out.path;
                p.query = out.query;
                p.response = out.response;
            }
        }
        Ok(Flow::Continue)
    }

    async fn upstream_request_filter(
        &self,
        _s: &mut Session,
        req: &mut RequestHeader,
        cx: &mut PluginCtx<'_>,
    ) -> Result<()> {
        let Some(p) = cx.state_mut::<PerRequest>() else {
            return Ok(());
        };
        if !p.upstream.is_empty() {
            crate::api::edit_request(req, p.upstream.len(), |h| {
                p.upstream.iter().try_for_each(|e| e.apply(h))
            })?;
        }
        if p.path.is_some() || p.query.is_some() {
            let path = p.path.as_deref().unwrap_or(req.uri.path());
            let query = match p.query.as_deref() {
                Some(q) => q,
                None => req.uri.query().unwrap_or(""),
            };
            let pq = if query.is_empty() {
                path.to_string()
            } else {
                format!("{path}?{query}")
            };
            let uri = http::Uri::builder()
                .path_and_query(pq)
                .build()
                .map_err(|e| Error::because(ErrorType::InternalError, "lua: set_path", e))?;
            req.set_uri(uri);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        s: &mut Session,
        resp: &mut ResponseHeader,
        cx: &mut PluginCtx<'_>,
    ) -> Result<()> {
        if let Some(p) = cx.state_mut::<PerRequest>() {
            let edits = std::mem::take(&mut p.response);
            if !edits.is_empty() {
                crate::api::edit_response(resp, edits.len(), |h| {
                    edits.iter().try_for_each(|e| e.apply(h))
                })?;
            }
        }
        if !self.defines(Phase::HeaderFilter) {
            return Ok(());
        }
        if let Err(f) = self.call(Phase::HeaderFilter, s.req_header(), Some(resp), None, cx) {
            self.failed(Phase::HeaderFilter, &f, cx);
            // the gateway answers 500 instead (and does not call this hook again for it)
            return Err(Box::new(script_error()));
        }
        Ok(())
    }

    async fn logging(&self, s: &mut Session, _e: Option<&Error>, cx: &mut PluginCtx<'_>) {
        if !self.defines(Phase::Log) {
            return;
        }
        let req = s.req_header();
        let sent = s.response_written();
        if let Err(f) = self.call(Phase::Log, req, None, sent, cx) {
            self.failed(Phase::Log, &f, cx);
        }
    }
}

impl PluginSpec for Lua {
    const KIND: &'static str = "lua";
    type Config = LuaConfig;

    fn build(config: LuaConfig, env: &mut BuildEnv) -> BuildResult<Self> {
        let inline = [
            (Phase::Access, config.access),
            (Phase::HeaderFilter, config.header_filter),
            (Phase::Log, config.log),
        ];
        let has_inline = inline.iter().any(|(_, c)| c.is_some());
        let mut chunks = Vec::new();
        let at =
            match (&config.file, has_inline) {
                (Some(_), true) => return Err(BuildError::new(
                    "give either `file` or inline phases (access, header_filter, log), not both",
                )),
                (None, false) => {
                    return Err(BuildError::new(
                        "no script: give `file` or at least one of access, header_filter, log",
                    ))
                }
                (Some(file), false) => {
                    let path = env.resolve(file);
                    let source = std::fs::read(&path).map_err(|e| {
                        BuildError::at("file", format!("cannot read {}: {e}", path.display()))
                    })?;
                    env.depends_on(path);
                    let bytecode = vm::compile(file, &source)
                        .map_err(|f| BuildError::at("file", f.message()))?;
                    chunks.push(vm::Chunk {
                        phase: None,
                        bytecode,
                    });
                    "file"
                }
                (None, true) => {
                    for (phase, code) in inline {
                        let Some(code) = code else { continue };
                        // on the first line: the script's line numbers stay as written
                        let source = format!("local conf, ctx = ...; {code}");
                        let bytecode = vm::compile(phase.name(), source.as_bytes())
                            .map_err(|f| BuildError::at(phase.name(), f.message()))?;
                        chunks.push(vm::Chunk {
                            phase: Some(phase),
                            bytecode,
                        });
                    }
                    ""
                }
            };
        if config.max_instructions == 0 {
            return Err(BuildError::at("max_instructions", "must be at least 1"));
        }
        let max_memory = usize::try_from(config.max_memory.0).unwrap_or(usize::MAX);
        let mut script = vm::Script {
            chunks,
            defines: [false; 3],
            conf: serde_json::Value::Object(config.config.unwrap_or_default()),
            max_instructions: config.max_instructions,
            max_memory,
        };
        let route: Arc<str> = Arc::from(env.route_id.as_deref().unwrap_or("*"));
        // load it once here: errors in the script's top level, a budget or a memory limit
        // too small to load it are config errors
        let trial = vm::State::new(&script, route.clone()).map_err(|f| match f {
            Failure::Memory => BuildError::at(
                "max_memory",
                format!("{} bytes are not enough to load the script", max_memory),
            ),
            Failure::Budget => BuildError::at(
                "max_instructions",
                "the budget ran out while the script loaded",
            ),
            f => BuildError::at(at, f.message()),
        })?;
        for p in Phase::ALL {
            script.defines[p as usize] = trial.defines(p);
        }
        drop(trial);
        if !script.defines.iter().any(|d| *d) {
            return Err(BuildError::at(
                at,
                "the script defines none of the phase functions access, header_filter, log",
            ));
        }
        let d = script.defines;
        let keep_ctx = [d[1] || d[2], d[2], false];
        Ok(Lua {
            script,
            route,
            states: ThreadLocal::new(),
            keep_ctx,
        })
    }
}

#[cfg(test)]
mod tests;
