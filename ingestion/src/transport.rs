//! How a PostgreSQL session is carried: TCP or a unix socket, in plain text or TLS, as
//! libpq's `sslmode` and `sslrootcert` say, for the replication and the regular sessions
//! alike (rustls; the regular sessions through `tokio-postgres-rustls`).
//!
//! `sslmode` means what it means to libpq: `disable` never uses TLS; `prefer` (the default)
//! uses it when the server offers it; `require` insists on it without checking the
//! certificate, unless `sslrootcert` is given (then as `verify-ca`); `verify-ca` checks the
//! chain against the root certificates; `verify-full` also checks the host name. Root
//! certificates come from `sslrootcert` (a PEM file, or `system`), else the system's store;
//! `sslrootcert=system` implies `verify-full` and refuses a weaker mode (libpq 16). Unix
//! sockets never use TLS, as with libpq.

use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

use crate::{IngestError, Result};

/// libpq's `sslmode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    /// Plain text only.
    Disable,
    /// TLS when the server offers it (unverified), else plain text.
    Prefer,
    /// TLS, certificate unchecked.
    Require,
    /// TLS, certificate chain checked.
    VerifyCa,
    /// TLS, certificate chain and host name checked.
    VerifyFull,
}

impl SslMode {
    fn parse(v: &str) -> Option<Self> {
        Some(match v {
            // `allow` (plain text first, TLS if the server insists) is served as `disable`.
            "disable" | "allow" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// Where the server listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    /// A host name or address.
    Tcp(String),
    /// A directory holding the server's socket `.s.PGSQL.<port>`.
    Unix(PathBuf),
}

/// The TLS settings of a URL.
#[derive(Debug, Clone)]
pub struct Security {
    /// The mode asked for.
    pub mode: SslMode,
    /// `sslrootcert`: a PEM file of root certificates, or `system`.
    pub root_cert: Option<String>,
}

/// Takes `sslmode` and `sslrootcert` out of `url` (a `postgres://` URL or a key=value string),
/// returning the URL `tokio-postgres` can parse (it knows neither `verify-*` nor
/// `sslrootcert`) and the settings.
pub fn split_security(url: &str) -> Result<(String, Security)> {
    let mut security = Security {
        mode: SslMode::Prefer,
        root_cert: None,
    };
    let mut mode_set = false;
    let mut take = |key: &str, value: &str| -> Result<bool> {
        match key {
            "sslmode" => {
                mode_set = true;
                security.mode = SslMode::parse(value).ok_or_else(|| {
                    IngestError::InvalidUrl(format!(
                        "sslmode={value}: expected disable, prefer, require, verify-ca or verify-full"
                    ))
                })?;
                Ok(true)
            }
            "sslrootcert" => {
                security.root_cert = Some(value.to_string());
                Ok(true)
            }
            _ => Ok(false),
        }
    };
    let cleaned = if url.contains("://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let mut kept = Vec::new();
                for pair in query.split('&').filter(|p| !p.is_empty()) {
                    let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
                    let v = percent_decode(v);
                    if !take(k, &v)? {
                        kept.push(pair);
                    }
                }
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        let mut kept = Vec::new();
        // libpq allows spaces around `=` (`sslmode = verify-full`): join them first, so no
        // setting is missed (and silently left at `prefer`).
        let joined = join_around_equals(url);
        for pair in joined.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(k.trim(), v.trim_matches('\'').trim())? {
                kept.push(pair);
            }
        }
        kept.join(" ")
    };
    // As libpq (16+): the system's roots are only worth trusting with the host name checked,
    // so `sslrootcert=system` means verify-full, and a weaker mode with it is an error.
    if security.root_cert.as_deref() == Some("system") {
        if !mode_set {
            security.mode = SslMode::VerifyFull;
        } else if security.mode != SslMode::VerifyFull {
            return Err(IngestError::InvalidUrl(
                "sslrootcert=system needs sslmode=verify-full (or no sslmode)".into(),
            ));
        }
    }
    // tokio-postgres is told only whether to try TLS; what is checked is our `ClientConfig`.
    let wire = match security.mode {
        SslMode::Disable => "disable",
        SslMode::Prefer => "prefer",
        _ => "require",
    };
    let cleaned = if cleaned.contains("://") {
        let sep = if cleaned.contains('?') { '&' } else { '?' };
        format!("{cleaned}{sep}sslmode={wire}")
    } else {
        format!("{cleaned} sslmode={wire}")
    };
    Ok((cleaned, security))
}

/// `url` as [`split_security`] returned it, told never to try TLS (a unix-socket host).
pub fn without_tls(url: &str) -> String {
    // split_security appended the only sslmode the URL has, last.
    match url.rfind("sslmode=") {
        Some(i) => {
            let end = url[i..]
                .find(|c: char| c == '&' || c.is_whitespace())
                .map_or(url.len(), |e| i + e);
            format!("{}sslmode=disable{}", &url[..i], &url[end..])
        }
        None => url.to_string(),
    }
}

fn percent_decode(v: &str) -> String {
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Security {
    /// Whether TLS is ever attempted.
    pub fn wants_tls(&self) -> bool {
        self.mode != SslMode::Disable
    }

    /// The rustls configuration that checks what the mode asks for.
    pub fn client_config(&self) -> Result<Arc<ClientConfig>> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| IngestError::TlsSetup(format!("protocol versions: {e}")))?;
        // `require` with a root certificate is `verify-ca`, as in libpq.
        let mode = match (self.mode, &self.root_cert) {
            (SslMode::Require, Some(_)) => SslMode::VerifyCa,
            (m, _) => m,
        };
        let config = match mode {
            SslMode::Disable | SslMode::Prefer | SslMode::Require => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
                .with_no_client_auth(),
            SslMode::VerifyCa | SslMode::VerifyFull => {
                let roots = Arc::new(self.roots()?);
                let webpki =
                    rustls::client::WebPkiServerVerifier::builder_with_provider(roots, provider)
                        .build()
                        .map_err(|e| IngestError::TlsSetup(format!("certificate verifier: {e}")))?;
                let verifier: Arc<dyn ServerCertVerifier> = if mode == SslMode::VerifyCa {
                    Arc::new(ChainOnly(webpki))
                } else {
                    webpki
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(verifier)
                    .with_no_client_auth()
            }
        };
        Ok(Arc::new(config))
    }

    fn roots(&self) -> Result<RootCertStore> {
        let mut store = RootCertStore::empty();
        match self.root_cert.as_deref() {
            Some(path) if path != "system" => {
                let certs = read_pem_certs(Path::new(path))?;
                let (added, _) = store.add_parsable_certificates(certs);
                if added == 0 {
                    return Err(IngestError::RootCert {
                        path: path.to_string(),
                        reason: "holds no usable certificate".into(),
                    });
                }
            }
            _ => {
                let found = rustls_native_certs::load_native_certs();
                store.add_parsable_certificates(found.certs);
                if store.is_empty() {
                    return Err(IngestError::RootCert {
                        path: "the system store".into(),
                        reason: "no root certificates found; give sslrootcert=<file>".into(),
                    });
                }
            }
        }
        Ok(store)
    }
}

fn read_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    use rustls::pki_types::pem::PemObject;
    let bad = |reason: String| IngestError::RootCert {
        path: path.display().to_string(),
        reason,
    };
    CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))
}

/// `sslmode=require`: encrypt, but accept any certificate (libpq's behaviour); signatures
/// are still checked, so the session key belongs to whoever holds the certificate's key.
#[derive(Debug)]
struct AnyCertificate(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
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

/// `sslmode=verify-ca`: the chain must lead to a trusted root; the name may differ.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName))
            | Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// A connected session's byte stream.
#[derive(Debug)]
pub enum Socket {
    /// Plain TCP.
    Tcp(TcpStream),
    /// A unix socket.
    Unix(UnixStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// PostgreSQL's SSLRequest: length 8, code 1234.5679.
const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];

/// Connects to `host:port` as `security` asks; `addr` names it in errors.
pub async fn open(host: &Host, port: u16, security: &Security, addr: &str) -> Result<Socket> {
    let unreachable = |source| IngestError::Unreachable {
        addr: addr.to_string(),
        source,
    };
    let name = match host {
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            return Ok(Socket::Unix(
                UnixStream::connect(&path).await.map_err(unreachable)?,
            ));
        }
        Host::Tcp(name) => name,
    };
    let mut tcp = TcpStream::connect((name.as_str(), port))
        .await
        .map_err(unreachable)?;
    tcp.set_nodelay(true)?;
    if !security.wants_tls() {
        return Ok(Socket::Tcp(tcp));
    }
    tcp.write_all(&SSL_REQUEST).await?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await?;
    match answer[0] {
        b'S' => {}
        b'N' if security.mode == SslMode::Prefer => return Ok(Socket::Tcp(tcp)),
        b'N' => {
            return Err(IngestError::TlsRefused {
                addr: addr.to_string(),
            });
        }
        other => {
            return Err(IngestError::Protocol(format!(
                "unexpected answer {other:#x} to the TLS request from {addr}"
            )));
        }
    }
    let server_name = ServerName::try_from(name.clone())
        .map_err(|e| IngestError::InvalidUrl(format!("host {name:?}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(security.client_config()?);
    match connector.connect(server_name, tcp).await {
        Ok(tls) => Ok(Socket::Tls(Box::new(tls))),
        // `prefer` settles for plain text when TLS cannot be agreed, as libpq does.
        Err(e) if security.mode == SslMode::Prefer => {
            tracing::warn!(%addr, error = %e, "TLS handshake failed; sslmode=prefer continues in plain text");
            let tcp = TcpStream::connect((name.as_str(), port))
                .await
                .map_err(unreachable)?;
            tcp.set_nodelay(true)?;
            Ok(Socket::Tcp(tcp))
        }
        // A handshake the peer or our checks refused is a TLS failure (not retried); a
        // connection reset mid-handshake (a restarting server) is a lost connection.
        Err(source) if source.get_ref().is_some_and(|e| e.is::<rustls::Error>()) => {
            Err(IngestError::Tls {
                addr: addr.to_string(),
                source,
            })
        }
        Err(source) => Err(IngestError::Io(source)),
    }
}

/// `k = v` written as `k=v` (whitespace around `=` removed), for key=value connection strings.
fn join_around_equals(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_whitespace() {
            // Drop whitespace before an `=`.
            let mut ws = String::from(c);
            while let Some(&n) = chars.peek() {
                if n.is_whitespace() {
                    ws.push(n);
                    chars.next();
                } else {
                    break;
                }
            }
            if chars.peek() != Some(&'=') {
                out.push_str(&ws);
            }
        } else if c == '=' {
            out.push('=');
            // And after it.
            while chars.peek().is_some_and(|n| n.is_whitespace()) {
                chars.next();
            }
        } else {
            out.push(c);
        }
    }
    out
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_read(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Unix(s) => Pin::new(s).poll_write(cx, buf),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_flush(cx),
            Socket::Unix(s) => Pin::new(s).poll_flush(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Socket::Tcp(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Unix(s) => Pin::new(s).poll_shutdown(cx),
            Socket::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ssl_settings_are_taken_out_of_both_url_forms() {
        let (url, s) = split_security(
            "postgres://u@h:5/db?sslmode=verify-full&sslrootcert=%2Ftmp%2Fca.pem&application_name=x",
        )
        .unwrap();
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(s.root_cert.as_deref(), Some("/tmp/ca.pem"));
        assert_eq!(
            url,
            "postgres://u@h:5/db?application_name=x&sslmode=require"
        );
        url.parse::<tokio_postgres::Config>().unwrap();

        let (url, s) = split_security("host=/run/pg user=u sslmode=disable").unwrap();
        assert_eq!(s.mode, SslMode::Disable);
        assert_eq!(url, "host=/run/pg user=u sslmode=disable");
        url.parse::<tokio_postgres::Config>().unwrap();

        let (url, s) = split_security("postgres://u@h/db").unwrap();
        assert_eq!(s.mode, SslMode::Prefer);
        assert_eq!(url, "postgres://u@h/db?sslmode=prefer");

        // Spaces around `=` are allowed, as in libpq: the mode is read, not left at prefer.
        let (url, s) = split_security("host=db  sslmode = verify-full user=u").unwrap();
        assert_eq!(s.mode, SslMode::VerifyFull);
        assert_eq!(url, "host=db user=u sslmode=require");

        // sslrootcert=system: verify-full by default, weaker modes refused (as libpq 16).
        let (_, s) = split_security("postgres://u@h/db?sslrootcert=system").unwrap();
        assert_eq!(s.mode, SslMode::VerifyFull);
        let err = split_security("host=h sslrootcert=system sslmode=require").unwrap_err();
        assert!(err.to_string().contains("verify-full"), "{err}");

        let err = split_security("postgres://u@h/db?sslmode=sometimes").unwrap_err();
        assert!(err.to_string().contains("sslmode=sometimes"), "{err}");
    }
}
