//! SCRAM-SHA-256 (RFC 5802/7677) for the PostgreSQL door, from verifiers in PostgreSQL's own
//! stored form (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`), so the server
//! never holds anything a client could log in with. pgwire's SCRAM wants the salted password
//! itself (a password equivalent), which is why this exchange is written here (ADR 0009).

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::{Result, ServingError};

/// Iterations of a new verifier (PostgreSQL's default).
pub const ITERATIONS: u32 = 4096;

/// A user's stored SCRAM verifier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    iterations: u32,
    salt: Vec<u8>,
    stored_key: [u8; 32],
    server_key: [u8; 32],
}

fn hmac(key: &[u8], message: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(message);
    mac.finalize().into_bytes().into()
}

/// PBKDF2-HMAC-SHA-256 with one output block: SCRAM's `Hi`.
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &block);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

impl Verifier {
    /// A verifier for `password` with a fresh random salt.
    pub fn new(password: &str) -> Self {
        let salt: [u8; 16] = rand::random();
        Self::with_salt(password, &salt, ITERATIONS)
    }

    fn with_salt(password: &str, salt: &[u8], iterations: u32) -> Self {
        let salted = hi(password.as_bytes(), salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        Verifier {
            iterations,
            salt: salt.to_vec(),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// Parses PostgreSQL's stored form.
    pub fn parse(text: &str) -> Result<Self> {
        let bad = |why: &str| {
            ServingError::Config(format!(
                "pg_scram_sha256 must look like SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey> ({why})"
            ))
        };
        let rest = text
            .strip_prefix("SCRAM-SHA-256$")
            .ok_or_else(|| bad("prefix"))?;
        let (params, keys) = rest.split_once('$').ok_or_else(|| bad("no keys"))?;
        let (iterations, salt) = params.split_once(':').ok_or_else(|| bad("no salt"))?;
        let (stored, server) = keys.split_once(':').ok_or_else(|| bad("no server key"))?;
        let iterations: u32 = iterations.parse().map_err(|_| bad("iterations"))?;
        if iterations == 0 {
            return Err(bad("iterations"));
        }
        let key = |b64: &str| -> Result<[u8; 32]> {
            STANDARD
                .decode(b64)
                .ok()
                .and_then(|v| v.try_into().ok())
                .ok_or_else(|| bad("a key is not 32 bytes of base64"))
        };
        Ok(Verifier {
            iterations,
            salt: STANDARD.decode(salt).map_err(|_| bad("salt"))?,
            stored_key: key(stored)?,
            server_key: key(server)?,
        })
    }

    /// PostgreSQL's stored form.
    pub fn to_text(&self) -> String {
        format!(
            "SCRAM-SHA-256${}:{}${}:{}",
            self.iterations,
            STANDARD.encode(&self.salt),
            STANDARD.encode(self.stored_key),
            STANDARD.encode(self.server_key)
        )
    }
}

/// Why an exchange failed: a malformed message, or a wrong password.
#[derive(Debug, PartialEq, Eq)]
pub enum ScramError {
    /// The client broke the protocol; the text says how.
    Protocol(String),
    /// The proof did not match: wrong password.
    WrongPassword,
}

/// The server's side after its first message, waiting for the client's final one.
#[derive(Debug)]
pub struct Exchange {
    client_first_bare: String,
    server_first: String,
    gs2_header: String,
    nonce: String,
}

impl Exchange {
    /// Reads the client's first message and answers with the server's first message.
    pub fn start(
        verifier: &Verifier,
        client_first: &[u8],
    ) -> std::result::Result<(Self, String), ScramError> {
        let server_nonce = STANDARD.encode(rand::random::<[u8; 18]>());
        Self::start_with(verifier, client_first, &server_nonce)
    }

    fn start_with(
        verifier: &Verifier,
        client_first: &[u8],
        server_nonce: &str,
    ) -> std::result::Result<(Self, String), ScramError> {
        let text = std::str::from_utf8(client_first)
            .map_err(|_| ScramError::Protocol("client-first is not UTF-8".into()))?;
        // gs2-header: channel binding flag, optional authzid, then the bare message.
        let mut parts = text.splitn(3, ',');
        let flag = parts.next().unwrap_or_default();
        let authzid = parts
            .next()
            .ok_or_else(|| ScramError::Protocol("client-first has no gs2 header".into()))?;
        let bare = parts
            .next()
            .ok_or_else(|| ScramError::Protocol("client-first has no message".into()))?;
        if flag != "n" && flag != "y" {
            return Err(ScramError::Protocol(
                "channel binding is not offered (use SCRAM-SHA-256)".into(),
            ));
        }
        let client_nonce = bare
            .split(',')
            .find_map(|a| a.strip_prefix("r="))
            .filter(|n| !n.is_empty() && n.chars().all(|c| c.is_ascii_graphic() && c != ','))
            .ok_or_else(|| ScramError::Protocol("client-first has no nonce".into()))?;
        let nonce = format!("{client_nonce}{server_nonce}");
        let server_first = format!(
            "r={nonce},s={},i={}",
            STANDARD.encode(&verifier.salt),
            verifier.iterations
        );
        Ok((
            Exchange {
                client_first_bare: bare.to_string(),
                server_first: server_first.clone(),
                gs2_header: format!("{flag},{authzid},"),
                nonce,
            },
            server_first,
        ))
    }

    /// Checks the client's final message; on success answers the server's final message.
    pub fn finish(
        &self,
        verifier: &Verifier,
        client_final: &[u8],
    ) -> std::result::Result<String, ScramError> {
        let text = std::str::from_utf8(client_final)
            .map_err(|_| ScramError::Protocol("client-final is not UTF-8".into()))?;
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or_else(|| ScramError::Protocol("client-final has no proof".into()))?;
        let mut binding = None;
        let mut nonce = None;
        for attr in without_proof.split(',') {
            if let Some(v) = attr.strip_prefix("c=") {
                binding = Some(v);
            } else if let Some(v) = attr.strip_prefix("r=") {
                nonce = Some(v);
            }
        }
        if binding != Some(STANDARD.encode(&self.gs2_header).as_str()) {
            return Err(ScramError::Protocol("channel binding mismatch".into()));
        }
        if nonce != Some(self.nonce.as_str()) {
            return Err(ScramError::Protocol("nonce mismatch".into()));
        }
        let proof: [u8; 32] = STANDARD
            .decode(proof)
            .ok()
            .and_then(|p| p.try_into().ok())
            .ok_or_else(|| ScramError::Protocol("the proof is not 32 bytes of base64".into()))?;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let signature = hmac(&verifier.stored_key, auth_message.as_bytes());
        let mut client_key = proof;
        for (k, s) in client_key.iter_mut().zip(signature) {
            *k ^= s;
        }
        let derived: [u8; 32] = Sha256::digest(client_key).into();
        // Constant time: the comparison never stops at the first differing byte.
        let differ = derived
            .iter()
            .zip(verifier.stored_key)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if differ != 0 {
            return Err(ScramError::WrongPassword);
        }
        let server_signature = hmac(&verifier.server_key, auth_message.as_bytes());
        Ok(format!("v={}", STANDARD.encode(server_signature)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The client's side, as RFC 5802 describes it.
    fn client_final(password: &str, client_first_bare: &str, server_first: &str) -> String {
        let attrs: std::collections::HashMap<&str, &str> = server_first
            .split(',')
            .filter_map(|a| a.split_once('='))
            .collect();
        let salt = STANDARD.decode(attrs["s"]).unwrap();
        let iterations: u32 = attrs["i"].parse().unwrap();
        let salted = hi(password.as_bytes(), &salt, iterations);
        let client_key = hmac(&salted, b"Client Key");
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        let without_proof = format!("c={},r={}", STANDARD.encode("n,,"), attrs["r"]);
        let auth = format!("{client_first_bare},{server_first},{without_proof}");
        let signature = hmac(&stored, auth.as_bytes());
        let proof: Vec<u8> = client_key
            .iter()
            .zip(signature)
            .map(|(a, b)| a ^ b)
            .collect();
        format!("{without_proof},p={}", STANDARD.encode(proof))
    }

    #[test]
    fn the_rfc_7677_example_verifier_and_an_exchange() {
        // RFC 7677's example: user "user", password "pencil", this salt, 4096 iterations.
        let salt = STANDARD.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let v = Verifier::with_salt("pencil", &salt, 4096);
        let (exchange, server_first) = Exchange::start_with(
            &v,
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        )
        .unwrap();
        assert_eq!(
            server_first,
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        // The RFC's client-final message, and its server signature.
        let last = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";
        assert_eq!(
            exchange.finish(&v, last.as_bytes()).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        // This file's client agrees with the RFC's.
        assert_eq!(
            client_final("pencil", "n=user,r=rOprNGfwEbeRWgbNEkqO", &server_first),
            last
        );
        // The stored form round-trips and holds no password equivalent.
        assert_eq!(Verifier::parse(&v.to_text()).unwrap(), v);
        assert!(!v.to_text().contains("pencil"));
    }

    #[test]
    fn a_wrong_password_and_broken_messages_are_refused() {
        let v = Verifier::new("bv_right");
        let (exchange, server_first) = Exchange::start(&v, b"n,,n=,r=abc").unwrap();
        let wrong = client_final("bv_wrong", "n=,r=abc", &server_first);
        assert_eq!(
            exchange.finish(&v, wrong.as_bytes()),
            Err(ScramError::WrongPassword)
        );
        let right = client_final("bv_right", "n=,r=abc", &server_first);
        let tampered = right.replace(",r=abc", ",r=abd");
        assert!(matches!(
            exchange.finish(&v, tampered.as_bytes()),
            Err(ScramError::Protocol(_))
        ));
        assert!(exchange.finish(&v, right.as_bytes()).is_ok());
        for bad in [
            &b""[..],
            b"p=tls-server-end-point,,n=,r=x",
            b"n,,n=",
            b"\xff",
        ] {
            assert!(Exchange::start(&v, bad).is_err(), "{bad:?}");
        }
        for bad in [
            "",
            "SCRAM-SHA-256$0:AA==$AA==:AA==",
            "md5abc",
            "SCRAM-SHA-256$4096:AA==$AA==:AA==",
        ] {
            assert!(Verifier::parse(bad).is_err(), "{bad}");
        }
    }
}
