//! A thin safe wrapper over libmodsecurity 3 (Debian's 3.0.9), through the raw bindings of
//! `modsecurity-sys` 0.1.2.
//!
//! What it takes care of (and why the crate's own safe layer is not used):
//! - rule parsing is not thread-safe in libmodsecurity: every load and every release of a
//!   rule set holds one process-wide lock ([`PARSE`]);
//! - strings libmodsecurity allocates (parse errors, intervention URL and log) are released
//!   with the C library's `free`, never with Rust's allocator (the gateway runs mimalloc);
//! - header names and values, URIs and bodies go in as bytes with their lengths (`msc_add_n_*`),
//!   so NUL and non-UTF-8 bytes arrive as sent;
//! - every transaction is released (`msc_transaction_cleanup`) when dropped, and holds its rule
//!   set alive until then;
//! - the log callback, which libmodsecurity calls from inside the `msc_process_*` calls,
//!   catches any panic: none crosses the FFI boundary.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use modsecurity_sys as ffi;

/// libmodsecurity's rule parser (and the release of a rule set) is not thread-safe.
static PARSE: Mutex<()> = Mutex::new(());

/// The process's engine (`msc_init` once; never released).
struct Engine(*mut ffi::ModSecurity);

// SAFETY: the engine object is written only in `engine()` (once, before any use) and is
// read-only afterwards; libmodsecurity shares it between the transactions of all threads.
unsafe impl Send for Engine {}
unsafe impl Sync for Engine {}

fn engine() -> Option<&'static Engine> {
    static ENGINE: OnceLock<Option<Engine>> = OnceLock::new();
    ENGINE
        .get_or_init(|| {
            // SAFETY: plain constructor and setters on the object it returns.
            unsafe {
                let p = ffi::msc_init();
                if p.is_null() {
                    return None;
                }
                ffi::msc_set_connector_info(p, c"gatehouse".as_ptr());
                ffi::msc_set_log_cb(p, Some(log_cb));
                Some(Engine(p))
            }
        })
        .as_ref()
}

/// Takes a string libmodsecurity allocated with `malloc`: copied, then released with `free`.
///
/// # Safety
/// `p` is null or a NUL-terminated string from the C allocator that nothing else frees.
unsafe fn take_c_string(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    let s = CStr::from_ptr(p).to_string_lossy().into_owned();
    libc::free(p.cast());
    Some(s)
}

/// A loaded rule set, shared by every transaction of one config version.
pub struct Rules {
    ptr: *mut ffi::RulesSet,
}

// SAFETY: a loaded rule set is only read by transactions (libmodsecurity shares one set
// between threads); loading and release are serialised by `PARSE`.
unsafe impl Send for Rules {}
unsafe impl Sync for Rules {}

/// One source of directives, for [`Rules::load`].
pub enum Source<'a> {
    File(&'a Path),
    /// Text, with the name its errors are reported under.
    Text(&'a str, &'a str),
}

/// Where a rule set failed to load: the index of the source, and libmodsecurity's message.
#[derive(Debug)]
pub struct LoadError {
    pub source: usize,
    pub message: String,
}

impl Rules {
    /// Loads `sources` in order into a new rule set (under the process-wide parse lock).
    pub fn load(sources: &[Source<'_>]) -> Result<Rules, LoadError> {
        if engine().is_none() {
            return Err(LoadError {
                source: 0,
                message: "libmodsecurity did not initialise".into(),
            });
        }
        let _parse = PARSE.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: constructor; released in Drop, or below on error.
        let ptr = unsafe { ffi::msc_create_rules_set() };
        if ptr.is_null() {
            return Err(LoadError {
                source: 0,
                message: "libmodsecurity could not create a rule set".into(),
            });
        }
        for (i, src) in sources.iter().enumerate() {
            if let Err(message) = add(ptr, src) {
                // released here, with the lock already held (Drop would take it again)
                // SAFETY: created above, used by nothing else.
                unsafe {
                    ffi::msc_rules_cleanup(ptr);
                }
                return Err(LoadError { source: i, message });
            }
        }
        Ok(Rules { ptr })
    }
}

/// Adds one source to the rule set `ptr` (the caller holds [`PARSE`]).
fn add(ptr: *mut ffi::RulesSet, src: &Source<'_>) -> Result<(), String> {
    let mut err: *const c_char = std::ptr::null();
    let (rc, name) = match src {
        Source::File(path) => {
            let Ok(c) = CString::new(path.as_os_str().as_encoded_bytes()) else {
                return Err(format!("`{}`: NUL in the path", path.display()));
            };
            // SAFETY: valid rule set, NUL-terminated path, out-pointer for the error.
            (
                unsafe { ffi::msc_rules_add_file(ptr, c.as_ptr(), &mut err) },
                None,
            )
        }
        Source::Text(text, name) => {
            let Ok(c) = CString::new(*text) else {
                return Err(format!("{name}: NUL in the text"));
            };
            // SAFETY: as above.
            (
                unsafe { ffi::msc_rules_add(ptr, c.as_ptr(), &mut err) },
                Some(*name),
            )
        }
    };
    if rc >= 0 {
        return Ok(());
    }
    // SAFETY: on failure libmodsecurity sets `err` to a strdup'ed message.
    let msg = unsafe { take_c_string(err.cast_mut()) }.unwrap_or_else(|| "unknown error".into());
    let msg = msg.trim().to_string();
    Err(match name {
        // inline text has no file name: say which text the line is in
        Some(n) => format!("{n}: {msg}"),
        None => msg,
    })
}

impl Drop for Rules {
    fn drop(&mut self) {
        let _parse = PARSE.lock().unwrap_or_else(|p| p.into_inner());
        // SAFETY: the set was created by `msc_create_rules_set` and no transaction uses it
        // any more (each holds an `Arc<Rules>`).
        unsafe {
            ffi::msc_rules_cleanup(self.ptr);
        }
    }
}

/// A rule that matched: its id and message (bounded).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Match {
    pub id: u64,
    pub msg: String,
}

/// What the log callback collected for one transaction.
#[derive(Debug, Default)]
pub struct TxLog {
    /// Matched rules, in order, at most [`TxLog::MAX`].
    pub matches: Vec<Match>,
    /// More rules matched than kept.
    pub more: usize,
    /// The inbound anomaly score, when a rule reported it (CRS 949110 / 980130).
    pub score: Option<u32>,
}

impl TxLog {
    pub const MAX: usize = 20;
    const MAX_MSG: usize = 200;

    fn record(&mut self, text: &[u8]) {
        let text = String::from_utf8_lossy(text);
        let Some(id) = field(&text, "id").and_then(|v| v.parse::<u64>().ok()) else {
            return;
        };
        let msg = field(&text, "msg").unwrap_or_default();
        if let Some(score) = anomaly_score(msg) {
            self.score = Some(self.score.map_or(score, |s| s.max(score)));
        }
        if self.matches.iter().any(|m| m.id == id) {
            return;
        }
        if self.matches.len() >= Self::MAX {
            self.more += 1;
            return;
        }
        let mut msg = msg.to_string();
        if msg.len() > Self::MAX_MSG {
            let mut end = Self::MAX_MSG;
            while !msg.is_char_boundary(end) {
                end -= 1;
            }
            msg.truncate(end);
        }
        self.matches.push(Match { id, msg });
    }
}

/// The value of `[name "value"]` in a ModSecurity log line.
fn field<'t>(text: &'t str, name: &str) -> Option<&'t str> {
    let tag = format!("[{name} \"");
    let start = text.find(&tag)? + tag.len();
    let len = text[start..].find("\"]")?;
    Some(&text[start..start + len])
}

/// `N` of "... Total Score: N ..." or "(Total Inbound Score: N ...".
fn anomaly_score(msg: &str) -> Option<u32> {
    for tag in ["Total Score: ", "Total Inbound Score: "] {
        if let Some(i) = msg.find(tag) {
            let digits: String = msg[i + tag.len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            return digits.parse().ok();
        }
    }
    None
}

/// Called by libmodsecurity, inside a `msc_process_*` call of the transaction whose
/// `logCbData` is `data`, for every rule match it logs.
unsafe extern "C" fn log_cb(data: *mut c_void, msg: *const c_void) {
    if data.is_null() || msg.is_null() {
        return;
    }
    let _ = std::panic::catch_unwind(|| {
        // SAFETY: `data` is the `TxLog` box of a live transaction, which is inside one of
        // its `&mut self` calls (nothing else touches the log meanwhile); `msg` is a
        // NUL-terminated string valid for this call.
        let log = unsafe { &mut *data.cast::<TxLog>() };
        let text = unsafe { CStr::from_ptr(msg.cast::<c_char>()) };
        log.record(text.to_bytes());
    });
}

/// A disruptive action: the status (and a redirect target) to answer with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intervention {
    pub status: u16,
    pub url: Option<String>,
}

/// One request's transaction.
pub struct Transaction {
    ptr: *mut ffi::Transaction,
    log: *mut TxLog,
    _rules: Arc<Rules>,
}

// SAFETY: a transaction is used by one request at a time: every call that reaches
// libmodsecurity takes `&mut self`; `&self` only reads the log between calls.
unsafe impl Send for Transaction {}
unsafe impl Sync for Transaction {}

impl Transaction {
    /// A new transaction on `rules` with the gateway's request id as ModSecurity's unique id
    /// (which also spares libmodsecurity generating one from `std::random_device` per
    /// request); `None` if libmodsecurity could not make one.
    pub fn new(rules: &Arc<Rules>, id: &str) -> Option<Transaction> {
        let engine = engine()?;
        let id = CString::new(id).ok()?;
        let log = Box::into_raw(Box::<TxLog>::default());
        // SAFETY: valid engine and rule set; the id is copied by the callee (`m_id`), and
        // `log` outlives the transaction (freed in Drop after the cleanup).
        let ptr = unsafe {
            ffi::msc_new_transaction_with_id(
                engine.0,
                rules.ptr,
                id.as_ptr().cast_mut(),
                log.cast(),
            )
        };
        if ptr.is_null() {
            // SAFETY: from Box::into_raw above, never shared.
            drop(unsafe { Box::from_raw(log) });
            return None;
        }
        Some(Transaction {
            ptr,
            log,
            _rules: Arc::clone(rules),
        })
    }

    /// Phase 0: the connection (client and server address and port).
    pub fn connection(&mut self, client: IpAddr, client_port: u16, server: IpAddr, port: u16) {
        let (Ok(c), Ok(s)) = (
            CString::new(client.to_string()),
            CString::new(server.to_string()),
        ) else {
            return;
        };
        // SAFETY: valid transaction, NUL-terminated strings copied by the callee.
        unsafe {
            ffi::msc_process_connection(
                self.ptr,
                c.as_ptr(),
                c_int::from(client_port),
                s.as_ptr(),
                c_int::from(port),
            );
        }
    }

    /// The request line: the raw request target, the method and the version (`1.1`, `2.0`).
    /// A NUL in the target (never valid on the wire) cuts it there.
    pub fn uri(&mut self, target: &[u8], method: &str, version: &str) {
        let target = target.split(|b| *b == 0).next().unwrap_or_default();
        let (Ok(t), Ok(m), Ok(v)) = (
            CString::new(target),
            CString::new(method),
            CString::new(version),
        ) else {
            return;
        };
        // SAFETY: as above.
        unsafe {
            ffi::msc_process_uri(self.ptr, t.as_ptr(), m.as_ptr(), v.as_ptr());
        }
    }

    /// One request header, bytes as received.
    pub fn request_header(&mut self, name: &[u8], value: &[u8]) {
        // SAFETY: pointer and length pairs of live slices, copied by the callee.
        unsafe {
            ffi::msc_add_n_request_header(
                self.ptr,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            );
        }
    }

    /// Phase 1 (after the connection, URI and headers).
    pub fn process_request_headers(&mut self) {
        // SAFETY: valid transaction.
        unsafe {
            ffi::msc_process_request_headers(self.ptr);
        }
    }

    /// Appends request body bytes (before [`Transaction::process_request_body`]).
    pub fn append_request_body(&mut self, body: &[u8]) {
        if body.is_empty() {
            return;
        }
        // SAFETY: as for headers.
        unsafe {
            ffi::msc_append_request_body(self.ptr, body.as_ptr(), body.len());
        }
    }

    /// Phase 2; runs also for a request without a body (CRS blocks here).
    pub fn process_request_body(&mut self) {
        // SAFETY: valid transaction.
        unsafe {
            ffi::msc_process_request_body(self.ptr);
        }
    }

    /// One response header.
    pub fn response_header(&mut self, name: &[u8], value: &[u8]) {
        // SAFETY: as for request headers.
        unsafe {
            ffi::msc_add_n_response_header(
                self.ptr,
                name.as_ptr(),
                name.len(),
                value.as_ptr(),
                value.len(),
            );
        }
    }

    /// Phase 3: the response status and protocol (`HTTP 1.1`, `HTTP 2.0`).
    pub fn process_response_headers(&mut self, status: u16, protocol: &str) {
        let Ok(p) = CString::new(protocol) else {
            return;
        };
        // SAFETY: valid transaction and NUL-terminated string.
        unsafe {
            ffi::msc_process_response_headers(self.ptr, c_int::from(status), p.as_ptr());
        }
    }

    /// Phase 5, with the status that was sent.
    pub fn process_logging(&mut self, status: u16) {
        // SAFETY: valid transaction.
        unsafe {
            ffi::msc_update_status_code(self.ptr, c_int::from(status));
            ffi::msc_process_logging(self.ptr);
        }
    }

    /// The pending disruptive action, if any (taken: asked again, it is gone).
    pub fn intervention(&mut self) -> Option<Intervention> {
        let mut it = ffi::ModSecurityIntervention {
            status: 200,
            pause: 0,
            url: std::ptr::null_mut(),
            log: std::ptr::null_mut(),
            disruptive: 0,
        };
        // SAFETY: valid transaction and intervention struct; the strings it may set are
        // strdup'ed for us and released here with `free`.
        let disruptive = unsafe { ffi::msc_intervention(self.ptr, &mut it) };
        let url = unsafe { take_c_string(it.url) };
        if let Some(text) = unsafe { take_c_string(it.log) } {
            // the disruptive rule's message comes here rather than through the callback
            // SAFETY: no libmodsecurity call is running on this transaction (`&mut self`).
            unsafe { &mut *self.log }.record(text.as_bytes());
        }
        if disruptive == 0 {
            return None;
        }
        let status = u16::try_from(it.status)
            .ok()
            .filter(|s| (300..600).contains(s))
            .unwrap_or(403);
        Some(Intervention { status, url })
    }

    /// What the rules logged so far.
    pub fn log(&self) -> &TxLog {
        // SAFETY: the box lives as long as `self`; libmodsecurity writes it only inside the
        // `&mut self` calls, so no write overlaps this shared borrow.
        unsafe { &*self.log }
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        // SAFETY: created by `msc_new_transaction`, released once; the log box after it (the
        // cleanup may still log).
        unsafe {
            ffi::msc_transaction_cleanup(self.ptr);
            drop(Box::from_raw(self.log));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_lines_give_ids_messages_and_the_score() {
        let mut log = TxLog::default();
        log.record(br#"ModSecurity: Warning. Matched "Operator `Rx' ..." [file "/r.conf"] [line "45"] [id "942100"] [rev ""] [msg "SQL Injection Attack Detected via libinjection"] [data "x"] [severity "2"]"#);
        log.record(br#"ModSecurity: Access denied with code 403 (phase 2). [file "/b.conf"] [id "949110"] [msg "Inbound Anomaly Score Exceeded (Total Score: 5)"]"#);
        log.record(br#"no id here"#);
        log.record(br#"[id "942100"] [msg "again"]"#);
        assert_eq!(log.matches.len(), 2);
        assert_eq!(log.matches[0].id, 942100);
        assert_eq!(
            log.matches[0].msg,
            "SQL Injection Attack Detected via libinjection"
        );
        assert_eq!(log.score, Some(5));
        for i in 0..30 {
            log.record(format!("[id \"{}\"] [msg \"m\"]", 1000 + i).as_bytes());
        }
        assert_eq!(log.matches.len(), TxLog::MAX);
        assert_eq!(log.more, 12);
        let long = format!("[id \"7\"] [msg \"{}\"]", "é".repeat(300));
        let mut l = TxLog::default();
        l.record(long.as_bytes());
        assert!(l.matches[0].msg.len() <= 200);
    }
}
