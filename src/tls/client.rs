//! The client side, for `tls:` backends: verified against `BackendCA` (or the
//! system's bundle), or not verified at all under `BackendTLSVerify off`.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Build the backend-side config of an entry: verified against `roots` (`None`
/// only with `verify` off).
pub fn build(roots: Option<RootCertStore>, verify: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = super::provider();
    let b = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let mut c = if let (true, Some(roots)) = (verify, roots) {
        b.with_root_certificates(roots).with_no_client_auth()
    } else {
        b.dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
            .with_no_client_auth()
    };
    // Backends speak HTTP/1.1 (or raw TCP); tickets let pooled reconnects resume.
    c.resumption = rustls::client::Resumption::in_memory_sessions(256);
    Ok(Arc::new(c))
}

/// The system's CA bundle (Debian: /etc/ssl/certs), read once per load.
pub fn system_roots() -> Result<RootCertStore, String> {
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(
            "no system CA certificates found (install ca-certificates, or set BackendCA)".into(),
        );
    }
    Ok(roots)
}

/// The SNI and verification name of a backend: the host as written, none for an
/// IP literal (RFC 6066 forbids IP addresses in SNI; the certificate is then
/// checked against the IP).
pub fn server_name(host: &str, ip: std::net::IpAddr) -> ServerName<'static> {
    match ServerName::try_from(host.to_string()) {
        Ok(n @ ServerName::DnsName(_)) => n,
        _ => ServerName::IpAddress(ip.into()),
    }
}

/// `BackendTLSVerify off`: any certificate is accepted, signatures still checked.
#[derive(Debug)]
struct NoVerify(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
