//! Per-request context handed to plugin hooks.

use std::any::Any;
use std::net::IpAddr;
use std::sync::Arc;

/// Facts about the current request that every plugin may read, resolved by the gateway before
/// the first plugin runs.
#[derive(Debug)]
pub struct RequestInfo {
    /// The request id (the client's `X-Request-Id` when well-formed, otherwise generated).
    pub request_id: String,
    /// The client IP: the socket peer, or the address from `X-Forwarded-For` when the peer is a
    /// configured trusted proxy.
    pub client_ip: IpAddr,
    /// The id of the matched route.
    pub route_id: Arc<str>,
    /// The client certificate verified during the TLS handshake (mutual TLS listeners).
    pub client_cert: Option<Arc<crate::api::ClientCert>>,
    /// Typed values plugins share with later plugins (e.g. verified JWT claims). Keyed by type,
    /// so each plugin should insert its own type.
    pub ext: http::Extensions,
    /// Decisions plugins report, `(plugin kind, result)`, e.g. `("jwt", "expired")`: written to
    /// the access log and counted in the plugin's metric. Results must come from a small fixed
    /// set (they become metric labels), never from client input.
    pub outcomes: Vec<(&'static str, &'static str)>,
    /// What a plugin has to say about the request beyond its decision (e.g. the WAF's
    /// matched rules), `(plugin kind, value)`: written to the access log under `details`,
    /// never a metric label. The plugin keeps the value small and bounded.
    pub details: Vec<(&'static str, serde_json::Value)>,
}

impl RequestInfo {
    /// A new info with empty extensions.
    pub fn new(request_id: String, client_ip: IpAddr, route_id: Arc<str>) -> Self {
        RequestInfo {
            request_id,
            client_ip,
            route_id,
            client_cert: None,
            ext: http::Extensions::new(),
            outcomes: Vec::new(),
            details: Vec::new(),
        }
    }

    /// Adds a plugin's detail for the access log (see [`RequestInfo::details`]).
    pub fn detail(&mut self, kind: &'static str, value: serde_json::Value) {
        self.details.push((kind, value));
    }

    /// Records a plugin decision (see [`RequestInfo::outcomes`]).
    pub fn record(&mut self, kind: &'static str, result: &'static str) {
        self.outcomes.push((kind, result));
    }
}

type Slot = Option<Box<dyn Any + Send + Sync>>;

/// What a hook sees of the request context: the shared [`RequestInfo`] and a private slot for
/// this plugin instance's own per-request state (kept from `request_filter` to `logging`).
pub struct PluginCtx<'a> {
    /// Shared request facts.
    pub info: &'a mut RequestInfo,
    slot: &'a mut Slot,
}

impl<'a> PluginCtx<'a> {
    /// Used by the gateway's pipeline (and by [`crate::api::testing`]).
    pub fn new(info: &'a mut RequestInfo, slot: &'a mut Slot) -> Self {
        PluginCtx { info, slot }
    }

    /// Stores this plugin's per-request state, replacing any earlier value.
    pub fn set_state<T: Any + Send + Sync>(&mut self, value: T) {
        *self.slot = Some(Box::new(value));
    }

    /// This plugin's per-request state, if set and of type `T`.
    pub fn state<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.slot.as_ref().and_then(|b| b.downcast_ref::<T>())
    }

    /// Takes this plugin's per-request state out of its slot (when of type `T`; otherwise
    /// the slot is left as it is).
    pub fn take_state<T: Any + Send + Sync>(&mut self) -> Option<T> {
        match self.slot.take()?.downcast::<T>() {
            Ok(b) => Some(*b),
            Err(other) => {
                *self.slot = Some(other);
                None
            }
        }
    }

    /// Mutable access to this plugin's per-request state.
    pub fn state_mut<T: Any + Send + Sync>(&mut self) -> Option<&mut T> {
        self.slot.as_mut().and_then(|b| b.downcast_mut::<T>())
    }
}
