//! `waf` plugin: the ModSecurity engine (libmodsecurity 3) with the rules you give it, usually
//! the OWASP Core Rule Set.
//!
//! ```yaml
//! - waf:
//!     rules:                        # loaded in this order; globs allowed (sorted)
//!       - /etc/modsecurity/crs/crs-setup.conf
//!       - /usr/share/modsecurity-crs/rules/*.conf
//!     setup: |                      # directives before the files (e.g. CRS's tx settings)
//!       SecAction "id:900200,phase:1,nolog,pass,t:none,setvar:'tx.allowed_methods=GET POST PUT'"
//!     inline: |                     # more directives, after the files (e.g. exclusions)
//!       SecRuleRemoveById 920350
//!     mode: block                   # block | detect (log only)
//!     paranoia_level: 1             # CRS's tx.paranoia_level (1-4)
//!     request_body: { inspect: true, max_size: 64KiB, on_larger: reject }   # reject (413) | skip
//!     response: { inspect_headers: true }
//! ```
//!
//! The phases map onto the request as ModSecurity's nginx connector maps them: connection,
//! URI and request headers (phase 1) in `request_filter`; the request body (phase 2) in the
//! gateway's body step, always run, also without a body (CRS's blocking rule 949110 runs
//! there); response headers (phase 3) in `response_filter`; logging (phase 5) in `logging`.
//! The response body (phase 4) is not inspected. An intervention in phase 1 or 2 becomes the
//! gateway's answer (its status, or a redirect) before anything goes upstream; in phase 3 the
//! response is replaced by the gateway's error with that status. `detect` runs the rules with
//! `SecRuleEngine DetectionOnly`: nothing is blocked.
//!
//! Before the user's rules the plugin loads a base configuration (what Debian's missing
//! `modsecurity.conf-recommended` would set): the engine mode, body access and limits, the
//! JSON and XML body processors chosen by `Content-Type` (rules 200000/200001), a 400 for a
//! body that does not parse (200002, 200003), no audit log, and the paranoia level. After them
//! it removes CRS rule 901321, which opens the shared `global`/`ip` collections on every
//! request: libmodsecurity's in-memory collections are not safe across threads, and the rules
//! that use them (910, 912) are off in CRS's default setup.
//!
//! The body is buffered for inspection up to `max_size` (at most 64 KiB, what Pingora 0.9.1
//! can replay upstream) and then sent on as received. A longer body is refused with 413
//! (`on_larger: reject`) or passed on without body inspection (`skip`; the access log says
//! `"body_inspected": false`).
//!
//! The matched rule ids, their messages and the anomaly score go into the access log
//! (`details.waf`) for every request that matched anything; decisions are counted in
//! `gatehouse_waf_decisions_total{route, result}`: `blocked`, `detected` (rules matched, not
//! blocked), `passed`, `body_too_large`, `error` (no transaction: the request is refused in
//! `block` mode).

pub mod engine;

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use crate::api::units::Size;
use crate::api::{
    BuildEnv, BuildError, BuildResult, DecisionMetric, Flow, Plugin, PluginCtx, PluginSpec, Reply,
    RequestBody, ResponseHeader, Result, Session, MAX_BUFFERED_BODY,
};
use engine::{Intervention, Rules, Source, Transaction};

/// The plugin's YAML config.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WafConfig {
    #[serde(default)]
    rules: Vec<String>,
    #[serde(default)]
    setup: Option<String>,
    #[serde(default)]
    inline: Option<String>,
    #[serde(default)]
    mode: Mode,
    #[serde(default = "default_paranoia")]
    paranoia_level: u8,
    #[serde(default)]
    request_body: BodyConfig,
    #[serde(default)]
    response: ResponseConfig,
}

fn default_paranoia() -> u8 {
    1
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum Mode {
    #[default]
    Block,
    Detect,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BodyConfig {
    #[serde(default = "yes")]
    inspect: bool,
    #[serde(default = "default_max_body")]
    max_size: Size,
    #[serde(default)]
    on_larger: OnLarger,
}

impl Default for BodyConfig {
    fn default() -> Self {
        BodyConfig {
            inspect: true,
            max_size: default_max_body(),
            on_larger: OnLarger::Reject,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_max_body() -> Size {
    Size(MAX_BUFFERED_BODY as u64)
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum OnLarger {
    #[default]
    Reject,
    Skip,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResponseConfig {
    #[serde(default = "yes")]
    inspect_headers: bool,
}

impl Default for ResponseConfig {
    fn default() -> Self {
        ResponseConfig {
            inspect_headers: true,
        }
    }
}

/// The `waf` plugin: one loaded rule set, shared by every request of the config version.
pub struct Waf {
    rules: Arc<Rules>,
    block: bool,
    /// `Some(max)` when the body is inspected.
    body: Option<usize>,
    on_larger: OnLarger,
    response_headers: bool,
}

/// A request's transaction and what became of it.
struct State {
    tx: Transaction,
    /// The outcome is recorded (a block or a refusal records at once).
    recorded: bool,
    /// The body was longer than `max_size` and passed on uninspected (`skip`).
    body_skipped: bool,
}

impl Waf {
    /// Records the outcome and the matched rules (once per request).
    fn record(&self, st: &mut State, cx: &mut PluginCtx<'_>, result: Option<&'static str>) {
        if st.recorded {
            return;
        }
        st.recorded = true;
        let log = st.tx.log();
        let result = result.unwrap_or(if log.matches.is_empty() {
            "passed"
        } else {
            "detected"
        });
        cx.info.record(Self::KIND, result);
        if log.matches.is_empty() && !st.body_skipped {
            return;
        }
        let mut detail = serde_json::Map::new();
        if !log.matches.is_empty() {
            let rules: Vec<serde_json::Value> = (log.matches.iter())
                .map(|m| serde_json::json!({ "id": m.id, "msg": m.msg }))
                .collect();
            detail.insert("rules".into(), rules.into());
        }
        if log.more > 0 {
            detail.insert("more_rules".into(), log.more.into());
        }
        if let Some(score) = log.score {
            detail.insert("anomaly_score".into(), score.into());
        }
        if st.body_skipped {
            detail.insert("body_inspected".into(), false.into());
        }
        cx.info.detail(Self::KIND, detail.into());
    }

    /// What an intervention in phase 1 or 2 does: in `block` mode the gateway's answer.
    fn intervene(&self, mut st: State, cx: &mut PluginCtx<'_>, iv: Intervention) -> Flow {
        if !self.block {
            cx.set_state(st);
            return Flow::Continue;
        }
        self.record(&mut st, cx, Some("blocked"));
        cx.set_state(st);
        let reply = match iv.url.and_then(|u| http::HeaderValue::from_str(&u).ok()) {
            Some(location) if (300..400).contains(&iv.status) => {
                Reply::error(iv.status, "redirected").with_header(http::header::LOCATION, location)
            }
            _ => Reply::error(iv.status, "request blocked"),
        };
        Flow::Respond(reply)
    }

    /// Phase 1 (and phase 2 without body inspection).
    fn start(&self, s: &Session, cx: &mut PluginCtx<'_>) -> std::result::Result<State, Flow> {
        let Some(mut tx) = Transaction::new(&self.rules, &cx.info.request_id) else {
            cx.info.record(Self::KIND, "error");
            log::error!("waf: libmodsecurity could not start a transaction");
            return Err(if self.block {
                Flow::Respond(Reply::error(500, "internal error"))
            } else {
                Flow::Continue
            });
        };
        let client_ip = cx.info.client_ip;
        let peer = s.client_addr().and_then(|a| a.as_inet()).copied();
        // the peer's port only when the client is the peer (not a forwarded address)
        let client_port = peer.filter(|p| p.ip() == client_ip).map_or(0, |p| p.port());
        let (server_ip, server_port) = s
            .server_addr()
            .and_then(|a| a.as_inet())
            .map_or(([0, 0, 0, 0].into(), 0), |a| (a.ip(), a.port()));
        tx.connection(client_ip, client_port, server_ip, server_port);
        let req = s.req_header();
        let version = match req.version {
            http::Version::HTTP_2 => "2.0",
            http::Version::HTTP_10 => "1.0",
            _ => "1.1",
        };
        tx.uri(req.raw_path(), req.method.as_str(), version);
        let mut host = false;
        for (name, value) in &req.headers {
            host |= name == http::header::HOST;
            tx.request_header(name.as_str().as_bytes(), value.as_bytes());
        }
        if !host {
            // HTTP/2 carries the host in `:authority`; the rules look for a Host header
            if let Some(a) = req.uri.authority() {
                tx.request_header(b"host", a.as_str().as_bytes());
            }
        }
        tx.process_request_headers();
        Ok(State {
            tx,
            recorded: false,
            body_skipped: false,
        })
    }
}

#[async_trait]
impl Plugin for Waf {
    async fn request_filter(&self, s: &mut Session, cx: &mut PluginCtx<'_>) -> Result<Flow> {
        let mut st = match self.start(s, cx) {
            Ok(st) => st,
            Err(flow) => return Ok(flow),
        };
        if let Some(iv) = st.tx.intervention() {
            return Ok(self.intervene(st, cx, iv));
        }
        if self.body.is_none() {
            // phase 2 runs also without body inspection: CRS decides there
            st.tx.process_request_body();
            if let Some(iv) = st.tx.intervention() {
                return Ok(self.intervene(st, cx, iv));
            }
        }
        cx.set_state(st);
        Ok(Flow::Continue)
    }

    fn request_body_limit(&self) -> Option<usize> {
        self.body
    }

    async fn request_body(
        &self,
        _s: &mut Session,
        body: &RequestBody,
        cx: &mut PluginCtx<'_>,
    ) -> Result<Flow> {
        self.body_step(body, cx)
    }

    async fn response_filter(
        &self,
        s: &mut Session,
        resp: &mut ResponseHeader,
        cx: &mut PluginCtx<'_>,
    ) -> Result<()> {
        if !self.response_headers {
            return Ok(());
        }
        let Some(st) = cx.state_mut::<State>() else {
            return Ok(());
        };
        if st.recorded {
            // blocked (this is the gateway's own answer) or refused
            return Ok(());
        }
        for (name, value) in &resp.headers {
            st.tx
                .response_header(name.as_str().as_bytes(), value.as_bytes());
        }
        let protocol = if s.req_header().version == http::Version::HTTP_2 {
            "HTTP 2.0"
        } else {
            "HTTP 1.1"
        };
        st.tx
            .process_response_headers(resp.status.as_u16(), protocol);
        let Some(iv) = st.tx.intervention() else {
            return Ok(());
        };
        if !self.block {
            return Ok(());
        }
        let Some(mut st) = take_state(cx) else {
            return Ok(());
        };
        self.record(&mut st, cx, Some("blocked"));
        cx.set_state(st);
        Err(crate::api::Error::explain(
            crate::api::ErrorType::HTTPStatus(iv.status),
            "blocked by the WAF (response headers)",
        ))
    }

    async fn logging(
        &self,
        s: &mut Session,
        _e: Option<&crate::api::Error>,
        cx: &mut PluginCtx<'_>,
    ) {
        let Some(mut st) = take_state(cx) else {
            return;
        };
        let status = s.response_written().map_or(0, |r| r.status.as_u16());
        st.tx.process_logging(status);
        self.record(&mut st, cx, None);
    }
}

impl Waf {
    /// Phase 2 with the body the gateway read.
    fn body_step(&self, body: &RequestBody, cx: &mut PluginCtx<'_>) -> Result<Flow> {
        let Some(mut st) = take_state(cx) else {
            return Ok(Flow::Continue);
        };
        if body.complete {
            st.tx.append_request_body(&body.bytes);
        } else {
            match self.on_larger {
                OnLarger::Reject => {
                    self.record(&mut st, cx, Some("body_too_large"));
                    cx.set_state(st);
                    return Ok(Flow::Respond(Reply::error(
                        413,
                        "request body too large for inspection",
                    )));
                }
                OnLarger::Skip => st.body_skipped = true,
            }
        }
        st.tx.process_request_body();
        if let Some(iv) = st.tx.intervention() {
            return Ok(self.intervene(st, cx, iv));
        }
        cx.set_state(st);
        Ok(Flow::Continue)
    }
}

/// Takes the request's state out of the plugin's slot.
fn take_state(cx: &mut PluginCtx<'_>) -> Option<State> {
    cx.take_state::<State>()
}

/// `pattern` (a file or a glob, resolved against the config's directory): the files, sorted.
fn expand(pattern: &str, env: &BuildEnv) -> std::result::Result<Vec<PathBuf>, String> {
    let path = env.resolve(pattern);
    let text = path.to_string_lossy().into_owned();
    if !text.contains(['*', '?', '[']) {
        if !path.is_file() {
            return Err(format!("`{pattern}`: no such file"));
        }
        return Ok(vec![path]);
    }
    let paths = glob::glob(&text).map_err(|e| format!("`{pattern}`: {e}"))?;
    let mut files: Vec<PathBuf> = paths
        .filter_map(|p| p.ok())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(format!("`{pattern}` matches no file"));
    }
    Ok(files)
}

/// The directives loaded before the user's rules. Body access stays on without body
/// inspection (no body is appended then): with it off, libmodsecurity 3.0.9 skips phase 2
/// altogether, and CRS decides there.
fn base_config(block: bool, body: Option<usize>, paranoia: u8) -> String {
    let limit = body.unwrap_or(MAX_BUFFERED_BODY);
    format!(
        r#"SecRuleEngine {engine}
SecRequestBodyAccess On
SecRequestBodyLimit {limit}
SecRequestBodyNoFilesLimit {limit}
SecRequestBodyLimitAction ProcessPartial
SecResponseBodyAccess Off
SecAuditEngine Off
SecArgumentSeparator &
SecCookieFormat 0
SecRule REQUEST_HEADERS:Content-Type "@rx (?:application(?:/soap\+|/)|text/)xml" "id:200000,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=XML"
SecRule REQUEST_HEADERS:Content-Type "@rx application/json" "id:200001,phase:1,t:none,t:lowercase,pass,nolog,ctl:requestBodyProcessor=JSON"
SecRule REQBODY_ERROR "!@eq 0" "id:200002,phase:2,t:none,log,deny,status:400,msg:'Failed to parse request body.',logdata:'%{{reqbody_error_msg}}',severity:2"
SecRule MULTIPART_STRICT_ERROR "!@eq 0" "id:200003,phase:2,t:none,log,deny,status:400,msg:'Multipart request body failed strict validation'"
SecAction "id:8990001,phase:1,pass,nolog,t:none,setvar:tx.paranoia_level={paranoia}"
"#,
        engine = if block { "On" } else { "DetectionOnly" },
    )
}

/// Loaded after the user's rules.
const TRAILER: &str = "SecRuleRemoveById 901321\n";

impl PluginSpec for Waf {
    const KIND: &'static str = "waf";
    const DECISION_METRIC: Option<DecisionMetric> = Some(DecisionMetric {
        name: "gatehouse_waf_decisions_total",
        help:
            "WAF decisions by route and result (blocked, detected, passed, body_too_large, error).",
    });
    type Config = WafConfig;

    fn build(c: WafConfig, env: &mut BuildEnv) -> BuildResult<Self> {
        if !(1..=4).contains(&c.paranoia_level) {
            return Err(BuildError::at("paranoia_level", "1, 2, 3 or 4"));
        }
        let max = c.request_body.max_size.0;
        if c.request_body.inspect && (max == 0 || max > MAX_BUFFERED_BODY as u64) {
            return Err(BuildError::at(
                "request_body.max_size",
                "between 1B and 64KiB (what can be buffered and still sent upstream)",
            ));
        }
        if c.rules.is_empty() && c.inline.as_deref().is_none_or(|t| t.trim().is_empty()) {
            // (`setup` alone configures rules that are not there)
            return Err(BuildError::at(
                "rules",
                "no rules: list rule files (e.g. the OWASP CRS) or write `inline` directives",
            ));
        }
        let block = c.mode == Mode::Block;
        let body = c.request_body.inspect.then_some(max as usize);
        // every source with the YAML path its errors are reported at
        let mut files: Vec<(PathBuf, String)> = Vec::new();
        for (i, pattern) in c.rules.iter().enumerate() {
            let at = format!("rules[{i}]");
            for f in expand(pattern, env).map_err(|e| BuildError::at(at.clone(), e))? {
                env.depends_on(f.clone());
                files.push((f, at.clone()));
            }
        }
        let base = base_config(block, body, c.paranoia_level);
        let mut sources = vec![Source::Text(&base, "base configuration")];
        let mut at = vec![String::new()];
        if let Some(text) = &c.setup {
            sources.push(Source::Text(text, "setup"));
            at.push("setup".into());
        }
        for (f, path) in &files {
            sources.push(Source::File(f));
            at.push(path.clone());
        }
        if let Some(text) = &c.inline {
            sources.push(Source::Text(text, "inline"));
            at.push("inline".into());
        }
        sources.push(Source::Text(TRAILER, "gatehouse trailer"));
        at.push(String::new());
        let rules = Rules::load(&sources).map_err(|e| {
            BuildError::at(
                at.get(e.source).cloned().unwrap_or_default(),
                format!("ModSecurity: {}", e.message),
            )
        })?;
        Ok(Waf {
            rules: Arc::new(rules),
            block,
            body,
            on_larger: c.request_body.on_larger,
            response_headers: c.response.inspect_headers,
        })
    }
}

#[cfg(test)]
mod tests;
