//! A minimal Pingora proxy (no routing, no plugins, no metrics): the baseline that the load
//! comparison (`benches/load/compare.py`) measures gatehouse against, to tell Pingora's own
//! cost from gatehouse's. Same allocator and runtime settings as gatehouse.
//!
//! ```sh
//! cargo run --release --example bare_pingora -- 127.0.0.1:8081 127.0.0.1:9001
//! # HTTPS with HTTP/2 by ALPN (Pingora's own TLS listener), for `benches/load/tls.py`:
//! cargo run --release --example bare_pingora -- 127.0.0.1:8443 127.0.0.1:9001 cert.pem key.pem
//! ```

use async_trait::async_trait;
use pingora_core::server::configuration::ServerConf;
use pingora_core::server::Server;
use pingora_core::upstreams::peer::HttpPeer;
use pingora_proxy::{ProxyHttp, Session};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Bare(std::net::SocketAddr);

#[async_trait]
impl ProxyHttp for Bare {
    type CTX = ();
    fn new_ctx(&self) {}
    async fn upstream_peer(
        &self,
        _s: &mut Session,
        _ctx: &mut (),
    ) -> pingora_core::Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(self.0, false, String::new())))
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let (listen, backend) = match (args.get(1), args.get(2)) {
        (Some(l), Some(b)) => (l.clone(), b.parse()?),
        _ => return Err("usage: bare_pingora LISTEN BACKEND".into()),
    };
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        grace_period_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = pingora_proxy::http_proxy_service(&server.configuration, Bare(backend));
    match (args.get(3), args.get(4)) {
        (Some(cert), Some(key)) => {
            let mut tls = pingora_core::listeners::tls::TlsSettings::intermediate(cert, key)?;
            tls.enable_h2();
            proxy.add_tls_with_settings(&listen, None, tls);
        }
        _ => proxy.add_tcp(&listen),
    }
    server.add_service(proxy);
    server.run_forever();
}
