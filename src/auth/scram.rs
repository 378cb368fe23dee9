//! SCRAM-SHA-256 (RFC 5802, RFC 7677), the server side, for MQTT 5 enhanced
//! authentication: the client-first message arrives as the CONNECT's Authentication
//! Data, the server-first goes back in an AUTH packet (reason 0x18), the client-final
//! comes in the client's AUTH, and the server-final rides on the CONNACK.
//!
//! Pure: no I/O, no clock; the caller supplies the server nonce and the user's stored
//! keys. The password itself never reaches the server: the store keeps `StoredKey`
//! and `ServerKey` (derived once, when the password is set), which verify a proof but
//! cannot produce one. No channel binding (`p=` is refused: MQTT has no TLS-unique to
//! bind to here); no authorization identity other than none.
//!
//! An unknown user gets a server-first message like everyone else (salt derived from
//! the name and a per-process secret) and fails at the proof, so the exchange does not
//! tell which names exist (RFC 5802 §9).

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// The MQTT 5 Authentication Method this module serves.
pub const METHOD: &str = "SCRAM-SHA-256";
/// PBKDF2 iterations of new credentials: RFC 7677's minimum recommendation.
pub const ITERATIONS: u32 = 4096;
/// Bytes of salt of new credentials.
const SALT_BYTES: usize = 16;
/// Bytes of randomness in the server's nonce.
pub const NONCE_BYTES: usize = 18;
/// Longest message taken from a client; a real one is under 200 bytes.
const MAX_MESSAGE: usize = 2048;

type HmacSha256 = Hmac<Sha256>;

/// What the server keeps for one user (RFC 5802 §3): enough to check a proof, not
/// enough to log in.
#[derive(Clone, PartialEq, Eq)]
pub struct ScramCredential {
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: [u8; 32],
    pub server_key: [u8; 32],
}

impl std::fmt::Debug for ScramCredential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScramCredential")
            .field("iterations", &self.iterations)
            .finish_non_exhaustive()
    }
}

impl ScramCredential {
    /// The keys of `password` with `salt` (PBKDF2-HMAC-SHA-256, `iterations`).
    pub fn derive(password: &[u8], salt: &[u8], iterations: u32) -> ScramCredential {
        let mut salted = [0u8; 32];
        // Only an invalid HMAC key length fails, and HMAC takes any length.
        let _ = pbkdf2::pbkdf2::<HmacSha256>(password, salt, iterations.max(1), &mut salted);
        let client_key = hmac(&salted, b"Client Key");
        ScramCredential {
            salt: salt.to_vec(),
            iterations: iterations.max(1),
            stored_key: Sha256::digest(client_key).into(),
            server_key: hmac(&salted, b"Server Key"),
        }
    }

    /// New keys for `password`, with a fresh random salt and `ITERATIONS`.
    pub fn new_random(password: &[u8]) -> Result<ScramCredential, getrandom::Error> {
        let mut salt = [0u8; SALT_BYTES];
        getrandom::getrandom(&mut salt)?;
        Ok(ScramCredential::derive(password, &salt, ITERATIONS))
    }
}

/// Why an exchange failed. `Malformed` is the client's protocol error; `BadProof` is a
/// wrong password (or an unknown user): both refuse the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScramError {
    #[error("malformed SCRAM message: {0}")]
    Malformed(&'static str),
    #[error("channel binding is not supported")]
    ChannelBinding,
    #[error("wrong password or unknown user")]
    BadProof,
}

/// The client-first message, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientFirst {
    /// The user name (`n=`), with `=2C` and `=3D` decoded.
    pub username: String,
    /// The GS2 header as sent (`n,,` or `y,,`), which `c=` must repeat.
    gs2_header: String,
    client_nonce: String,
    /// The message without the GS2 header, part of the AuthMessage.
    bare: String,
}

/// Parse the client-first message (CONNECT's Authentication Data).
pub fn parse_client_first(data: &[u8]) -> Result<ClientFirst, ScramError> {
    let text = message_text(data)?;
    // gs2-header = gs2-cbind-flag "," [ authzid ] ","
    let mut parts = text.splitn(3, ',');
    let (flag, authzid, bare) = match (parts.next(), parts.next(), parts.next()) {
        (Some(f), Some(a), Some(b)) => (f, a, b),
        _ => return Err(ScramError::Malformed("no GS2 header")),
    };
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => return Err(ScramError::ChannelBinding),
        _ => return Err(ScramError::Malformed("bad channel binding flag")),
    }
    if !authzid.is_empty() {
        return Err(ScramError::Malformed(
            "an authorization identity is not supported",
        ));
    }
    let mut attrs = bare.split(',');
    let username = match attrs.next() {
        Some(n) if n.starts_with("m=") => {
            return Err(ScramError::Malformed("mandatory extension not supported"))
        }
        Some(n) => decode_saslname(attr(n, 'n')?)?,
        None => return Err(ScramError::Malformed("no user name")),
    };
    let client_nonce = attr(attrs.next().unwrap_or(""), 'r')?;
    if client_nonce.is_empty() || !client_nonce.bytes().all(printable_not_comma) {
        return Err(ScramError::Malformed("bad client nonce"));
    }
    Ok(ClientFirst {
        username,
        gs2_header: format!("{flag},{authzid},"),
        client_nonce: client_nonce.to_string(),
        bare: bare.to_string(),
    })
}

/// Between the server-first and the client-final message.
#[derive(Clone)]
pub struct ServerFirst {
    client_first: ClientFirst,
    /// The server-first message as sent (part of the AuthMessage).
    message: String,
    nonce: String,
    /// None for an unknown user: the proof then never verifies.
    credential: Option<ScramCredential>,
}

impl std::fmt::Debug for ServerFirst {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerFirst")
            .field("username", &self.client_first.username)
            .finish_non_exhaustive()
    }
}

impl ServerFirst {
    /// Answer `client_first` for a user with `credential` (None: unknown user, answered
    /// with `decoy`'s salt and iterations so the exchange looks the same).
    /// `server_nonce` is random bytes from the caller.
    pub fn new(
        client_first: ClientFirst,
        credential: Option<ScramCredential>,
        decoy: &ScramCredential,
        server_nonce: &[u8],
    ) -> ServerFirst {
        let nonce = format!("{}{}", client_first.client_nonce, B64.encode(server_nonce));
        let shown = credential.as_ref().unwrap_or(decoy);
        let message = format!(
            "r={nonce},s={},i={}",
            B64.encode(&shown.salt),
            shown.iterations
        );
        ServerFirst {
            client_first,
            message,
            nonce,
            credential,
        }
    }

    /// The server-first message, for the AUTH packet.
    pub fn message(&self) -> &str {
        &self.message
    }

    pub fn username(&self) -> &str {
        &self.client_first.username
    }

    /// Check the client-final message; on success, the server-final message (`v=`)
    /// for the CONNACK.
    pub fn finish(&self, data: &[u8]) -> Result<String, ScramError> {
        let text = message_text(data)?;
        // client-final = "c=" b64(gs2-header) ",r=" nonce [extensions] ",p=" proof
        let (without_proof, proof) = text
            .rsplit_once(",p=")
            .ok_or(ScramError::Malformed("no proof"))?;
        let mut attrs = without_proof.split(',');
        let binding = attr(attrs.next().unwrap_or(""), 'c')?;
        let nonce = attr(attrs.next().unwrap_or(""), 'r')?;
        let expected_binding = B64.encode(self.client_first.gs2_header.as_bytes());
        if binding != expected_binding {
            return Err(ScramError::Malformed(
                "channel binding does not repeat the GS2 header",
            ));
        }
        if nonce != self.nonce {
            return Err(ScramError::Malformed("nonce does not match"));
        }
        let proof = B64
            .decode(proof)
            .map_err(|_| ScramError::Malformed("proof is not base64"))?;
        let Some(credential) = &self.credential else {
            return Err(ScramError::BadProof);
        };
        if proof.len() != 32 {
            return Err(ScramError::BadProof);
        }
        let auth_message = format!(
            "{},{},{without_proof}",
            self.client_first.bare, self.message
        );
        let signature = hmac(&credential.stored_key, auth_message.as_bytes());
        let mut client_key = [0u8; 32];
        for (k, (p, s)) in client_key.iter_mut().zip(proof.iter().zip(signature)) {
            *k = p ^ s;
        }
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        if !bool::from(stored.ct_eq(&credential.stored_key)) {
            return Err(ScramError::BadProof);
        }
        let server_signature = hmac(&credential.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)))
    }
}

/// A per-process secret's credential for unknown users: its salt depends on the name,
/// so asking twice for one unknown name shows the same salt, as for a real user.
pub fn decoy(secret: &[u8; 32], username: &str) -> ScramCredential {
    let salt = hmac(secret, username.as_bytes());
    ScramCredential {
        salt: salt[..SALT_BYTES].to_vec(),
        iterations: ITERATIONS,
        stored_key: [0; 32],
        server_key: [0; 32],
    }
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    // HMAC takes keys of any length.
    let mut mac = <HmacSha256 as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn message_text(data: &[u8]) -> Result<&str, ScramError> {
    if data.len() > MAX_MESSAGE {
        return Err(ScramError::Malformed("message too long"));
    }
    std::str::from_utf8(data).map_err(|_| ScramError::Malformed("not UTF-8"))
}

/// The value of `k=value`.
fn attr(text: &str, key: char) -> Result<&str, ScramError> {
    let mut chars = text.chars();
    match (chars.next(), chars.next()) {
        (Some(k), Some('=')) if k == key => Ok(&text[2..]),
        _ => Err(ScramError::Malformed("unexpected attribute")),
    }
}

/// RFC 5802 saslname: `=2C` is `,` and `=3D` is `=`; any other `=` is an error.
fn decode_saslname(name: &str) -> Result<String, ScramError> {
    let mut out = String::with_capacity(name.len());
    let mut rest = name;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        match rest.get(i..i + 3) {
            Some("=2C") => out.push(','),
            Some("=3D") => out.push('='),
            _ => return Err(ScramError::Malformed("bad escape in the user name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    if out.is_empty() {
        return Err(ScramError::Malformed("empty user name"));
    }
    Ok(out)
}

fn printable_not_comma(b: u8) -> bool {
    (0x21..=0x7e).contains(&b) && b != b','
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 7677 §3's example: user `user`, password `pencil`.
    #[test]
    fn rfc_7677_example() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let cred = ScramCredential::derive(b"pencil", &salt, 4096);
        let first = parse_client_first(b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO").unwrap();
        assert_eq!(first.username, "user");
        // The RFC's server nonce is not base64 of anything: the state is built by hand.
        let state = ServerFirst {
            message: "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096".into(),
            nonce: "rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0".into(),
            client_first: first,
            credential: Some(cred),
        };
        let last = state
            .finish(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        assert_eq!(last, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
    }

    fn client_proof(password: &[u8], salt: &[u8], iterations: u32, auth_message: &str) -> String {
        let mut salted = [0u8; 32];
        pbkdf2::pbkdf2::<HmacSha256>(password, salt, iterations, &mut salted).unwrap();
        let client_key = hmac(&salted, b"Client Key");
        let stored: [u8; 32] = Sha256::digest(client_key).into();
        let sig = hmac(&stored, auth_message.as_bytes());
        let proof: Vec<u8> = client_key.iter().zip(sig).map(|(a, b)| a ^ b).collect();
        B64.encode(proof)
    }

    fn exchange(password: &[u8], user_has: Option<&[u8]>) -> Result<String, ScramError> {
        let cred = user_has.map(|pw| ScramCredential::derive(pw, b"salty", 64));
        let first = parse_client_first(b"n,,n=a=2Cb=3Dc,r=abc").unwrap();
        assert_eq!(first.username, "a,b=c");
        let decoy = decoy(&[1; 32], &first.username);
        let state = ServerFirst::new(first, cred, &decoy, &[9; NONCE_BYTES]);
        let msg = state.message().to_string();
        let nonce = msg.split(',').next().unwrap().trim_start_matches("r=");
        let salt = B64
            .decode(msg.split(",s=").nth(1).unwrap().split(',').next().unwrap())
            .unwrap();
        let iterations: u32 = msg.rsplit("i=").next().unwrap().parse().unwrap();
        let without_proof = format!("c=biws,r={nonce}");
        let auth = format!("n=a=2Cb=3Dc,r=abc,{msg},{without_proof}");
        let proof = client_proof(password, &salt, iterations, &auth);
        state.finish(format!("{without_proof},p={proof}").as_bytes())
    }

    #[test]
    fn right_password_wrong_password_unknown_user() {
        assert!(exchange(b"pw", Some(b"pw")).unwrap().starts_with("v="));
        assert_eq!(exchange(b"px", Some(b"pw")), Err(ScramError::BadProof));
        assert_eq!(exchange(b"pw", None), Err(ScramError::BadProof));
    }

    #[test]
    fn unknown_users_see_a_stable_salt_and_the_usual_iterations() {
        let a = decoy(&[3; 32], "ghost");
        assert_eq!(a, decoy(&[3; 32], "ghost"));
        assert_ne!(a.salt, decoy(&[3; 32], "other").salt);
        assert_eq!(a.iterations, ITERATIONS);
    }

    #[test]
    fn malformed_client_first_messages() {
        for bad in [
            &b""[..],
            b"n,,",
            b"n,,n=,r=x",
            b"n,,n=u",
            b"n,,r=x,n=u",
            b"x,,n=u,r=x",
            b"n,a=admin,n=u,r=x",
            b"n,,m=ext,n=u,r=x",
            b"n,,n=a=2Xb,r=x",
            b"n,,n=u,r=",
            b"\xff,,n=u,r=x",
        ] {
            assert!(
                matches!(parse_client_first(bad), Err(ScramError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            parse_client_first(b"p=tls-unique,,n=u,r=x"),
            Err(ScramError::ChannelBinding)
        );
        assert!(parse_client_first(b"y,,n=u,r=x").is_ok());
        assert!(parse_client_first(&[b'n'; 3000]).is_err());
    }

    #[test]
    fn a_client_final_must_repeat_the_nonce_and_binding() {
        let first = parse_client_first(b"n,,n=u,r=abc").unwrap();
        let cred = ScramCredential::derive(b"pw", b"s", 2);
        let state = ServerFirst::new(first, Some(cred.clone()), &cred, b"xyz");
        let nonce = &state.nonce;
        for bad in [
            "c=biws,r=other,p=AAAA".to_string(),
            format!("c=eSws,r={nonce},p=AAAA"),
            format!("c=biws,r={nonce}"),
            format!("c=biws,r={nonce},p=***"),
        ] {
            assert!(
                matches!(state.finish(bad.as_bytes()), Err(ScramError::Malformed(_))),
                "{bad}"
            );
        }
        assert_eq!(
            state.finish(format!("c=biws,r={nonce},p=AAAA").as_bytes()),
            Err(ScramError::BadProof)
        );
    }
}
