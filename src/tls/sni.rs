//! Certificate choice by SNI: exact names first, then a wildcard covering one
//! label, else the first certificate (clients without SNI or with an unknown name).

use std::collections::HashMap;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

use super::Certificate;

#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` under `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl SniResolver {
    /// `certs` must not be empty (the configuration checks it); the first is the
    /// default. A name two certificates claim goes to the first.
    pub fn new(certs: &[Certificate]) -> Option<SniResolver> {
        let default = certs.first()?.key.clone();
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for c in certs {
            for n in &c.names {
                match n.strip_prefix("*.") {
                    Some(parent) => wildcard.entry(parent.to_string()),
                    None => exact.entry(n.clone()),
                }
                .or_insert_with(|| c.key.clone());
            }
        }
        Some(SniResolver {
            exact,
            wildcard,
            default,
        })
    }

    pub fn choose(&self, sni: Option<&str>) -> Arc<CertifiedKey> {
        let Some(name) = sni else {
            return self.default.clone();
        };
        // rustls hands SNI over lower-cased and without a trailing dot.
        if let Some(k) = self.exact.get(name) {
            return k.clone();
        }
        if let Some((_, parent)) = name.split_once('.') {
            if let Some(k) = self.wildcard.get(parent) {
                return k.clone();
            }
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.choose(hello.server_name()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(names: &[&str]) -> Certificate {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let c = params.self_signed(&key).unwrap();
        let der = rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap();
        let provider = rustls::crypto::aws_lc_rs::default_provider();
        let ck = CertifiedKey::from_der(vec![c.der().clone()], der, &provider).unwrap();
        Certificate {
            key: Arc::new(ck),
            names: names.iter().map(|s| s.to_string()).collect(),
            not_after: 0,
            path: names[0].to_string(),
        }
    }

    #[test]
    fn exact_then_wildcard_of_one_label_then_default() {
        let certs = [
            cert(&["default.test"]),
            cert(&["*.example.com"]),
            cert(&["a.example.com", "example.com"]),
        ];
        let r = SniResolver::new(&certs).unwrap();
        let is = |sni: Option<&str>, i: usize| {
            assert!(
                Arc::ptr_eq(&r.choose(sni), &certs[i].key),
                "{sni:?} should get certificate {i}"
            );
        };
        is(Some("a.example.com"), 2); // exact beats the wildcard
        is(Some("example.com"), 2);
        is(Some("b.example.com"), 1);
        is(Some("x.b.example.com"), 0); // a wildcard covers one label only
        is(Some("unknown.test"), 0);
        is(None, 0);
        is(Some("default.test"), 0);
    }

    #[test]
    fn a_name_two_certificates_claim_goes_to_the_first() {
        let certs = [cert(&["a.test"]), cert(&["b.test"]), cert(&["b.test"])];
        let r = SniResolver::new(&certs).unwrap();
        assert!(Arc::ptr_eq(&r.choose(Some("b.test")), &certs[1].key));
        assert!(SniResolver::new(&[]).is_none());
    }
}
