//! Builds and runs the Pingora server: the proxy service on `server.listen`, the admin service
//! on `admin.listen`, and the health supervisor.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use gatehouse_plugins::Registry;
use log::info;
use pingora_core::listeners::{L4BufferSettings, ListenerConfig};
use pingora_core::server::configuration::{Opt, ServerConf};
use pingora_core::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch};
use pingora_core::services::background::{background_service, GenBackgroundService};
use pingora_core::services::listening::Service;

use crate::access_log::AccessLog;
use crate::admin::AdminApp;
use crate::config::raw::{RawListen, RawServer};
use crate::config::{self, ConfigErrors, Loaded};
use crate::metrics::Metrics;
use crate::proxy::cache::{CacheRuntime, CacheSettings, DiskSettings};
use crate::proxy::conn::Guarded;
use crate::proxy::Gateway;
use crate::reload::{ReloadService, Reloader};
use crate::state::{SharedState, Snapshot};
use crate::upstream::health::HealthSupervisor;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("access log `{path}`: {source}")]
    AccessLog {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
}

/// How `run` was asked to start.
#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    /// Take over the listening sockets of a running gatehouse (graceful binary upgrade).
    pub upgrade: bool,
}

/// SIGTERM and SIGINT both shut down gracefully (in-flight requests get the grace period);
/// SIGQUIT hands the listening sockets to a new process (`run --upgrade`).
struct Signals;

#[async_trait]
impl ShutdownSignalWatch for Signals {
    async fn recv(&self) -> ShutdownSignal {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut quit), Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::quit()),
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            log::error!("cannot install signal handlers; shutting down");
            return ShutdownSignal::FastShutdown;
        };
        tokio::select! {
            _ = quit.recv() => ShutdownSignal::GracefulUpgrade,
            _ = term.recv() => ShutdownSignal::GracefulTerminate,
            _ = int.recv() => {
                info!("SIGINT received, shutting down gracefully");
                ShutdownSignal::GracefulTerminate
            }
        }
    }
}

/// Fails before starting when a listener cannot be bound (Pingora would only panic in the
/// service's thread and leave the process half up), and exits if one still fails (a race).
fn check_listeners(server: &RawServer, admin: &str, upgrade: bool) -> Result<(), AppError> {
    if !upgrade {
        for addr in server.listen.iter().map(RawListen::addr).chain([admin]) {
            std::net::TcpListener::bind(addr).map_err(|source| AppError::Listen {
                addr: addr.to_string(),
                source,
            })?;
        }
    }
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        default_hook(info);
        if info.to_string().contains("Failed to build listeners") {
            log::error!("a listener could not be started; exiting");
            std::process::exit(1);
        }
    }));
    Ok(())
}

/// Pingora's server settings from `server:` (and the upstream pool sizes).
fn server_conf(snap: &Snapshot) -> ServerConf {
    let server = &snap.raw.server;
    ServerConf {
        threads: server.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |n| n.get(),
        ),
        grace_period_seconds: Some(server.grace_period.0.as_secs_f64().ceil() as u64),
        upgrade_sock: server.upgrade_sock.clone(),
        work_stealing: server.work_stealing,
        // Pingora keeps one pool of idle upstream connections per process
        upstream_keepalive_pool_size: (snap.raw.upstreams.values())
            .filter_map(|u| u.pool.as_ref().and_then(|p| p.max_idle))
            .max()
            .unwrap_or(128),
        ..ServerConf::default()
    }
}

/// The proxy service: Pingora's HTTP proxy over [`Gateway`], inside the connection guard,
/// on every `server.listen` address.
fn proxy_service(
    server: &Server,
    gateway: Gateway,
    state: &Arc<SharedState>,
    metrics: &Metrics,
) -> Service<Guarded<pingora_proxy::HttpProxy<Gateway>>> {
    let raw = &state.snapshot().raw.server;
    let mut http = pingora_proxy::http_proxy(&server.configuration, gateway);
    // HTTP/2 connections (HTTPS listeners with ALPN h2): closed after a minute without a
    // stream, like an idle HTTP/1 keep-alive connection (Pingora's default: never)
    let mut options = pingora_core::apps::HttpServerOptions::default();
    options.h2_idle_timeout = Some(std::time::Duration::from_secs(60));
    // Pingora's h2 server looks for the h2c preface only on connections the guard hands it
    // (plain listeners with `h2c: true` whose first bytes are the preface)
    options.h2c = true;
    // CONNECT reaches the gateway's hooks, which refuse it with the gateway's 405 (Pingora's
    // own refusal has no body)
    options.allow_connect_method_proxying = true;
    http.server_options = Some(options);
    let blocklist = Arc::new(crate::proxy::abuse::Blocklist::new(
        metrics.connections.refused.with_label_values(&["blocked"]),
    ));
    let guarded = Guarded::new(
        http,
        Arc::clone(state),
        &metrics.connections,
        metrics.tls.clone(),
        Arc::clone(&blocklist),
    );
    let mut proxy = Service::new("gatehouse proxy".to_string(), guarded);
    // sources blocked for HTTP/2 abuse are dropped in the accept loop
    proxy.set_connection_filter(blocklist);
    // Pingora's default read buffer is 64 KiB per connection (sized for TLS records);
    // gatehouse serves plain HTTP: by default none, the HTTP parser reads straight from the
    // socket into its own buffer (same syscalls, 16-64 KiB less per idle connection)
    let read = usize::try_from(raw.read_buffer.0).unwrap_or(0);
    for l in raw.listen.iter().map(RawListen::addr) {
        proxy
            .add_listener(ListenerConfig::tcp(l).l4_buffer(L4BufferSettings::default().read(read)));
    }
    proxy
}

/// The health supervisor over the serving snapshot's groups; marks `state` ready.
fn health_service(
    state: &Arc<SharedState>,
    metrics: &Arc<Metrics>,
) -> GenBackgroundService<HealthSupervisor> {
    let (groups, ready) = (Arc::clone(state), Arc::clone(state));
    background_service(
        "health",
        HealthSupervisor::new(
            move || groups.snapshot().upstreams.values().cloned().collect(),
            move || ready.set_health_ready(),
            Arc::clone(metrics),
        ),
    )
}

/// Starts the gateway on the config `loaded` from `opts.config` (read once, by the caller)
/// with the plugins of `registry`, and blocks until it has shut down.
pub fn run(opts: RunOptions, loaded: Loaded, registry: Registry) -> Result<(), AppError> {
    // the latency buckets are part of the config: the metrics are made before compiling
    let buckets = (loaded.raw.server.latency_buckets.clone())
        .filter(|b| !b.is_empty())
        .unwrap_or_else(|| crate::metrics::DURATION_BUCKETS.to_vec());
    let metrics = Arc::new(Metrics::for_gateway(
        &buckets,
        &registry.decision_metrics(),
    )?);
    let snapshot = config::compile_loaded(&opts.config, loaded, &registry, &metrics, None)?;
    crate::reload::sync_series(&metrics, None, &snapshot);
    crate::reload::start_plugins(None, &snapshot);
    metrics.config.applied("startup", snapshot.version);

    let server_cfg = snapshot.raw.server.clone();
    let admin_listen = snapshot.raw.admin.listen.clone();
    check_listeners(&server_cfg, &admin_listen, opts.upgrade)?;
    let access_log = Arc::new(
        AccessLog::open(&server_cfg.access_log, metrics.access_log_dropped.clone()).map_err(
            |source| AppError::AccessLog {
                path: server_cfg.access_log.clone(),
                source,
            },
        )?,
    );
    let opt = Opt {
        upgrade: opts.upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, server_conf(&snapshot));
    server.bootstrap();
    let state = Arc::new(SharedState::new(snapshot));

    let cache = CacheRuntime::new(cache_settings(&server_cfg.cache, &opts.config));
    let reloader = Arc::new(Reloader::new(
        &opts.config,
        registry,
        Arc::clone(&metrics),
        Arc::clone(&state),
        cache,
    ));
    let board = Arc::new(crate::status::Board::new());
    let gateway = Gateway::new(
        cache,
        Arc::clone(&state),
        Arc::clone(&metrics),
        Arc::clone(&access_log),
        Arc::clone(&board),
    );
    let mut admin = Service::new(
        "gatehouse admin".to_string(),
        AdminApp {
            state: Arc::clone(&state),
            metrics: Arc::clone(&metrics),
            cache,
            reloader: Arc::clone(&reloader),
            board: Arc::clone(&board),
        },
    );
    admin.threads = Some(1);
    admin.add_tcp(&admin_listen);
    server.add_service(proxy_service(&server, gateway, &state, &metrics));
    server.add_service(admin);
    server.add_service(health_service(&state, &metrics));
    server.add_service(background_service(
        "status sampler",
        crate::status::Sampler {
            board,
            state: Arc::clone(&state),
            metrics: Arc::clone(&metrics),
        },
    ));
    // cache purges from the other instances (when a `redis` section is configured)
    server.add_service(background_service(
        "purge feed",
        crate::purge_feed::PurgeFeed {
            state: Arc::clone(&state),
            cache,
        },
    ));
    // certificates from the `acme` CA (idle without one; a reload may add it)
    server.add_service(background_service(
        "acme",
        crate::acme::service::AcmeService {
            state: Arc::clone(&state),
            metrics: Arc::clone(&metrics),
        },
    ));
    let watch_file = server_cfg.watch_config;
    server.add_service(background_service(
        "reload",
        ReloadService {
            reloader,
            watch_file,
        },
    ));
    info!(
        "gatehouse {} listening on {:?}, admin on {admin_listen}",
        env!("CARGO_PKG_VERSION"),
        server_cfg
            .listen
            .iter()
            .map(RawListen::addr)
            .collect::<Vec<_>>()
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(Signals),
    });
    // the last lines of the access log
    access_log.flush();
    Ok(())
}

fn size(v: u64) -> usize {
    usize::try_from(v).unwrap_or(usize::MAX)
}

/// `server.cache` as the cache takes it: a relative disk path is relative to the config
/// file's directory.
fn cache_settings(c: &crate::config::raw::RawCache, config: &std::path::Path) -> CacheSettings {
    CacheSettings {
        max_size: size(c.max_size.0),
        max_object_size: size(c.memory_max_object()),
        lock_timeout: c.lock_timeout.0,
        disk: c.disk.as_ref().map(|d| {
            let base = config.parent().unwrap_or(std::path::Path::new("."));
            DiskSettings {
                path: base.join(&d.path),
                max_size: size(d.max_size.0),
                max_object_size: size(d.max_object_size.0),
                max_objects: d.max_objects,
            }
        }),
    }
}
