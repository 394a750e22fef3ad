//! Who is asking: an API key (stored as its SHA-256) resolves to a user and its role's
//! grants. Every door turns its own credential form into a key and asks here.

use std::collections::HashMap;
use std::sync::Arc;

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
#[derive(Debug)]
pub struct Authenticator {
    by_digest: HashMap<[u8; 32], Principal>,
}

impl Authenticator {
    /// The users of `config`.
    pub fn new(config: &ServeConfig) -> Result<Self> {
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
        Ok(Self { by_digest })
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
        let mut config = ServeConfig::default();
        config.roles.insert(
            "analyst".into(),
            RoleConfig {
                read: vec!["silver.*".into()],
                write: vec![],
            },
        );
        config.users.push(UserConfig {
            name: "ana".into(),
            role: "analyst".into(),
            api_key_sha256: digest,
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
}
