//! Who is asking: an API key (stored as its SHA-256) or a JWT (the server's own short-lived
//! tokens, or an outside issuer's with `sub` and `role` claims) resolves to a user and its
//! role's grants. Every door turns its own credential form into a key or token and asks here.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::config::ServeConfig;
use crate::grants::Grants;
use crate::{Result, ServingError};

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Principal {
    /// The user's name.
    pub user: String,
    /// The role it acts in.
    pub role: String,
    /// What the role may read and write.
    pub grants: Arc<Grants>,
}

/// Resolves credentials to principals.
pub struct Authenticator {
    by_digest: HashMap<[u8; 32], Principal>,
    roles: HashMap<String, Arc<Grants>>,
    /// The key of the tokens this server issues (random per process: they die with it).
    own_encoding: EncodingKey,
    own_decoding: DecodingKey,
    /// An outside issuer's key and how its tokens are checked, when `[jwt]` is configured.
    external: Option<(DecodingKey, Validation)>,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("users", &self.by_digest.len())
            .field("roles", &self.roles.keys().collect::<Vec<_>>())
            .field(
                "external_jwt",
                &self.external.as_ref().map(|(_, v)| &v.algorithms),
            )
            .finish()
    }
}

/// The issuer claim of the tokens this server issues.
const OWN_ISSUER: &str = "bitvelocity";

/// What a JWT carries.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    role: String,
    exp: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    iss: Option<String>,
}

impl Authenticator {
    /// The users of `config` (and its outside JWT issuer, its secret read from the
    /// process environment).
    pub fn new(config: &ServeConfig) -> Result<Self> {
        Self::with_env(config, &|var| std::env::var(var).ok())
    }

    /// As [`Authenticator::new`], reading environment variables through `env`.
    pub fn with_env(config: &ServeConfig, env: &dyn Fn(&str) -> Option<String>) -> Result<Self> {
        let mut grants = HashMap::new();
        for (name, role) in &config.roles {
            let g =
                Grants::of(role).map_err(|e| ServingError::Config(format!("role {name}: {e}")))?;
            grants.insert(name.clone(), Arc::new(g));
        }
        let mut by_digest = HashMap::new();
        for u in &config.users {
            let mut digest = [0u8; 32];
            hex::decode_to_slice(&u.api_key_sha256, &mut digest).map_err(|e| {
                ServingError::Config(format!("user {}: api_key_sha256: {e}", u.name))
            })?;
            let grants = grants.get(&u.role).cloned().ok_or_else(|| {
                ServingError::Config(format!("user {}: unknown role {}", u.name, u.role))
            })?;
            by_digest.insert(
                digest,
                Principal {
                    user: u.name.clone(),
                    role: u.role.clone(),
                    grants,
                },
            );
        }
        let external = match &config.jwt {
            None => None,
            Some(jwt) => {
                let (key, algorithm) = external_key(jwt, env)?;
                let mut v = Validation::new(algorithm);
                let mut required = vec!["exp", "sub"];
                v.leeway = 0;
                v.validate_nbf = true;
                match &jwt.issuer {
                    Some(iss) => {
                        v.set_issuer(&[iss]);
                        required.push("iss");
                    }
                    None => v.iss = None,
                }
                match &jwt.audience {
                    Some(aud) => {
                        v.set_audience(&[aud]);
                        required.push("aud");
                    }
                    None => v.validate_aud = false,
                }
                v.set_required_spec_claims(&required);
                Some((key, v))
            }
        };
        use rand::RngCore;
        let mut secret = [0u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Ok(Self {
            by_digest,
            roles: grants,
            own_encoding: EncodingKey::from_secret(&secret),
            own_decoding: DecodingKey::from_secret(&secret),
            external,
        })
    }

    /// The principal presenting bearer `token`: a JWT (three dot-separated parts) or else an
    /// API key.
    pub fn bearer(&self, token: &str) -> Result<Principal> {
        if token.split('.').count() == 3 {
            self.by_jwt(token)
        } else {
            self.by_key(token)
        }
    }

    /// A token for `who`, valid for `ttl` (OAuth2 client credentials, Flight's handshake).
    pub fn issue(&self, who: &Principal, ttl: Duration) -> Result<String> {
        let claims = Claims {
            sub: who.user.clone(),
            role: who.role.clone(),
            exp: now_secs() + ttl.as_secs(),
            iss: Some(OWN_ISSUER.into()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.own_encoding)
            .map_err(|e| ServingError::Unauthenticated(format!("cannot issue a token: {e}")))
    }

    fn by_jwt(&self, token: &str) -> Result<Principal> {
        let refused = |e: jsonwebtoken::errors::Error| {
            ServingError::Unauthenticated(match e.kind() {
                ErrorKind::ExpiredSignature => "the token has expired".to_string(),
                ErrorKind::InvalidSignature => "the token's signature is not valid".to_string(),
                ErrorKind::InvalidAlgorithm => "the token's algorithm is not accepted".to_string(),
                ErrorKind::InvalidIssuer => "the token's issuer is not accepted".to_string(),
                ErrorKind::InvalidAudience => "the token's audience is not accepted".to_string(),
                ErrorKind::ImmatureSignature => "the token is not valid yet".to_string(),
                _ => format!("the token is not valid: {e}"),
            })
        };
        let mut own = Validation::new(Algorithm::HS256);
        own.set_issuer(&[OWN_ISSUER]);
        own.set_required_spec_claims(&["exp", "sub", "iss"]);
        own.leeway = 0;
        match jsonwebtoken::decode::<Claims>(token, &self.own_decoding, &own) {
            Ok(data) => return self.by_claims(data.claims),
            // Signed by this server and expired: say so, whatever else is configured.
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => return Err(refused(e)),
            Err(e) if self.external.is_none() => return Err(refused(e)),
            Err(_) => {}
        }
        let Some((key, outside)) = &self.external else {
            unreachable!("handled above");
        };
        let data = jsonwebtoken::decode::<Claims>(token, key, outside).map_err(refused)?;
        self.by_claims(data.claims)
    }

    fn by_claims(&self, claims: Claims) -> Result<Principal> {
        let grants = self.roles.get(&claims.role).cloned().ok_or_else(|| {
            ServingError::Unauthenticated(format!(
                "the token's role {} is not a configured role",
                claims.role
            ))
        })?;
        Ok(Principal {
            user: claims.sub,
            role: claims.role,
            grants,
        })
    }

    /// The principal holding API key `key`. The lookup is by the key's SHA-256, so its
    /// time depends on the digest, never on how much of a stored key a guess matched.
    pub fn by_key(&self, key: &str) -> Result<Principal> {
        let digest: [u8; 32] = Sha256::digest(key.as_bytes()).into();
        self.by_digest
            .get(&digest)
            .cloned()
            .ok_or_else(|| ServingError::Unauthenticated("unknown API key".into()))
    }

    /// The configured user `user` (once a door has checked its credentials itself, as the
    /// PostgreSQL door's SCRAM exchange does).
    pub fn by_user(&self, user: &str) -> Option<Principal> {
        self.by_digest.values().find(|p| p.user == user).cloned()
    }

    /// The principal holding `key` if it is `user`'s (a door that takes a user name as well,
    /// such as PostgreSQL's password or Flight's basic handshake).
    pub fn by_user_and_key(&self, user: &str, key: &str) -> Result<Principal> {
        match self.by_key(key) {
            Ok(p) if p.user == user => Ok(p),
            _ => Err(ServingError::Unauthenticated(format!(
                "wrong user name or key for {user}"
            ))),
        }
    }
}

/// The outside issuer's verification key from `[jwt]`, read now (a server never starts
/// with a key it cannot use).
fn external_key(
    jwt: &crate::config::JwtConfig,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(DecodingKey, Algorithm)> {
    if let Some(var) = &jwt.hs256_secret_env {
        let secret = env(var).ok_or_else(|| {
            ServingError::Config(format!(
                "[jwt] hs256_secret_env: environment variable {var} is not set"
            ))
        })?;
        if secret.len() < 32 {
            return Err(ServingError::Config(format!(
                "[jwt] hs256_secret_env: the secret in {var} is shorter than 32 bytes"
            )));
        }
        return Ok((
            DecodingKey::from_secret(secret.as_bytes()),
            Algorithm::HS256,
        ));
    }
    let path = jwt.rs256_public_key_file.as_deref().unwrap_or_default();
    let pem = std::fs::read(path).map_err(|source| ServingError::ConfigRead {
        path: path.to_string(),
        source,
    })?;
    let key = DecodingKey::from_rsa_pem(&pem).map_err(|e| {
        ServingError::Config(format!(
            "[jwt] rs256_public_key_file {path}: not an RSA public key in PEM: {e}"
        ))
    })?;
    Ok((key, Algorithm::RS256))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh API key and the SHA-256 (hex) the configuration stores for it.
pub fn new_key() -> (String, String) {
    use rand::RngCore;
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    let key = format!("bv_{}", hex::encode(bytes));
    let digest = hex::encode(Sha256::digest(key.as_bytes()));
    (key, digest)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{RoleConfig, UserConfig};

    #[test]
    fn a_key_resolves_to_its_user_and_nothing_else_does() {
        let (key, digest) = new_key();
        let (other, _) = new_key();
        assert_ne!(key, other);
        let mut config = analyst_config();
        config.users.push(UserConfig {
            name: "ana".into(),
            role: "analyst".into(),
            api_key_sha256: digest,
            pg_scram_sha256: None,
        });
        let auth = Authenticator::new(&config).unwrap();
        let p = auth.by_key(&key).unwrap();
        assert_eq!((p.user.as_str(), p.role.as_str()), ("ana", "analyst"));
        assert!(p.grants.can_read("silver.orders"));
        assert!(auth.by_key(&other).is_err());
        assert!(auth.by_key("").is_err());
        assert!(auth.by_user_and_key("ana", &key).is_ok());
        assert!(auth.by_user_and_key("bob", &key).is_err());
    }

    fn analyst_config() -> ServeConfig {
        let mut config = ServeConfig::default();
        config.roles.insert(
            "analyst".into(),
            RoleConfig {
                read: vec!["silver.*".into()],
                write: vec![],
            },
        );
        config
    }

    fn signed(claims: &Claims, algorithm: Algorithm, key: &EncodingKey) -> String {
        jsonwebtoken::encode(&Header::new(algorithm), claims, key).unwrap()
    }

    fn claims(role: &str, exp: u64) -> Claims {
        Claims {
            sub: "ana".into(),
            role: role.into(),
            exp,
            iss: None,
        }
    }

    #[test]
    fn issued_tokens_resolve_until_they_expire_and_forgeries_never_do() {
        let auth = Authenticator::new(&analyst_config()).unwrap();
        let who = Principal {
            user: "ana".into(),
            role: "analyst".into(),
            grants: auth.roles["analyst"].clone(),
        };
        let token = auth.issue(&who, Duration::from_secs(60)).unwrap();
        let p = auth.bearer(&token).unwrap();
        assert_eq!((p.user.as_str(), p.role.as_str()), ("ana", "analyst"));

        let mut old = claims("analyst", now_secs() - 5);
        old.iss = Some(OWN_ISSUER.into());
        let expired = signed(&old, Algorithm::HS256, &auth.own_encoding);
        let e = auth.bearer(&expired).unwrap_err().to_string();
        assert!(e.contains("expired"), "{e}");

        // The same claims signed by anyone else (or by another server) are refused.
        let mut fresh = claims("analyst", now_secs() + 60);
        fresh.iss = Some(OWN_ISSUER.into());
        let forged = signed(
            &fresh,
            Algorithm::HS256,
            &EncodingKey::from_secret(b"guess"),
        );
        let e = auth.bearer(&forged).unwrap_err().to_string();
        assert!(e.contains("signature"), "{e}");
        let other = Authenticator::new(&analyst_config()).unwrap();
        assert!(other.bearer(&token).is_err());
        // A token naming a role the server does not have is refused.
        let stranger = signed(
            &Claims {
                iss: Some(OWN_ISSUER.into()),
                ..claims("admin", now_secs() + 60)
            },
            Algorithm::HS256,
            &auth.own_encoding,
        );
        assert!(auth.bearer(&stranger).is_err());
        assert!(auth.bearer("a.b.c").is_err());
    }

    #[test]
    fn an_outside_issuer_and_audience_when_configured_are_required() {
        let secret = "an-outside-issuer-secret-of-32-bytes!";
        let env = |_: &str| Some(secret.to_string());
        let mut config = analyst_config();
        config.jwt = Some(crate::config::JwtConfig {
            hs256_secret_env: Some("S".into()),
            issuer: Some("https://idp.example".into()),
            audience: Some("bitvelocity".into()),
            ..Default::default()
        });
        let auth = Authenticator::with_env(&config, &env).unwrap();
        let key = EncodingKey::from_secret(secret.as_bytes());
        let token = |extra: serde_json::Value| {
            let mut claims = serde_json::json!({
                "sub": "ana", "role": "analyst", "exp": now_secs() + 60,
                "iss": "https://idp.example", "aud": "bitvelocity",
            });
            for (k, v) in extra.as_object().unwrap() {
                if v.is_null() {
                    claims.as_object_mut().unwrap().remove(k);
                } else {
                    claims[k] = v.clone();
                }
            }
            jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &key).unwrap()
        };
        assert_eq!(
            auth.bearer(&token(serde_json::json!({}))).unwrap().user,
            "ana"
        );
        for (extra, why) in [
            (serde_json::json!({"aud": null}), "aud"),
            (serde_json::json!({"aud": "another-app"}), "audience"),
            (
                serde_json::json!({"iss": "https://other.example"}),
                "issuer",
            ),
            (serde_json::json!({"iss": null}), "iss"),
            (
                serde_json::json!({"nbf": now_secs() + 600}),
                "not valid yet",
            ),
        ] {
            let e = auth.bearer(&token(extra.clone())).unwrap_err().to_string();
            assert!(e.contains(why), "{extra}: {e}");
        }
        // Unconfigured, an audience is not checked (identity providers always set one).
        config.jwt = Some(crate::config::JwtConfig {
            hs256_secret_env: Some("S".into()),
            ..Default::default()
        });
        let open = Authenticator::with_env(&config, &env).unwrap();
        assert!(open.bearer(&token(serde_json::json!({}))).is_ok());
    }

    #[test]
    fn an_outside_issuers_tokens_are_checked_with_its_key_and_algorithm() {
        // HS256 from an environment variable.
        let secret = "an-outside-issuer-secret-of-32-bytes!";
        let var = "BITVELOCITY_TEST_JWT_SECRET";
        let env = |v: &str| (v == var).then(|| secret.to_string());
        let mut config = analyst_config();
        config.jwt = Some(crate::config::JwtConfig {
            hs256_secret_env: Some(var.into()),
            rs256_public_key_file: None,
            ..Default::default()
        });
        let auth = Authenticator::with_env(&config, &env).unwrap();
        let key = EncodingKey::from_secret(secret.as_bytes());
        let good = signed(&claims("analyst", now_secs() + 60), Algorithm::HS256, &key);
        assert_eq!(auth.bearer(&good).unwrap().user, "ana");
        let late = signed(&claims("analyst", now_secs() - 5), Algorithm::HS256, &key);
        assert!(
            auth.bearer(&late)
                .unwrap_err()
                .to_string()
                .contains("expired")
        );
        let forged = signed(
            &claims("analyst", now_secs() + 60),
            Algorithm::HS256,
            &EncodingKey::from_secret(b"not-the-outside-issuer-secret-at-all"),
        );
        assert!(auth.bearer(&forged).is_err());

        // RS256 from a public key file; an HS256 token made with the public key as its
        // secret (algorithm confusion) is refused.
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures");
        let public = format!("{dir}/jwt_test_rs256_public.pem");
        let private = std::fs::read(format!("{dir}/jwt_test_rs256_private.pem")).unwrap();
        config.jwt = Some(crate::config::JwtConfig {
            hs256_secret_env: None,
            rs256_public_key_file: Some(public.clone()),
            ..Default::default()
        });
        let auth = Authenticator::new(&config).unwrap();
        let rsa = EncodingKey::from_rsa_pem(&private).unwrap();
        let good = signed(&claims("analyst", now_secs() + 60), Algorithm::RS256, &rsa);
        assert_eq!(auth.bearer(&good).unwrap().role, "analyst");
        let confused = signed(
            &claims("analyst", now_secs() + 60),
            Algorithm::HS256,
            &EncodingKey::from_secret(&std::fs::read(&public).unwrap()),
        );
        assert!(auth.bearer(&confused).is_err());

        // A key the server cannot use stops it from starting.
        config.jwt = Some(crate::config::JwtConfig {
            hs256_secret_env: None,
            rs256_public_key_file: Some(format!("{dir}/jwt_test_rs256_private.pem.missing")),
            ..Default::default()
        });
        assert!(Authenticator::new(&config).is_err());
        config.jwt = Some(crate::config::JwtConfig {
            hs256_secret_env: Some("BITVELOCITY_TEST_JWT_UNSET_VARIABLE".into()),
            rs256_public_key_file: None,
            ..Default::default()
        });
        let e = Authenticator::with_env(&config, &env)
            .unwrap_err()
            .to_string();
        assert!(e.contains("BITVELOCITY_TEST_JWT_UNSET_VARIABLE"), "{e}");
        // A short secret is refused.
        config.jwt = Some(crate::config::JwtConfig {
            hs256_secret_env: Some(var.into()),
            rs256_public_key_file: None,
            ..Default::default()
        });
        let short = |_: &str| Some("short".to_string());
        assert!(Authenticator::with_env(&config, &short).is_err());
    }
}
