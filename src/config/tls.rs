//! Stage two, TLS keys (SPEC section 8): certificate files read and checked, the
//! termination and backend configs built, so that `--check` and a reload refuse
//! what a handshake would fail on, with the position of the key that names it.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::diagnostic::{Diagnostic, Severity};
use super::key::Key;
use super::model::{ClientAuth, Span};
use super::raw::{Directive, Value};
use super::resolve::{path_of, Keys, Resolver};
use crate::tls::{self, Certificate};

/// A certificate that expires within this many days is a warning.
const EXPIRY_WARNING_DAYS: i64 = 14;

impl Resolver<'_> {
    /// A file named in the configuration: relative paths are taken from the
    /// configuration file's directory (as nginx takes them from its prefix), so a
    /// file and its certificates can move together.
    fn file(&self, d: &Directive) -> Option<PathBuf> {
        path_of(Some(d)).map(|p| self.relative(p))
    }

    fn relative(&self, p: PathBuf) -> PathBuf {
        match Path::new(&self.raw.file).parent() {
            Some(dir) if p.is_relative() && !dir.as_os_str().is_empty() => dir.join(p),
            _ => p,
        }
    }

    /// Load every `TLSCertificate` and build the termination; `listener` is the
    /// first `tls` listener (`None`: no listener needs it, but the files are still
    /// checked, so a broken one is found before it is used).
    pub(super) fn termination(
        &mut self,
        dk: &Keys,
        listener: Option<Span>,
        warnings: &mut Vec<Diagnostic>,
    ) -> Option<Arc<tls::Termination>> {
        let cert_ds = dk.all(Key::TlsCertificate);
        let tls_key = dk.one(Key::TlsKey);
        if let (Some(d), true) = (tls_key, cert_ds.len() != 1) {
            let why = if cert_ds.is_empty() {
                "`TLSKey` without a `TLSCertificate`"
            } else {
                "`TLSKey` beside several `TLSCertificate`s: give each its key (`TLSCertificate CERT KEY`)"
            };
            self.error(d.span, why, None);
        }
        let mut certificates = Vec::new();
        let mut failed = false;
        for d in cert_ds {
            match self.certificate(d, tls_key) {
                Ok(c) => {
                    self.expiry_warning(&c, d.value_span, warnings);
                    certificates.push(c);
                }
                Err(()) => failed = true,
            }
        }
        let protocols = self.protocols(dk.one(Key::TlsProtocols));
        let client_ca = dk.one(Key::TlsClientCa);
        let client_roots = client_ca.and_then(|d| {
            let path = self.file(d)?;
            tls::certificate::read_roots(&path)
                .map_err(|m| self.error(d.value_span, format!("TLSClientCA: {m}"), None))
                .ok()
        });
        let client_auth = match dk.one(Key::TlsClientAuth) {
            Some(d) => match &d.value {
                Value::ClientAuth(a) => {
                    if *a != ClientAuth::Off && client_ca.is_none() {
                        self.error(
                            d.span,
                            format!("`TLSClientAuth {}` needs `TLSClientCA`", a.name()),
                            None,
                        );
                    }
                    *a
                }
                _ => ClientAuth::Required,
            },
            None => ClientAuth::Required,
        };
        let listener = listener?;
        if certificates.is_empty() {
            if !failed && cert_ds.is_empty() {
                self.error(
                    listener,
                    "a `tls` listener needs at least one `TLSCertificate` in [PROXY_DEFAULTS]",
                    None,
                );
            }
            return None;
        }
        if failed || client_ca.is_some() && client_roots.is_none() {
            return None;
        }
        let (tls12, tls13) = protocols?;
        let built = tls::server::build(tls::server::Settings {
            certificates,
            tls12,
            tls13,
            client_roots,
            client_auth,
        });
        match built {
            Ok(t) => Some(Arc::new(t)),
            Err(m) => {
                let at = client_ca.map_or(listener, |d| d.value_span);
                self.error(at, m, None);
                None
            }
        }
    }

    fn certificate(
        &mut self,
        d: &Directive,
        tls_key: Option<&Directive>,
    ) -> Result<Certificate, ()> {
        let Value::Certificate { cert, key } = &d.value else {
            return Err(());
        };
        let cert_path = self.relative(PathBuf::from(cert));
        // The key: beside the certificate, else `TLSKey`, else in the same file.
        let (key_path, key_span) = match (key, tls_key) {
            (Some(k), _) => (self.relative(PathBuf::from(&k.value)), k.span),
            (None, Some(t)) => (self.file(t).unwrap_or_default(), t.value_span),
            (None, None) => (cert_path.clone(), d.value_span),
        };
        tls::certificate::load(&cert_path, &key_path).map_err(|m| {
            let at = if m.contains(&*key_path.to_string_lossy()) && key_path != cert_path {
                key_span
            } else {
                d.value_span
            };
            self.error(at, format!("TLSCertificate: {m}"), None);
        })
    }

    fn expiry_warning(&self, c: &Certificate, span: Span, warnings: &mut Vec<Diagnostic>) {
        let now = tls::certificate::unix_now();
        let date = tls::certificate::date(c.not_after);
        let msg = if c.not_after <= now {
            format!("certificate {} ({}) expired on {date}", c.path, c.label())
        } else if c.not_after - now < EXPIRY_WARNING_DAYS * 86_400 {
            format!("certificate {} ({}) expires on {date}", c.path, c.label())
        } else {
            return;
        };
        warnings.push(self.raw.diag(Severity::Warning, span, msg, None));
    }

    /// `TLSProtocols`: (TLS 1.2 allowed, TLS 1.3 allowed); both by default.
    fn protocols(&mut self, d: Option<&Directive>) -> Option<(bool, bool)> {
        let Some(d) = d else {
            return Some((true, true));
        };
        let Value::Versions(vs) = &d.value else {
            return Some((true, true));
        };
        Some((vs.iter().any(|v| v == "1.2"), vs.iter().any(|v| v == "1.3")))
    }

    pub(super) fn check_backend_ca(&mut self, ca: Option<&Directive>) {
        let Some(d) = ca else { return };
        if let Some(path) = self.file(d) {
            if let Err(m) = tls::certificate::read_roots(&path) {
                self.error(d.value_span, format!("BackendCA: {m}"), None);
            }
        }
    }

    /// The client side of an entry's `tls:` servers. `system` caches the system's
    /// CA bundle across the entries of one load.
    pub(super) fn backend_tls(
        &mut self,
        ca: Option<&Directive>,
        verify: bool,
        entry: Span,
        system: &mut Option<Result<rustls::RootCertStore, String>>,
    ) -> Option<Arc<rustls::ClientConfig>> {
        let roots = match (verify, ca) {
            (false, _) => None,
            (true, Some(d)) => {
                let path = self.file(d)?;
                match tls::certificate::read_roots(Path::new(&path)) {
                    Ok(r) => Some(r),
                    Err(m) => {
                        self.error(d.value_span, format!("BackendCA: {m}"), None);
                        return None;
                    }
                }
            }
            (true, None) => match system.get_or_insert_with(tls::client::system_roots) {
                Ok(r) => Some(r.clone()),
                Err(m) => {
                    self.error(entry, format!("tls: servers: {m}"), None);
                    return None;
                }
            },
        };
        match tls::client::build(roots, verify) {
            Ok(c) => Some(c),
            Err(m) => {
                self.error(entry, format!("tls: servers: {m}"), None);
                None
            }
        }
    }
}
