//! The server side: one `ServerConfig` per way a listener uses TLS, built from the
//! certificates, versions and client-certificate settings of a configuration.

use std::sync::{Arc, OnceLock};

use rustls::server::WebPkiClientVerifier;
use rustls::server::{ProducesTickets, ServerSessionMemoryCache, StoresServerSessions};
use rustls::{RootCertStore, ServerConfig};

use super::sni::SniResolver;
use super::Certificate;

/// `TLSClientAuth`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    Off,
    Optional,
    Required,
}

impl ClientAuth {
    pub fn name(self) -> &'static str {
        match self {
            ClientAuth::Off => "off",
            ClientAuth::Optional => "optional",
            ClientAuth::Required => "required",
        }
    }
}

/// TLS termination as every `tls` listener of a configuration does it.
#[derive(Debug)]
pub struct Termination {
    pub certificates: Vec<Certificate>,
    /// http listeners: ALPN `http/1.1`.
    pub http: Arc<ServerConfig>,
    /// tcp entries, and http clients whose ALPN offer lacks `http/1.1` (served
    /// HTTP/1.1 without ALPN rather than refused, as nginx and HAProxy do).
    pub plain: Arc<ServerConfig>,
    /// `1.2`, `1.3`: what `TLSProtocols` allows.
    pub versions: Vec<&'static str>,
    pub client_auth: ClientAuth,
}

pub struct Settings {
    pub certificates: Vec<Certificate>,
    pub tls12: bool,
    pub tls13: bool,
    pub client_roots: Option<RootCertStore>,
    pub client_auth: ClientAuth,
}

/// TLS 1.2 sessions (by id) kept at once; the size of HAProxy's default cache.
const SESSION_CACHE: usize = 20_000;

/// Ticket keys and the session cache live as long as the process: every worker
/// uses the same (a client resumes on any of them) and every reload reuses them
/// (a client resumes after a SIGHUP).
fn ticketer() -> Result<Arc<dyn ProducesTickets>, String> {
    static T: OnceLock<Result<Arc<dyn ProducesTickets>, String>> = OnceLock::new();
    T.get_or_init(|| {
        rustls::crypto::aws_lc_rs::Ticketer::new()
            .map_err(|e| format!("cannot make TLS session ticket keys: {e}"))
    })
    .clone()
}

fn session_cache() -> Arc<dyn StoresServerSessions> {
    static C: OnceLock<Arc<ServerSessionMemoryCache>> = OnceLock::new();
    C.get_or_init(|| ServerSessionMemoryCache::new(SESSION_CACHE))
        .clone()
}

pub fn build(s: Settings) -> Result<Termination, String> {
    let resolver = Arc::new(
        SniResolver::new(&s.certificates).ok_or("a `tls` listener needs a TLSCertificate")?,
    );
    let mut versions: Vec<&'static rustls::SupportedProtocolVersion> = Vec::new();
    let mut names = Vec::new();
    if s.tls12 {
        versions.push(&rustls::version::TLS12);
        names.push("1.2");
    }
    if s.tls13 {
        versions.push(&rustls::version::TLS13);
        names.push("1.3");
    }
    let provider = super::provider();
    let verifier = match (&s.client_roots, s.client_auth) {
        (Some(roots), auth) if auth != ClientAuth::Off => {
            let b = WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots.clone()),
                provider.clone(),
            );
            let b = if auth == ClientAuth::Optional {
                b.allow_unauthenticated()
            } else {
                b
            };
            Some(
                b.build()
                    .map_err(|e| format!("unusable TLSClientCA: {e}"))?,
            )
        }
        _ => None,
    };
    let ticketer = ticketer()?;
    let make = |alpn: bool| -> Result<Arc<ServerConfig>, String> {
        let b = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&versions)
            .map_err(|e| format!("TLSProtocols: {e}"))?;
        let b = match &verifier {
            Some(v) => b.with_client_cert_verifier(v.clone()),
            None => b.with_no_client_auth(),
        };
        let mut c = b.with_cert_resolver(resolver.clone());
        c.ticketer = ticketer.clone();
        c.session_storage = session_cache();
        if alpn {
            c.alpn_protocols = vec![b"http/1.1".to_vec()];
        }
        Ok(Arc::new(c))
    };
    Ok(Termination {
        http: make(true)?,
        plain: make(false)?,
        certificates: s.certificates,
        versions: names,
        client_auth: if verifier.is_some() {
            s.client_auth
        } else {
            ClientAuth::Off
        },
    })
}

impl Termination {
    /// The config for a handshake: `http` listeners speak ALPN `http/1.1` unless
    /// the client offered ALPN without it.
    pub fn config_for(
        &self,
        http: bool,
        hello: &rustls::server::ClientHello<'_>,
    ) -> Arc<ServerConfig> {
        if !http {
            return self.plain.clone();
        }
        let offers_other = hello
            .alpn()
            .is_some_and(|mut offered| !offered.any(|p| p == b"http/1.1"));
        if offers_other {
            self.plain.clone()
        } else {
            self.http.clone()
        }
    }
}
