//! The server's configuration file (`serve.toml`): roles and their grants, users and the
//! SHA-256 of their keys, optional JWT verification, and per-query limits.
//!
//! Secrets never live in it: a key is stored as its SHA-256 only, and a JWT secret is read
//! from the environment variable the file names.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Result, ServingError};

/// The whole configuration file.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ServeConfig {
    /// Roles by name.
    #[serde(default)]
    pub roles: BTreeMap<String, RoleConfig>,
    /// Users (each with one role).
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// Accept JWTs carrying `sub` and `role` claims.
    #[serde(default)]
    pub jwt: Option<JwtConfig>,
    /// Per-query and server-wide limits.
    #[serde(default)]
    pub limits: Limits,
    /// TLS for every door; without it the doors answer in plaintext (bind them to
    /// loopback only).
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The Iceberg REST catalog on the HTTP door.
    #[serde(default)]
    pub rest_catalog: RestCatalogConfig,
}

/// How the Iceberg REST catalog (`/iceberg` on the HTTP door) answers.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RestCatalogConfig {
    /// Lifetime of the tokens `/iceberg/v1/oauth/tokens` issues, seconds.
    pub token_ttl_secs: u64,
    /// Hand the server's own object-store credentials to REST clients in `LoadTable`'s
    /// `config` (`s3.access-key-id`, ...). They reach every file of the bucket whatever the
    /// caller's grants, so turn it on only where every REST client may read every table;
    /// otherwise clients bring their own storage credentials.
    pub vend_credentials: bool,
}

impl Default for RestCatalogConfig {
    fn default() -> Self {
        Self {
            token_ttl_secs: 3600,
            vend_credentials: false,
        }
    }
}

/// The certificate every door presents.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file of the certificate chain, the server's first.
    pub cert_file: String,
    /// PEM file of its private key.
    pub key_file: String,
}

/// What a role may do: globs over `namespace.table` (`*` matches any run of characters).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// Tables the role may read.
    #[serde(default)]
    pub read: Vec<String>,
    /// Tables the role may create and write through the REST catalog.
    #[serde(default)]
    pub write: Vec<String>,
}

/// One user.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The user's name (also its OAuth2 client id and PostgreSQL user name).
    pub name: String,
    /// The role it acts in.
    pub role: String,
    /// Lower-case hex SHA-256 of the user's API key.
    pub api_key_sha256: String,
    /// The key's SCRAM-SHA-256 verifier in PostgreSQL's stored form, for PostgreSQL-wire
    /// logins without TLS (`keys new` writes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pg_scram_sha256: Option<String>,
}

/// How JWTs are verified (one of the two keys).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Environment variable holding the HS256 secret.
    #[serde(default)]
    pub hs256_secret_env: Option<String>,
    /// PEM file of the RS256 public key.
    #[serde(default)]
    pub rs256_public_key_file: Option<String>,
    /// The `iss` a token must carry (recommended: tokens the same key signed for other
    /// purposes are then refused).
    #[serde(default)]
    pub issuer: Option<String>,
    /// The `aud` a token must carry; when unset, a token's audience is not checked.
    #[serde(default)]
    pub audience: Option<String>,
}

/// Limits on queries, the same on every door.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock time a query may take, planning and streaming its result included.
    pub query_timeout_secs: u64,
    /// Memory one query may hold before its operators spill (or it fails).
    pub memory_limit_mb: u64,
    /// Queries running at once.
    pub max_concurrent_queries: usize,
    /// Queries waiting for a slot; beyond it a query is refused as busy.
    pub max_queued_queries: usize,
    /// Rows a JSON answer holds at most (the Arrow form is not capped).
    pub max_json_rows: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            query_timeout_secs: 30,
            memory_limit_mb: 1024,
            max_concurrent_queries: 8,
            max_queued_queries: 64,
            max_json_rows: 100_000,
        }
    }
}

impl ServeConfig {
    /// Reads and checks `path`.
    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| ServingError::ConfigRead {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ServingError::Config(message) => {
                ServingError::Config(format!("{}: {message}", path.display()))
            }
            other => other,
        })
    }

    /// Parses and checks a configuration text.
    pub fn parse(text: &str) -> Result<Self> {
        let config: ServeConfig =
            toml::from_str(text).map_err(|e| ServingError::Config(e.to_string()))?;
        config.check()?;
        Ok(config)
    }

    /// The file's text (after `keys new` added a user).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self).map_err(|e| ServingError::Config(e.to_string()))
    }

    fn check(&self) -> Result<()> {
        let mut names = std::collections::HashSet::new();
        for u in &self.users {
            if !names.insert(u.name.as_str()) {
                return Err(ServingError::Config(format!(
                    "user {} is listed twice",
                    u.name
                )));
            }
            if !self.roles.contains_key(&u.role) {
                return Err(ServingError::Config(format!(
                    "user {} has role {}, which is not defined under [roles]",
                    u.name, u.role
                )));
            }
            let hex_ok = u.api_key_sha256.len() == 64
                && u.api_key_sha256.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex_ok {
                return Err(ServingError::Config(format!(
                    "user {}: api_key_sha256 must be 64 hex digits (the SHA-256 of the key)",
                    u.name
                )));
            }
        }
        for (name, role) in &self.roles {
            for g in role.read.iter().chain(&role.write) {
                crate::grants::Glob::new(g)
                    .map_err(|e| ServingError::Config(format!("role {name}: grant {g:?}: {e}")))?;
            }
        }
        if let Some(jwt) = &self.jwt
            && jwt.hs256_secret_env.is_some() == jwt.rs256_public_key_file.is_some()
        {
            return Err(ServingError::Config(
                "[jwt] takes exactly one of hs256_secret_env and rs256_public_key_file".into(),
            ));
        }
        let l = &self.limits;
        if l.query_timeout_secs > 86_400 {
            return Err(ServingError::Config(
                "[limits]: query_timeout_secs is at most 86400 (a day)".into(),
            ));
        }
        if l.query_timeout_secs == 0 || l.max_concurrent_queries == 0 || l.memory_limit_mb == 0 {
            return Err(ServingError::Config(
                "[limits]: query_timeout_secs, memory_limit_mb and max_concurrent_queries must be above zero".into(),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = r#"
[roles.analyst]
read = ["silver.*", "gold.*"]
[roles.engineer]
read = ["*"]
write = ["sandbox.*"]
[[users]]
name = "ana"
role = "analyst"
api_key_sha256 = "2c26b46b68ffc68ff99b453c1d30413413422d706483bfa0f98a5e886266e7ae"
[limits]
query_timeout_secs = 5
max_json_rows = 10
"#;

    #[test]
    fn the_documented_example_parses_with_defaults_filled_in() {
        let c = ServeConfig::parse(EXAMPLE).unwrap();
        assert_eq!(c.roles["engineer"].write, vec!["sandbox.*"]);
        assert_eq!(c.users[0].role, "analyst");
        assert_eq!(c.limits.query_timeout_secs, 5);
        assert_eq!(c.limits.max_json_rows, 10);
        assert_eq!(c.limits.max_concurrent_queries, 8, "default kept");
        let again = ServeConfig::parse(&c.to_toml().unwrap()).unwrap();
        assert_eq!(again.users.len(), 1);
    }

    #[test]
    fn mistakes_are_named() {
        let unknown_role = EXAMPLE.replace("role = \"analyst\"", "role = \"nobody\"");
        let e = ServeConfig::parse(&unknown_role).unwrap_err().to_string();
        assert!(e.contains("role nobody, which is not defined"), "{e}");
        let bad_hash = EXAMPLE.replace("2c26b46b", "zz26b46b");
        let e = ServeConfig::parse(&bad_hash).unwrap_err().to_string();
        assert!(e.contains("64 hex digits"), "{e}");
        let typo = EXAMPLE.replace("max_json_rows", "max_json_row");
        let e = ServeConfig::parse(&typo).unwrap_err().to_string();
        assert!(e.contains("max_json_row"), "{e}");
        let twice = format!(
            "{EXAMPLE}\n[[users]]\nname = \"ana\"\nrole = \"engineer\"\napi_key_sha256 = \"{}\"\n",
            "0".repeat(64)
        );
        let e = ServeConfig::parse(&twice).unwrap_err().to_string();
        assert!(e.contains("listed twice"), "{e}");
    }
}
