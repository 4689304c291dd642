//! TLS helpers for the integration tests (SPEC section 8): a small PKI made with
//! `rcgen` (CAs, server and client certificates, all ECDSA P-256), a rustls
//! client whose plaintext side is an ordinary [`Client`], a TLS HTTP backend
//! whose plaintext side is an ordinary [`Backend`], and runners for the
//! `openssl` and `curl` command-line tools.
//!
//! Both TLS ends work the same way: the handshake is done on a blocking
//! `TcpStream` (so its outcome is known at once), then a thread (the "pump")
//! moves bytes between the rustls connection and one end of a unix socket pair,
//! driven by poll(2). The other end of the pair is the plaintext socket the
//! existing [`Client`] / [`Backend`] code reads and writes, so every check those
//! make (framing, byte patterns, recorded requests, connection counts) works
//! over TLS unchanged.

#![allow(dead_code)]

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::Resumption;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, ClientConnection, DigitallySignedStruct, HandshakeKind, ProtocolVersion,
    RootCertStore, ServerConfig, ServerConnection, SignatureScheme, SupportedProtocolVersion,
};

use super::{temp_dir, Backend, Client, Conn, Reply, Request, Wire, KIB};

/// Timeout of every blocking TLS socket operation in these helpers.
const TLS_IO: Duration = Duration::from_secs(10);

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

// ---------------------------------------------------------------------------
// Certificates
// ---------------------------------------------------------------------------

/// A validity period as two calendar dates (UTC midnight).
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub from: (i32, u8, u8),
    pub until: (i32, u8, u8),
}

/// The default validity of the test certificates: until 2040-06-15.
pub const VALID: Validity = Validity {
    from: (2024, 1, 1),
    until: (2040, 6, 15),
};

/// Expired on 2021-01-01.
pub const EXPIRED: Validity = Validity {
    from: (2020, 1, 1),
    until: (2021, 1, 1),
};

/// Unix time of a calendar date at 00:00:00 UTC.
pub fn unix_date(y: i32, m: u8, d: u8) -> i64 {
    let (y, m, d) = (y as i64, m as i64, d as i64);
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * ((m + 9) % 12) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    (era * 146_097 + doe - 719_468) * 86_400
}

/// A certificate and its private key (PKCS#8), as PEM and DER.
#[derive(Clone)]
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl Leaf {
    pub fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.der.clone()]
    }

    pub fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Write `NAME.pem` and `NAME.key` into `dir`; their paths.
    pub fn write(&self, dir: &Path, name: &str) -> (PathBuf, PathBuf) {
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        std::fs::write(&cert, &self.cert_pem).unwrap();
        std::fs::write(&key, &self.key_pem).unwrap();
        (cert, key)
    }

    /// Replace `cert` and `key` atomically (write aside, then rename), so that a
    /// reload never reads half a file.
    pub fn replace(&self, cert: &Path, key: &Path) {
        for (path, text) in [(cert, &self.cert_pem), (key, &self.key_pem)] {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, text).unwrap();
            std::fs::rename(&tmp, path).unwrap();
        }
    }

    /// Self-signed, not a CA: no trust store built from a [`Ca`] accepts it.
    pub fn self_signed(cn: &str, names: &[&str]) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let params = leaf_params(cn, None, names, VALID, false);
        let cert = params.self_signed(&key).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

fn leaf_params(
    cn: &str,
    org: Option<&str>,
    names: &[&str],
    validity: Validity,
    client: bool,
) -> CertificateParams {
    let mut params =
        CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    let mut dn = rcgen::DistinguishedName::new();
    // Order in the DER: O first, then CN. RFC 4514 text lists them the other
    // way round: `CN=...,O=...`.
    if let Some(o) = org {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, cn);
    params.distinguished_name = dn;
    params.not_before = rcgen::date_time_ymd(validity.from.0, validity.from.1, validity.from.2);
    params.not_after = rcgen::date_time_ymd(validity.until.0, validity.until.1, validity.until.2);
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![if client {
        ExtendedKeyUsagePurpose::ClientAuth
    } else {
        ExtendedKeyUsagePurpose::ServerAuth
    }];
    params.use_authority_key_identifier_extension = true;
    params
}

/// A certificate authority that signs [`Leaf`]s.
pub struct Ca {
    pub cert_pem: String,
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new(cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Simian Tests");
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2050, 1, 1);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Ca {
            cert_pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// An intermediate CA signed by this one.
    pub fn intermediate(&self, cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        params.not_after = rcgen::date_time_ymd(2050, 1, 1);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Ca {
            cert_pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    fn sign(&self, params: CertificateParams) -> Leaf {
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses), valid until
    /// 2040-06-15.
    pub fn server(&self, cn: &str, names: &[&str]) -> Leaf {
        self.sign(leaf_params(cn, None, names, VALID, false))
    }

    /// A server certificate with an RSA 2048 key.
    pub fn server_rsa(&self, cn: &str, names: &[&str]) -> Leaf {
        let key =
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048).unwrap();
        let cert = leaf_params(cn, None, names, VALID, false)
            .signed_by(&key, &self.issuer)
            .unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }

    pub fn server_valid(&self, cn: &str, names: &[&str], validity: Validity) -> Leaf {
        self.sign(leaf_params(cn, None, names, validity, false))
    }

    /// A client certificate with subject `O=org, CN=cn` (in DER order).
    pub fn client(&self, cn: &str, org: &str) -> Leaf {
        self.sign(leaf_params(cn, Some(org), &[], VALID, true))
    }

    /// Write `NAME.pem` (the CA certificate) into `dir`.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let p = dir.join(format!("{name}.pem"));
        std::fs::write(&p, &self.cert_pem).unwrap();
        p
    }

    pub fn roots(&self) -> RootCertStore {
        let mut r = RootCertStore::empty();
        r.add(self.der.clone()).unwrap();
        r
    }
}

/// A temporary directory, removed on drop.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(tag: &str) -> Dir {
        Dir(temp_dir(tag))
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
    /// `path(name)` as a string for a config file.
    pub fn s(&self, name: &str) -> String {
        self.path(name).display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------------------
// Client side
// ---------------------------------------------------------------------------

/// Accepts any server certificate (for tests that look at which certificate
/// was served rather than whether it verifies).
#[derive(Debug)]
struct AcceptAny;

impl ServerCertVerifier for AcceptAny {
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
            &provider().signature_verification_algorithms,
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
            &provider().signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Builds a rustls [`ClientConfig`].
#[derive(Clone)]
pub struct ClientOpts {
    roots: Option<RootCertStore>,
    versions: Vec<&'static SupportedProtocolVersion>,
    alpn: Vec<Vec<u8>>,
    cert: Option<Leaf>,
    resumption: bool,
    sni: bool,
}

impl ClientOpts {
    /// Verify the server against `ca`; TLS 1.2 and 1.3; no ALPN; resumption on.
    pub fn new(ca: &Ca) -> ClientOpts {
        ClientOpts {
            roots: Some(ca.roots()),
            versions: vec![&rustls::version::TLS13, &rustls::version::TLS12],
            alpn: vec![],
            cert: None,
            resumption: true,
            sni: true,
        }
    }
    /// Accept any server certificate.
    pub fn insecure() -> ClientOpts {
        ClientOpts {
            roots: None,
            ..ClientOpts::new(&Ca::new("unused"))
        }
    }
    pub fn tls12(mut self) -> Self {
        self.versions = vec![&rustls::version::TLS12];
        self
    }
    pub fn tls13(mut self) -> Self {
        self.versions = vec![&rustls::version::TLS13];
        self
    }
    pub fn alpn(mut self, protos: &[&str]) -> Self {
        self.alpn = protos.iter().map(|p| p.as_bytes().to_vec()).collect();
        self
    }
    pub fn cert(mut self, leaf: &Leaf) -> Self {
        self.cert = Some(leaf.clone());
        self
    }
    /// Every handshake is a full one.
    pub fn no_resumption(mut self) -> Self {
        self.resumption = false;
        self
    }
    /// Send no SNI.
    pub fn no_sni(mut self) -> Self {
        self.sni = false;
        self
    }

    pub fn build(&self) -> Arc<ClientConfig> {
        let b = ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&self.versions)
            .unwrap();
        let b = match &self.roots {
            Some(r) => b.with_root_certificates(r.clone()),
            None => b
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AcceptAny)),
        };
        let mut cfg = match &self.cert {
            Some(leaf) => b.with_client_auth_cert(leaf.chain(), leaf.key()).unwrap(),
            None => b.with_no_client_auth(),
        };
        cfg.alpn_protocols = self.alpn.clone();
        cfg.enable_sni = self.sni;
        if !self.resumption {
            cfg.resumption = Resumption::disabled();
        }
        Arc::new(cfg)
    }
}

/// How the network side of a pumped TLS connection ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum End {
    /// The peer sent close_notify.
    CloseNotify,
    /// TCP EOF or reset without close_notify.
    Eof,
    /// A TLS error (e.g. an alert from the peer).
    Error(String),
}

/// What a finished handshake negotiated.
#[derive(Clone, Debug)]
pub struct TlsInfo {
    /// The peer's certificate chain (leaf first); empty if it sent none.
    pub peer: Vec<CertificateDer<'static>>,
    pub version: Option<ProtocolVersion>,
    pub alpn: Option<Vec<u8>>,
    pub kind: Option<HandshakeKind>,
    /// Set by the pump when the network side ends.
    pub end: Arc<Mutex<Option<End>>>,
}

impl TlsInfo {
    pub fn resumed(&self) -> bool {
        self.kind == Some(HandshakeKind::Resumed)
    }
    /// The leaf certificate served.
    pub fn leaf(&self) -> &CertificateDer<'static> {
        self.peer.first().expect("no peer certificate")
    }
    /// How the connection ended, waiting up to `within` for it to end.
    pub fn wait_end(&self, within: Duration) -> Option<End> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(e) = self.end.lock().unwrap().clone() {
                return Some(e);
            }
            if Instant::now() >= deadline {
                return None;
            }
            thread::sleep(Duration::from_millis(5));
        }
    }
}

fn info(c: &rustls::CommonState) -> TlsInfo {
    TlsInfo {
        peer: c
            .peer_certificates()
            .map(|p| p.to_vec())
            .unwrap_or_default(),
        version: c.protocol_version(),
        alpn: c.alpn_protocol().map(|a| a.to_vec()),
        kind: c.handshake_kind(),
        end: Arc::new(Mutex::new(None)),
    }
}

/// Run a handshake to its end on a blocking socket.
fn handshake(conn: &mut rustls::Connection, tcp: &mut TcpStream) -> io::Result<()> {
    while conn.is_handshaking() {
        conn.complete_io(tcp)?;
    }
    while conn.wants_write() {
        conn.write_tls(tcp)?;
    }
    Ok(())
}

/// Connect to `addr`, complete a TLS handshake for `name` (also the SNI unless
/// the options turned it off), and return an HTTP [`Client`] speaking over it.
pub fn connect(addr: &str, name: &str, cfg: &Arc<ClientConfig>) -> io::Result<(Client, TlsInfo)> {
    let sa: SocketAddr = addr.parse().expect("IP:PORT");
    let mut tcp = TcpStream::connect_timeout(&sa, Duration::from_secs(5))?;
    tcp.set_nodelay(true)?;
    tcp.set_read_timeout(Some(TLS_IO))?;
    tcp.set_write_timeout(Some(TLS_IO))?;
    let server_name = ServerName::try_from(name.to_string()).expect("server name");
    let cc = ClientConnection::new(cfg.clone(), server_name)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    let mut conn = rustls::Connection::Client(cc);
    handshake(&mut conn, &mut tcp)?;
    let i = info(&conn);
    let (ours, theirs) = UnixStream::pair()?;
    let end = i.end.clone();
    thread::spawn(move || pump(conn, tcp, theirs, end));
    Ok((
        Client {
            wire: Wire::new(Conn::Unix(ours)),
        },
        i,
    ))
}

/// A full handshake and one `GET path` with `Connection: close`; the handshake
/// and the response, or the first error.
pub fn get_once(
    addr: &str,
    name: &str,
    cfg: &Arc<ClientConfig>,
    path: &str,
) -> io::Result<(TlsInfo, super::Response)> {
    let (mut c, i) = connect(addr, name, cfg)?;
    c.try_send(
        format!("GET {path} HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n").as_bytes(),
    )?;
    let r = c.try_read_response(false)?;
    Ok((i, r))
}

/// The first bytes a TLS client sends: a whole ClientHello record for `name`.
pub fn client_hello(name: &str) -> Vec<u8> {
    let cfg = ClientOpts::insecure().build();
    let mut c =
        ClientConnection::new(cfg, ServerName::try_from(name.to_string()).unwrap()).unwrap();
    let mut out = Vec::new();
    while c.wants_write() {
        c.write_tls(&mut out).unwrap();
    }
    out
}

// ---------------------------------------------------------------------------
// The pump: rustls connection <-> plaintext unix socket
// ---------------------------------------------------------------------------

fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Move bytes between `tls` (over `tcp`, handshake done or not) and `plain`
/// until the network side closes (then `plain` is closed once everything read
/// was delivered), or 30 s pass without any event.
fn pump(
    mut tls: rustls::Connection,
    mut tcp: TcpStream,
    mut plain: UnixStream,
    end: Arc<Mutex<Option<End>>>,
) {
    const MAX_PENDING: usize = 1 << 20;
    let set_end = |e: End| {
        let mut g = end.lock().unwrap();
        if g.is_none() {
            *g = Some(e);
        }
    };
    if tcp.set_nonblocking(true).is_err() || plain.set_nonblocking(true).is_err() {
        return;
    }
    let mut to_plain: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * KIB];
    let mut net_eof = false;
    let mut local_eof = false;
    let mut net_shut = false;
    loop {
        // Plaintext rustls already decrypted (also what arrived with the handshake).
        if !net_eof {
            loop {
                match tls.reader().read(&mut buf) {
                    Ok(0) => {
                        set_end(End::CloseNotify);
                        net_eof = true;
                        break;
                    }
                    Ok(n) => to_plain.extend_from_slice(&buf[..n]),
                    Err(e) if would_block(&e) => break,
                    Err(_) => {
                        set_end(End::Eof);
                        net_eof = true;
                        break;
                    }
                }
            }
        }
        while tls.wants_write() {
            match tls.write_tls(&mut tcp) {
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(_) => return,
            }
        }
        while !to_plain.is_empty() {
            match plain.write(&to_plain) {
                Ok(n) => {
                    to_plain.drain(..n);
                }
                Err(e) if would_block(&e) => break,
                Err(_) => return, // the local side is gone
            }
        }
        if net_eof && to_plain.is_empty() {
            return; // dropping `plain` tells the local side
        }
        if local_eof && !tls.wants_write() && !net_shut {
            let _ = tcp.shutdown(Shutdown::Write);
            net_shut = true;
        }
        let mut fds = [
            libc::pollfd {
                fd: tcp.as_raw_fd(),
                events: 0,
                revents: 0,
            },
            libc::pollfd {
                fd: plain.as_raw_fd(),
                events: 0,
                revents: 0,
            },
        ];
        if !net_eof && to_plain.len() < MAX_PENDING {
            fds[0].events |= libc::POLLIN;
        }
        if tls.wants_write() {
            fds[0].events |= libc::POLLOUT;
        }
        if !local_eof && !tls.is_handshaking() && !tls.wants_write() {
            fds[1].events |= libc::POLLIN;
        }
        if !to_plain.is_empty() {
            fds[1].events |= libc::POLLOUT;
        }
        // SAFETY: two valid pollfd structs for descriptors we own.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 30_000) };
        if n == 0 {
            set_end(End::Error("idle for 30 s".into()));
            return;
        }
        if n < 0 {
            if io::Error::last_os_error().kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        if fds[0].revents != 0 && fds[0].events & libc::POLLIN != 0 {
            match tls.read_tls(&mut tcp) {
                // The reader reports the end at the top of the loop.
                Ok(0) => {}
                Ok(_) => {
                    if let Err(e) = tls.process_new_packets() {
                        set_end(End::Error(e.to_string()));
                        // Send the alert rustls queued, best effort.
                        let _ = tls.write_tls(&mut tcp);
                        return;
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(_) => {
                    set_end(End::Eof);
                    net_eof = true;
                }
            }
        }
        if fds[1].revents != 0 && fds[1].events & libc::POLLIN != 0 {
            match plain.read(&mut buf[..16 * KIB]) {
                Ok(0) => {
                    local_eof = true;
                    tls.send_close_notify();
                }
                Ok(n) => {
                    if tls.writer().write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(_) => {
                    local_eof = true;
                    tls.send_close_notify();
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------
// A TLS HTTP backend
// ---------------------------------------------------------------------------

struct TlsState {
    /// The SNI of every completed handshake, in order.
    sni: Mutex<Vec<Option<String>>>,
    handshakes: AtomicUsize,
    failed: AtomicUsize,
    stop: AtomicBool,
}

/// An HTTP/1.1 server over TLS: each accepted connection is handshaken, then
/// its plaintext is served by an inner [`Backend`] (one inner connection per
/// TLS connection), which records the requests and answers them.
pub struct TlsBackend {
    addr: SocketAddr,
    /// The plaintext server behind the TLS layer.
    pub http: Backend,
    state: Arc<TlsState>,
}

impl TlsBackend {
    /// Serve `leaf` on 127.0.0.1 (free port).
    pub fn start(
        leaf: &Leaf,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> TlsBackend {
        Self::start_on("127.0.0.1:0", leaf, handler)
    }

    /// Serve `leaf` on `bind` (port 0 for a free one).
    pub fn start_on(
        bind: &str,
        leaf: &Leaf,
        handler: impl Fn(&Request) -> Reply + Send + Sync + 'static,
    ) -> TlsBackend {
        let cfg = ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(leaf.chain(), leaf.key())
            .unwrap();
        let cfg = Arc::new(cfg);
        let l = TcpListener::bind(bind).unwrap();
        let addr = l.local_addr().unwrap();
        let http = Backend::start(handler);
        let inner = http.inner.clone();
        let state = Arc::new(TlsState {
            sni: Mutex::new(Vec::new()),
            handshakes: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let st = state.clone();
        thread::spawn(move || {
            for s in l.incoming() {
                if st.stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut tcp) = s else { continue };
                let (st, cfg, inner) = (st.clone(), cfg.clone(), inner.clone());
                thread::spawn(move || {
                    let _ = tcp.set_nodelay(true);
                    let _ = tcp.set_read_timeout(Some(TLS_IO));
                    let _ = tcp.set_write_timeout(Some(TLS_IO));
                    let mut conn = rustls::Connection::Server(ServerConnection::new(cfg).unwrap());
                    if handshake(&mut conn, &mut tcp).is_err() {
                        st.failed.fetch_add(1, Ordering::SeqCst);
                        return;
                    }
                    let sni = match &conn {
                        rustls::Connection::Server(s) => s.server_name().map(str::to_string),
                        rustls::Connection::Client(_) => None,
                    };
                    st.sni.lock().unwrap().push(sni);
                    st.handshakes.fetch_add(1, Ordering::SeqCst);
                    let (a, b) = UnixStream::pair().unwrap();
                    Backend::spawn_conn(&inner, Conn::Unix(b));
                    pump(conn, tcp, a, Arc::new(Mutex::new(None)));
                });
            }
        });
        TlsBackend { addr, http, state }
    }

    /// `127.0.0.1:PORT` (`[::1]:PORT`).
    pub fn addr(&self) -> String {
        self.addr.to_string()
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Completed handshakes (= TLS connections served).
    pub fn handshakes(&self) -> usize {
        self.state.handshakes.load(Ordering::SeqCst)
    }

    /// Handshakes that failed (e.g. the client refused the certificate).
    pub fn failed_handshakes(&self) -> usize {
        self.state.failed.load(Ordering::SeqCst)
    }

    /// The SNI of every completed handshake.
    pub fn sni(&self) -> Vec<Option<String>> {
        self.state.sni.lock().unwrap().clone()
    }

    /// Wait until at least `n` handshakes failed or `within` passed; the count.
    pub fn wait_failed(&self, n: usize, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        while self.failed_handshakes() < n && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        self.failed_handshakes()
    }
}

impl Drop for TlsBackend {
    fn drop(&mut self) {
        self.state.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

// ---------------------------------------------------------------------------
// Command-line tools
// ---------------------------------------------------------------------------

/// A finished external command.
#[derive(Debug)]
pub struct Run {
    /// Exit code (None: killed at the deadline or by a signal).
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn ok(&self) -> bool {
        self.code == Some(0)
    }
    /// stdout and stderr.
    pub fn all(&self) -> String {
        format!("{}\n{}", self.stdout, self.stderr)
    }
}

/// Run `program args` with `stdin` fed to it; killed after `within`.
pub fn run(program: &str, args: &[&str], stdin: &[u8], within: Duration) -> Run {
    let mut child = Command::new(program)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
    let mut inp = child.stdin.take().unwrap();
    let data = stdin.to_vec();
    let w = thread::spawn(move || {
        let _ = inp.write_all(&data);
    });
    let mut out = child.stdout.take().unwrap();
    let mut err = child.stderr.take().unwrap();
    let ro = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = out.read_to_end(&mut s);
        s
    });
    let re = thread::spawn(move || {
        let mut s = Vec::new();
        let _ = err.read_to_end(&mut s);
        s
    });
    let deadline = Instant::now() + within;
    let code = loop {
        if let Ok(Some(st)) = child.try_wait() {
            break st.code();
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        thread::sleep(Duration::from_millis(5));
    };
    let _ = w.join();
    Run {
        code,
        stdout: String::from_utf8_lossy(&ro.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&re.join().unwrap()).into_owned(),
    }
}

/// `openssl s_client -connect ADDR ARGS...` with `stdin` (10 s at most).
pub fn s_client(addr: &str, args: &[&str], stdin: &[u8]) -> Run {
    let mut a = vec!["s_client", "-connect", addr];
    a.extend_from_slice(args);
    run("openssl", &a, stdin, Duration::from_secs(10))
}

/// The program runs (`-v`/`--version`/`version`).
pub fn installed(program: &str, version_arg: &str) -> bool {
    Command::new(program)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

// ---------------------------------------------------------------------------
// Prometheus text
// ---------------------------------------------------------------------------
