//! A test PKI (rcgen): a CA that writes server and client certificates into its own
//! temporary directory, and rustls clients that trust only it.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    SanType,
};

/// A test CA that signs leaf certificates into a directory.
pub struct Ca {
    pub issuer: Issuer<'static, KeyPair>,
    /// The root's certificate (what clients trust).
    pub pem: String,
    /// Intermediate certificates appended to every leaf this CA writes (empty for a root).
    pub chain: String,
    pub dir: tempfile::TempDir,
}

impl Ca {
    pub fn new() -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "gatehouse test CA");
        let cert = params.self_signed(&key).unwrap();
        Ca {
            pem: cert.pem(),
            chain: String::new(),
            issuer: Issuer::new(params, key),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// An intermediate CA signed by this one, writing into the same directory: its leaves'
    /// files carry the intermediate after the leaf, and clients still trust only the root.
    pub fn intermediate(&self) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "gatehouse test intermediate");
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Ca {
            pem: self.pem.clone(),
            chain: cert.pem() + &self.chain,
            issuer: Issuer::new(params, key),
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes `<file>.pem` and `<file>.key` for `names`; returns the leaf's DER.
    pub fn leaf(&self, file: &str, names: &[&str], expired: bool) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        if expired {
            params.not_before = rcgen::date_time_ymd(2020, 1, 1);
            params.not_after = rcgen::date_time_ymd(2021, 1, 1);
        }
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        // write by rename, as a deploy tool would
        for (ext, text) in [
            ("pem", cert.pem() + &self.chain),
            ("key", key.serialize_pem()),
        ] {
            let tmp = self.dir.path().join(format!("{file}.{ext}.tmp"));
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, self.path(&format!("{file}.{ext}"))).unwrap();
        }
        cert.der().to_vec()
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    pub fn client(&self, https_port: u16, names: &[&str]) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap())
            .tls_info(true)
            .timeout(Duration::from_secs(10));
        for n in names {
            b = b.resolve(n, SocketAddr::from(([127, 0, 0, 1], https_port)));
        }
        b.build().unwrap()
    }
}

impl Ca {
    /// A client certificate `<file>.pem`/`.key` with common name `cn` and URI/DNS SANs;
    /// returns its DER.
    pub fn client_leaf(&self, file: &str, cn: &str, sans: &[&str]) -> Vec<u8> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.subject_alt_names = sans
            .iter()
            .map(|s| {
                if s.contains("://") {
                    SanType::URI(s.to_string().try_into().unwrap())
                } else {
                    SanType::DnsName(s.to_string().try_into().unwrap())
                }
            })
            .collect();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        std::fs::write(self.path(&format!("{file}.pem")), cert.pem()).unwrap();
        std::fs::write(self.path(&format!("{file}.key")), key.serialize_pem()).unwrap();
        cert.der().to_vec()
    }

    /// Writes the CA certificate as `<file>` and returns its path.
    pub fn write_ca(&self, file: &str) -> PathBuf {
        let p = self.path(file);
        std::fs::write(&p, &self.pem).unwrap();
        p
    }

    /// The reqwest identity of the client certificate `<file>` (key and chain, PEM).
    pub fn identity(&self, file: &str) -> reqwest::Identity {
        let mut pem = std::fs::read(self.path(&format!("{file}.key"))).unwrap();
        pem.extend(std::fs::read(self.path(&format!("{file}.pem"))).unwrap());
        reqwest::Identity::from_pem(&pem).unwrap()
    }

    /// [`Ca::client`] presenting the client certificate `<file>`.
    pub fn client_with(&self, https_port: u16, names: &[&str], file: &str) -> reqwest::Client {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(self.pem.as_bytes()).unwrap())
            .identity(self.identity(file))
            .timeout(Duration::from_secs(10));
        for n in names {
            b = b.resolve(n, SocketAddr::from(([127, 0, 0, 1], https_port)));
        }
        b.build().unwrap()
    }
}

/// SHA-256 of `der`, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

impl Ca {
    /// A rustls server config serving the leaf `<file>` (see [`Ca::leaf`]), offering `alpn`,
    /// and when `clients` is given, requiring a client certificate signed by it.
    pub fn server_config(
        &self,
        file: &str,
        alpn: &[&str],
        clients: Option<&Ca>,
    ) -> rustls::ServerConfig {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::{CertificateDer, PrivateKeyDer};
        let chain: Vec<CertificateDer<'static>> =
            CertificateDer::pem_file_iter(self.path(&format!("{file}.pem")))
                .unwrap()
                .collect::<Result<_, _>>()
                .unwrap();
        let key = PrivateKeyDer::from_pem_file(self.path(&format!("{file}.key"))).unwrap();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let b = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap();
        let b = match clients {
            None => b.with_no_client_auth(),
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(ca.pem.as_bytes()) {
                    roots.add(c.unwrap()).unwrap();
                }
                let v = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    std::sync::Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                b.with_client_cert_verifier(v)
            }
        };
        let mut config = b.with_single_cert(chain, key).unwrap();
        config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
        config
    }
}

impl Ca {
    /// A TLS connection to 127.0.0.1:`port` for server name `name`, trusting this CA and
    /// offering `alpn`.
    pub async fn connect_tls(
        &self,
        port: u16,
        name: &'static str,
        alpn: &[&[u8]],
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        use rustls_pki_types::pem::PemObject;
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_pki_types::CertificateDer::pem_slice_iter(self.pem.as_bytes()) {
            roots.add(c.unwrap()).unwrap();
        }
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
            .connect(name.try_into().unwrap(), tcp)
            .await
            .unwrap()
    }
}
