//! Certificates and keys from PEM files: loaded, checked (key matches, names, expiry)
//! and described for `--check` and the statistics. Control plane only.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

/// A loaded certificate chain with its key, and what the configuration reports
/// about it.
#[derive(Debug, Clone)]
pub struct Certificate {
    pub key: Arc<CertifiedKey>,
    /// DNS names of its subjectAltName (lower case), in certificate order;
    /// wildcards as written (`*.example.com`). The subject CN when it has no SAN.
    pub names: Vec<String>,
    /// notAfter, unix seconds.
    pub not_after: i64,
    /// The file the chain came from, for messages.
    pub path: String,
}

impl Certificate {
    /// The name it is known by in statistics: its first DNS name, else the file.
    pub fn label(&self) -> &str {
        self.names
            .first()
            .map_or(self.path.as_str(), |s| s.as_str())
    }
}

/// Read a PEM chain (leaf first) from `cert`, and its key from `key`.
pub fn load(cert: &Path, key: &Path) -> Result<Certificate, String> {
    let chain = read_chain(cert)?;
    let key_der = read_key(key)?;
    let provider = rustls::crypto::aws_lc_rs::default_provider();
    let certified = CertifiedKey::from_der(chain, key_der, &provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => format!(
            "the key in {} does not match the certificate in {}",
            key.display(),
            cert.display()
        ),
        other => format!("{}: unusable key or certificate: {other}", key.display()),
    })?;
    let leaf = certified
        .cert
        .first()
        .ok_or_else(|| format!("{}: no certificate", cert.display()))?;
    let (names, not_after) = describe(leaf.as_ref())
        .map_err(|e| format!("{}: cannot parse the certificate: {e}", cert.display()))?;
    Ok(Certificate {
        key: Arc::new(certified),
        names,
        not_after,
        path: cert.display().to_string(),
    })
}

/// Every certificate of a PEM file; an error when there is none.
pub fn read_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(path)?;
    let chain: Vec<_> = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("{}: not a valid PEM certificate file: {e}", path.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate in this file (expected a PEM `BEGIN CERTIFICATE` block)",
            path.display()
        ));
    }
    Ok(chain)
}

fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(path)?;
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| match e {
        rustls::pki_types::pem::Error::NoItemsFound => format!(
            "{}: no private key in this file (expected a PEM PKCS#8, RSA or EC private key)",
            path.display()
        ),
        e => format!("{}: not a valid PEM private key: {e}", path.display()),
    })
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(format!("{}: the file is empty", path.display()));
    }
    Ok(bytes)
}

/// A PEM bundle of CA certificates as a root store (client certificates, backends).
pub fn read_roots(path: &Path) -> Result<rustls::RootCertStore, String> {
    let mut roots = rustls::RootCertStore::empty();
    for c in read_chain(path)? {
        roots
            .add(c)
            .map_err(|e| format!("{}: unusable CA certificate: {e}", path.display()))?;
    }
    Ok(roots)
}

/// DNS names (SAN, else CN) and notAfter of a DER certificate.
fn describe(der: &[u8]) -> Result<(Vec<String>, i64), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for n in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(d) = n {
                names.push(d.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        if let Some(cn) = cert.subject().iter_common_name().next() {
            if let Ok(s) = cn.as_str() {
                names.push(s.to_ascii_lowercase());
            }
        }
    }
    Ok((names, cert.validity().not_after.timestamp()))
}

/// The subject of a DER certificate as RFC 4514 text (`CN=client,O=Example`): the
/// relative names in reverse order, comma-separated, special characters escaped.
pub fn subject_rfc4514(der: &[u8]) -> Option<String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let mut out = String::new();
    for rdn in cert.subject().iter().collect::<Vec<_>>().into_iter().rev() {
        for (i, atv) in rdn.iter().enumerate() {
            if !out.is_empty() {
                out.push(if i == 0 { ',' } else { '+' });
            }
            out.push_str(&short_name(atv.attr_type()));
            out.push('=');
            match atv.as_str() {
                Ok(v) => escape_rfc4514(v, &mut out),
                // Not a string type: RFC 4514 writes the DER value as #hex.
                Err(_) => {
                    out.push('#');
                    for b in atv.as_slice() {
                        out.push_str(&format!("{b:02x}"));
                    }
                }
            }
        }
    }
    Some(out)
}

/// RFC 4514's short names for the usual attributes; the dotted OID otherwise.
fn short_name(oid: &x509_parser::der_parser::oid::Oid) -> String {
    use x509_parser::oid_registry::*;
    let known = [
        (OID_X509_COMMON_NAME, "CN"),
        (OID_X509_COUNTRY_NAME, "C"),
        (OID_X509_LOCALITY_NAME, "L"),
        (OID_X509_STATE_OR_PROVINCE_NAME, "ST"),
        (OID_X509_ORGANIZATION_NAME, "O"),
        (OID_X509_ORGANIZATIONAL_UNIT, "OU"),
        (OID_X509_STREET_ADDRESS, "STREET"),
        (OID_DOMAIN_COMPONENT, "DC"),
    ];
    known
        .iter()
        .find(|(o, _)| o == oid)
        .map_or_else(|| oid.to_id_string(), |(_, n)| n.to_string())
}

fn escape_rfc4514(v: &str, out: &mut String) {
    let n = v.chars().count();
    for (i, c) in v.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && (c == '#' || c == ' '))
            || (i + 1 == n && c == ' ');
        if c.is_control() {
            // Never let a control character (CR, LF) into a header value.
            let mut b = [0u8; 4];
            for byte in c.encode_utf8(&mut b).bytes() {
                out.push_str(&format!("\\{byte:02x}"));
            }
            continue;
        }
        if special {
            out.push('\\');
        }
        out.push(c);
    }
}

/// Seconds since the epoch now.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// `2026-12-05` for a unix time (UTC), for `--check`.
pub fn date(unix: i64) -> String {
    // Civil-from-days (Howard Hinnant's algorithm): a date is all `--check` prints,
    // not worth a time crate.
    let days = unix.div_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!("{y:04}-{m:02}-{d:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(date(0), "1970-01-01");
        assert_eq!(date(1_796_428_800), "2026-12-05");
        assert_eq!(date(951_782_400), "2000-02-29");
    }

    #[test]
    fn rfc4514_escapes() {
        let mut s = String::new();
        escape_rfc4514("a,b+c \"d\"", &mut s);
        assert_eq!(s, "a\\,b\\+c \\\"d\\\"");
        let mut s = String::new();
        escape_rfc4514("#x\r\n ", &mut s);
        assert_eq!(s, "\\#x\\0d\\0a\\ ");
    }
}

#[cfg(test)]
mod subject_tests {
    use super::*;

    #[test]
    fn subject_is_rfc4514_in_reverse_order() {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(vec!["client.test".to_string()]).unwrap();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(rcgen::DnType::CountryName, "DE");
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example, Inc.");
        p.distinguished_name
            .push(rcgen::DnType::CommonName, "client one");
        let c = p.self_signed(&key).unwrap();
        assert_eq!(
            subject_rfc4514(c.der()).as_deref(),
            Some("CN=client one,O=Example\\, Inc.,C=DE")
        );
    }
}
