//! TLS configuration (SPEC section 8), built on the control plane when a
//! configuration is loaded: certificates chosen by SNI, protocol versions, client
//! certificates, session resumption shared by every worker and kept across
//! reloads, and the client side for `tls:` backends. The data plane's side (the
//! handshake and the record layer over nonblocking sockets) is `net::tls`.

pub mod certificate;
pub mod client;
pub mod server;
pub mod sni;

pub use certificate::Certificate;
pub use server::Termination;

/// The one crypto provider: rustls with aws-lc-rs.
pub fn provider() -> std::sync::Arc<rustls::crypto::CryptoProvider> {
    static P: std::sync::OnceLock<std::sync::Arc<rustls::crypto::CryptoProvider>> =
        std::sync::OnceLock::new();
    P.get_or_init(|| std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
        .clone()
}
