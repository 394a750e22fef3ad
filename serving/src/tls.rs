//! TLS for every door from one certificate chain and key (PEM files named in `[tls]`).
//! Loaded before any door binds: a certificate or key that cannot be used stops the server
//! from starting, so it never silently answers in plaintext.

use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsConfig;
use crate::{Result, ServingError};

/// A loaded certificate and key, ready for each door.
#[derive(Clone)]
pub struct Tls {
    /// The PEM texts (tonic takes them as they are).
    pub cert_pem: Vec<u8>,
    /// The key's PEM text.
    pub key_pem: Vec<u8>,
    /// The rustls configuration (no ALPN).
    pub config: Arc<ServerConfig>,
}

fn unusable(what: &str, path: &str, why: impl std::fmt::Display) -> ServingError {
    ServingError::Config(format!("[tls] {what} {path}: {why}"))
}

/// Loads and checks `[tls]`.
pub fn load(tls: &TlsConfig) -> Result<Tls> {
    let read = |path: &str| {
        std::fs::read(path).map_err(|source| ServingError::ConfigRead {
            path: path.to_string(),
            source,
        })
    };
    let cert_pem = read(&tls.cert_file)?;
    let key_pem = read(&tls.key_file)?;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| unusable("cert_file", &tls.cert_file, e))?;
    if certs.is_empty() {
        return Err(unusable(
            "cert_file",
            &tls.cert_file,
            "no certificate in it",
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| unusable("key_file", &tls.key_file, e))?;
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| unusable("cert_file", &tls.cert_file, e))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| {
                unusable(
                    "key_file",
                    &tls.key_file,
                    format!("does not fit the certificate: {e}"),
                )
            })?;
    Ok(Tls {
        cert_pem,
        key_pem,
        config: Arc::new(config),
    })
}

impl Tls {
    /// The configuration with `protocols` offered by ALPN.
    pub fn with_alpn(&self, protocols: &[&[u8]]) -> Arc<ServerConfig> {
        let mut config = (*self.config).clone();
        config.alpn_protocols = protocols.iter().map(|p| p.to_vec()).collect();
        Arc::new(config)
    }
}
