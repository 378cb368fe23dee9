//! SCRAM-SHA-256 enhanced authentication against `emqx_auth_username`'s entries: the
//! `client.enhanced_authenticate` hook the plugin registers while it runs. The
//! protocol is `scram`; this binds it to the table (each entry keeps SCRAM keys of its
//! password, derived when the password was set) and to the hook's step interface.

use std::sync::Arc;

use bytes::Bytes;

use super::credentials::CredentialTable;
use super::scram::{self, ScramError, ServerFirst};
use crate::codec::ReasonCode;
use crate::hooks::{AuthExchange, AuthStep, Hook};

/// The hook: a fresh exchange for every CONNECT asking for SCRAM-SHA-256.
pub(super) fn hook(table: Arc<CredentialTable>) -> Result<Hook, getrandom::Error> {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret)?;
    let secret = Arc::new(secret);
    Ok(Hook::enhanced_auth(move |method| {
        (method == scram::METHOD).then(|| {
            Box::new(ScramExchange {
                table: table.clone(),
                secret: secret.clone(),
                state: State::Start,
            }) as Box<dyn AuthExchange>
        })
    }))
}

struct ScramExchange {
    table: Arc<CredentialTable>,
    /// Salts the answers to unknown user names (see `scram::decoy`).
    secret: Arc<[u8; 32]>,
    state: State,
}

enum State {
    Start,
    SentServerFirst(Box<ServerFirst>),
    Over,
}

impl AuthExchange for ScramExchange {
    fn step(&mut self, data: &[u8]) -> AuthStep {
        match std::mem::replace(&mut self.state, State::Over) {
            State::Start => match scram::parse_client_first(data) {
                Ok(first) => {
                    let mut nonce = [0u8; scram::NONCE_BYTES];
                    if getrandom::getrandom(&mut nonce).is_err() {
                        tracing::error!("no randomness for a SCRAM nonce");
                        return AuthStep::Fail(ReasonCode::SERVER_UNAVAILABLE);
                    }
                    let credential = self.table.scram(&first.username);
                    let decoy = scram::decoy(&self.secret, &first.username);
                    let state = ServerFirst::new(first, credential, &decoy, &nonce);
                    let message = Bytes::copy_from_slice(state.message().as_bytes());
                    self.state = State::SentServerFirst(Box::new(state));
                    AuthStep::Continue(message)
                }
                Err(e) => fail(None, &e),
            },
            State::SentServerFirst(state) => match state.finish(data) {
                Ok(server_final) => AuthStep::Done {
                    username: state.username().to_string(),
                    data: Some(Bytes::from(server_final)),
                    superuser: false,
                },
                Err(e) => fail(Some(state.username()), &e),
            },
            State::Over => AuthStep::Fail(ReasonCode::PROTOCOL_ERROR),
        }
    }
}

fn fail(username: Option<&str>, e: &ScramError) -> AuthStep {
    tracing::info!(username, error = %e, "SCRAM-SHA-256 authentication failed");
    AuthStep::Fail(match e {
        ScramError::BadProof => ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        ScramError::Malformed(_) | ScramError::ChannelBinding => ReasonCode::NOT_AUTHORIZED,
    })
}
