//! The PostgreSQL door's login: database `bitvelocity`, user name and key as the password:
//! cleartext only over TLS, SCRAM-SHA-256 otherwise (against the user's stored verifier).

use std::fmt::Debug;
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use futures::{Sink, SinkExt};
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::{
    ClientInfo, METADATA_DATABASE, METADATA_USER, PgWireConnectionState, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use tokio::sync::Mutex;

use super::PgDoor;
use super::scram::{Exchange, ScramError, Verifier};
use crate::auth::Principal;

/// The only database name the door answers to.
pub const DATABASE: &str = "bitvelocity";

enum State {
    Initial,
    Cleartext,
    ScramFirst(Verifier),
    ScramFinal(Verifier, Exchange),
    Done,
}

/// One connection's login.
pub(super) struct Login {
    door: Arc<PgDoor>,
    principal: Arc<OnceLock<Principal>>,
    state: Mutex<State>,
}

impl Login {
    pub(super) fn new(door: Arc<PgDoor>, principal: Arc<OnceLock<Principal>>) -> Self {
        Self {
            door,
            principal,
            state: Mutex::new(State::Initial),
        }
    }
}

fn fatal(code: &str, message: String) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new(
        "FATAL".to_string(),
        code.to_string(),
        message,
    )))
}

fn failed(user: &str) -> PgWireError {
    fatal(
        "28P01",
        format!("password authentication failed for user \"{user}\""),
    )
}

fn parameters() -> DefaultServerParameterProvider {
    let mut p = DefaultServerParameterProvider::default();
    p.server_version = "15.0 (BitVelocity)".to_string();
    p.search_path = "silver".to_string();
    p.is_superuser = false;
    p.default_transaction_read_only = true;
    p
}

#[async_trait]
impl StartupHandler for Login {
    async fn on_startup<C>(
        &self,
        client: &mut C,
        message: PgWireFrontendMessage,
    ) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let user = client
            .metadata()
            .get(METADATA_USER)
            .cloned()
            .unwrap_or_default();
        let mut state = self.state.lock().await;
        // Taken out while handled: a failed step leaves the login finished (and closed).
        let current = std::mem::replace(&mut *state, State::Done);
        match (message, current) {
            (PgWireFrontendMessage::Startup(startup), State::Initial) => {
                protocol_negotiation(client, &startup).await?;
                save_startup_parameters_to_metadata(client, &startup);
                let user = client
                    .metadata()
                    .get(METADATA_USER)
                    .cloned()
                    .unwrap_or_default();
                let database = client
                    .metadata()
                    .get(METADATA_DATABASE)
                    .cloned()
                    .unwrap_or_else(|| user.clone());
                if user.is_empty() {
                    return Err(fatal("28000", "no user name given".into()));
                }
                if database != DATABASE {
                    return Err(fatal(
                        "3D000",
                        format!(
                            "database \"{database}\" does not exist (connect to \"{DATABASE}\")"
                        ),
                    ));
                }
                if self.door.require_tls && !client.is_secure() {
                    // Never plaintext when TLS is configured (pgwire would carry on).
                    return Err(fatal(
                        "28000",
                        "this server requires TLS: connect with sslmode=require or stricter".into(),
                    ));
                }
                client.set_state(PgWireConnectionState::AuthenticationInProgress);
                if client.is_secure() {
                    *state = State::Cleartext;
                    client
                        .send(PgWireBackendMessage::Authentication(
                            Authentication::CleartextPassword,
                        ))
                        .await?;
                } else {
                    // An unknown user gets a verifier no key matches, so the exchange (and
                    // its failure) looks the same whether or not the user exists.
                    let verifier = self
                        .door
                        .verifiers
                        .get(&user)
                        .cloned()
                        .unwrap_or_else(|| Verifier::new(&crate::auth::new_key().0));
                    *state = State::ScramFirst(verifier);
                    client
                        .send(PgWireBackendMessage::Authentication(Authentication::SASL(
                            vec!["SCRAM-SHA-256".to_string()],
                        )))
                        .await?;
                }
            }
            (PgWireFrontendMessage::PasswordMessageFamily(message), State::Cleartext) => {
                let password = message.into_password()?.password;
                let who = if password.split('.').count() == 3 {
                    self.door
                        .auth
                        .bearer(&password)
                        .ok()
                        .filter(|p| p.user == user)
                } else {
                    self.door.auth.by_user_and_key(&user, &password).ok()
                };
                let who = who.ok_or_else(|| failed(&user))?;
                *state = State::Done;
                self.admit(client, who).await?;
            }
            (PgWireFrontendMessage::PasswordMessageFamily(message), State::ScramFirst(v)) => {
                let v = &v;
                let first = message.into_sasl_initial_response()?;
                if first.auth_method != "SCRAM-SHA-256" {
                    return Err(fatal(
                        "28000",
                        format!("SASL mechanism {} is not offered", first.auth_method),
                    ));
                }
                let data = first.data.unwrap_or_default();
                let (exchange, server_first) =
                    Exchange::start(v, &data).map_err(|e| scram_error(&user, e))?;
                *state = State::ScramFinal(v.clone(), exchange);
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::SASLContinue(server_first.into_bytes().into()),
                    ))
                    .await?;
            }
            (PgWireFrontendMessage::PasswordMessageFamily(message), State::ScramFinal(v, ex)) => {
                let (v, ex) = (&v, &ex);
                let last = message.into_sasl_response()?;
                let server_final = ex
                    .finish(v, &last.data)
                    .map_err(|e| scram_error(&user, e))?;
                let who = self.door.auth.by_user(&user).ok_or_else(|| failed(&user))?;
                *state = State::Done;
                client
                    .send(PgWireBackendMessage::Authentication(
                        Authentication::SASLFinal(server_final.into_bytes().into()),
                    ))
                    .await?;
                self.admit(client, who).await?;
            }
            (_, State::Done) => {}
            _ => {
                return Err(fatal("08P01", "unexpected message while logging in".into()));
            }
        }
        Ok(())
    }
}

fn scram_error(user: &str, e: ScramError) -> PgWireError {
    match e {
        ScramError::WrongPassword => failed(user),
        ScramError::Protocol(why) => fatal("08P01", format!("SCRAM exchange: {why}")),
    }
}

impl Login {
    /// Logs `who` in: the rest of the session runs as it.
    async fn admit<C>(&self, client: &mut C, who: Principal) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        tracing::info!(user = %who.user, role = %who.role, "postgres wire login");
        let _ = self.principal.set(who);
        let (pid, secret) = RandomPidSecretKeyGenerator::default().generate(client);
        client.set_pid_and_secret_key(pid, secret);
        finish_authentication(client, &parameters()).await
    }
}
