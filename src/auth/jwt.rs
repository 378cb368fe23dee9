//! `emqx_auth_jwt` (EMQX 4): the client presents a JSON Web Token as its password (or
//! username, `auth.jwt.from`); a token whose signature, `exp`, `nbf` and configured
//! claims check out lets the client in.
//!
//! What is not a token at all (not three dot-separated parts with a JSON header) is
//! not this plugin's to decide: the next in the chain. A token that fails any check is
//! refused with "not authorized" (v5 0x87, v3 rc 5), as EMQX 4 maps its reasons.
//!
//! Which key verifies a token follows from its header's `alg`, and each key serves
//! only its own family: HS256/384/512 only with `auth.jwt.secret`, RS/PS/ES/EdDSA only
//! with the public key of `auth.jwt.pubkey`. So `alg: none` is refused, and an HS
//! token signed with the public key as its secret (algorithm confusion) never meets
//! that key as an HMAC secret. This module must never log a token.

use std::collections::HashSet;

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use quay_config::{plugin_read, ConfigError, PluginKeys};
use serde_json::Value;

use crate::codec::ReasonCode;
use crate::hooks::{AuthResult, ClientInfo, Decision, Hook};
use crate::plugins::{Context, PluginError, Running, Spec};

pub const PLUGIN: &str = "emqx_auth_jwt";

pub fn spec() -> Spec {
    Spec {
        name: PLUGIN,
        description: "Authentication with JWT",
        start: |ctx| Box::pin(start(ctx)),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    Password,
    Username,
}

/// A claim's expected value.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expected {
    Username,
    ClientId,
    Literal(String),
}

struct Verifier {
    from: From,
    /// HS* tokens.
    secret: Option<(DecodingKey, Validation)>,
    /// RS*/PS*/ES*/EdDSA tokens.
    pubkey: Option<(DecodingKey, Validation)>,
    claims: Vec<(String, Expected)>,
}

const KNOWN: &[&str] = &[
    "auth.jwt.secret",
    "auth.jwt.from",
    "auth.jwt.pubkey",
    "auth.jwt.verify_claims",
    "auth.jwt.verify_claims.<claim>",
    "auth.jwt.signature_format",
];

/// `exp` and `nbf` checked when present (EMQX 4 requires neither), no leeway, no
/// audience or issuer unless configured as claims.
fn validation(algorithms: Vec<Algorithm>) -> Validation {
    let mut v = Validation::new(algorithms[0]);
    v.algorithms = algorithms;
    v.required_spec_claims = HashSet::new();
    v.validate_exp = true;
    v.validate_nbf = true;
    v.validate_aud = false;
    v.leeway = 0;
    v
}

fn settings(keys: &PluginKeys, release_root: &std::path::Path) -> Result<Verifier, ConfigError> {
    let mut from = From::Password;
    let mut secret = None;
    let mut pubkey = None;
    let mut verify = false;
    let mut claims = Vec::new();
    for (rest, setting) in keys.section("auth.jwt") {
        let full = format!("auth.jwt.{rest}");
        match rest {
            "secret" => {
                let s = keys.read(&full, |v| plugin_read::non_empty(v, "a secret"))?;
                secret = s.map(|s| {
                    let key = DecodingKey::from_secret(s.as_bytes());
                    (
                        key,
                        validation(vec![Algorithm::HS256, Algorithm::HS384, Algorithm::HS512]),
                    )
                });
            }
            "from" => {
                from = keys
                    .read(&full, |v| match v {
                        "password" => Ok(From::Password),
                        "username" => Ok(From::Username),
                        _ => Err("password or username".into()),
                    })?
                    .unwrap_or(From::Password);
            }
            "pubkey" => {
                pubkey = keys.read(&full, |v| {
                    let path = plugin_read::non_empty(v, "a PEM file path")?;
                    public_key(&release_root.join(path))
                })?;
            }
            "verify_claims" => {
                verify = keys.read(&full, plugin_read::boolean)?.unwrap_or(false);
            }
            // EMQX 4.1 names the ECDSA signature encoding; JWS's raw form is the one
            // every library writes, and the one accepted here.
            "signature_format" => {
                keys.read(&full, |v| match v {
                    "raw" => Ok(()),
                    _ => Err("raw (JWS's ECDSA signature encoding)".into()),
                })?;
            }
            _ => match rest.strip_prefix("verify_claims.") {
                Some(claim) if !claim.is_empty() => {
                    let expected = match setting.value.as_str() {
                        "%u" => Expected::Username,
                        "%c" => Expected::ClientId,
                        v => Expected::Literal(v.to_string()),
                    };
                    claims.push((claim.to_string(), expected));
                }
                _ => return Err(keys.unknown(&full, KNOWN)),
            },
        }
    }
    if !verify {
        claims.clear();
    }
    Ok(Verifier {
        from,
        secret,
        pubkey,
        claims,
    })
}

/// The public key of a PEM file and the algorithms of its family.
fn public_key(path: &std::path::Path) -> Result<(DecodingKey, Validation), String> {
    let pem = std::fs::read(path).map_err(|e| format!("a readable PEM file ({e})"))?;
    if let Ok(key) = DecodingKey::from_rsa_pem(&pem) {
        use Algorithm::*;
        return Ok((
            key,
            validation(vec![RS256, RS384, RS512, PS256, PS384, PS512]),
        ));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(&pem) {
        return Ok((key, validation(vec![Algorithm::ES256, Algorithm::ES384])));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(&pem) {
        return Ok((key, validation(vec![Algorithm::EdDSA])));
    }
    Err("a PEM file holding an RSA, EC or Ed25519 public key".into())
}

#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    NotAToken,
    Valid,
    Invalid(&'static str),
}

impl Verifier {
    fn check(&self, info: &ClientInfo, token: &str) -> Outcome {
        let Some(alg) = header_alg(token) else {
            return Outcome::NotAToken;
        };
        let key = match alg.as_str() {
            "HS256" | "HS384" | "HS512" => &self.secret,
            "RS256" | "RS384" | "RS512" | "PS256" | "PS384" | "PS512" | "ES256" | "ES384"
            | "EdDSA" => &self.pubkey,
            // `none`, and anything else.
            _ => return Outcome::Invalid("unsupported algorithm"),
        };
        let Some((key, validation)) = key else {
            return Outcome::Invalid("no key for the token's algorithm");
        };
        let claims = match jsonwebtoken::decode::<Value>(token, key, validation) {
            Ok(data) => data.claims,
            Err(e) => {
                use jsonwebtoken::errors::ErrorKind;
                return Outcome::Invalid(match e.kind() {
                    ErrorKind::ExpiredSignature => "token expired",
                    ErrorKind::ImmatureSignature => "token not yet valid",
                    ErrorKind::InvalidSignature => "bad signature",
                    ErrorKind::InvalidAlgorithm => "algorithm does not fit the key",
                    _ => "malformed token",
                });
            }
        };
        // A non-numeric exp/nbf would be skipped by the library: refuse it.
        for time in ["exp", "nbf"] {
            if claims.get(time).is_some_and(|v| !v.is_number()) {
                return Outcome::Invalid("exp or nbf is not a number");
            }
        }
        for (claim, expected) in &self.claims {
            let want = match expected {
                Expected::Username => match info.username() {
                    Some(u) => u,
                    None => return Outcome::Invalid("claims do not match"),
                },
                Expected::ClientId => &info.client_id,
                Expected::Literal(v) => v,
            };
            let matches = match claims.get(claim) {
                Some(Value::String(s)) => s == want,
                // Compared as JSON text (`5`, `true`): `Value`'s own `== str` would
                // match only JSON strings.
                Some(v @ (Value::Number(_) | Value::Bool(_))) => {
                    serde_json::to_string(v).is_ok_and(|text| text == want)
                }
                _ => false,
            };
            if !matches {
                return Outcome::Invalid("claims do not match");
            }
        }
        Outcome::Valid
    }
}

/// The `alg` of a token's header, or `None` when the text is not shaped as a JWS
/// (three dot-separated parts, a base64url JSON object first).
fn header_alg(token: &str) -> Option<String> {
    let mut parts = token.split('.');
    let (header, _, _, None) = (parts.next()?, parts.next()?, parts.next()?, parts.next()) else {
        return None;
    };
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    match serde_json::from_slice::<Value>(&raw).ok()? {
        Value::Object(h) => Some(match h.get("alg") {
            Some(Value::String(a)) => a.clone(),
            _ => String::new(),
        }),
        _ => None,
    }
}

async fn start(ctx: Context) -> Result<Box<dyn Running>, PluginError> {
    let verifier = settings(&ctx.keys, &ctx.broker.config.release_root)?;
    if verifier.secret.is_none() && verifier.pubkey.is_none() {
        return Err(PluginError::Start(
            "emqx_auth_jwt needs auth.jwt.secret or auth.jwt.pubkey".into(),
        ));
    }
    let verifier = std::sync::Arc::new(verifier);
    ctx.broker
        .hooks
        .add(
            PLUGIN,
            0,
            Hook::authenticate(move |info, creds| {
                let token = match verifier.from {
                    From::Password => creds
                        .password
                        .as_deref()
                        .and_then(|p| std::str::from_utf8(p).ok()),
                    From::Username => info.username(),
                };
                let Some(token) = token else {
                    return Decision::Ready(AuthResult::Ignore);
                };
                Decision::Ready(match verifier.check(info, token) {
                    Outcome::NotAToken => AuthResult::Ignore,
                    Outcome::Valid => AuthResult::Allow { superuser: false },
                    Outcome::Invalid(why) => {
                        tracing::info!(client_id = %info.client_id, reason = why, "JWT refused");
                        AuthResult::Deny(ReasonCode::NOT_AUTHORIZED)
                    }
                })
            }),
        )
        .map_err(|e| PluginError::Start(e.to_string()))?;
    Ok(Box::new(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use std::sync::Arc;

    fn keys(list: &[(&str, &str)]) -> PluginKeys {
        crate::auth::settings::test_keys("etc/plugins/emqx_auth_jwt.conf", list)
    }

    fn info(user: Option<&str>) -> ClientInfo {
        let mut i = ClientInfo::new(
            Arc::from("dev1"),
            "127.0.0.1:1".parse().unwrap(),
            crate::codec::ProtocolVersion::V5,
            Arc::from("external"),
            Arc::from("external"),
        );
        i.username = user.map(Arc::from);
        i
    }

    fn hs(alg: Algorithm, secret: &str, claims: Value) -> String {
        encode(
            &Header::new(alg),
            &claims,
            &EncodingKey::from_secret(secret.as_bytes()),
        )
        .unwrap()
    }

    fn now() -> u64 {
        jsonwebtoken::get_current_timestamp()
    }

    #[test]
    fn hs_tokens_time_claims_and_configured_claims() {
        let v = settings(
            &keys(&[
                ("auth.jwt.secret", "s3"),
                ("auth.jwt.verify_claims", "on"),
                ("auth.jwt.verify_claims.username", "%u"),
                ("auth.jwt.verify_claims.sub", "%c"),
                ("auth.jwt.verify_claims.role", "admin"),
            ]),
            std::path::Path::new("/"),
        )
        .unwrap();
        let ok =
            serde_json::json!({"username": "u", "sub": "dev1", "role": "admin", "exp": now() + 60});
        for alg in [Algorithm::HS256, Algorithm::HS384, Algorithm::HS512] {
            assert_eq!(
                v.check(&info(Some("u")), &hs(alg, "s3", ok.clone())),
                Outcome::Valid
            );
        }
        let t = hs(Algorithm::HS256, "s3", ok.clone());
        assert_eq!(
            v.check(&info(Some("other")), &t),
            Outcome::Invalid("claims do not match")
        );
        assert_eq!(
            v.check(&info(None), &t),
            Outcome::Invalid("claims do not match")
        );
        let wrong = hs(Algorithm::HS256, "s4", ok.clone());
        assert_eq!(
            v.check(&info(Some("u")), &wrong),
            Outcome::Invalid("bad signature")
        );
        let mut expired = ok.clone();
        expired["exp"] = (now() - 5).into();
        let t = hs(Algorithm::HS256, "s3", expired);
        assert_eq!(
            v.check(&info(Some("u")), &t),
            Outcome::Invalid("token expired")
        );
        let mut early = ok.clone();
        early["nbf"] = (now() + 60).into();
        let t = hs(Algorithm::HS256, "s3", early);
        assert_eq!(
            v.check(&info(Some("u")), &t),
            Outcome::Invalid("token not yet valid")
        );
        let mut odd = ok;
        odd["exp"] = "never".into();
        let t = hs(Algorithm::HS256, "s3", odd);
        assert!(matches!(v.check(&info(Some("u")), &t), Outcome::Invalid(_)));
        // An RS token with no pubkey configured.
        let none = format!(
            "{}.{}.",
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"alg":"none"}"#),
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"username":"u"}"#)
        );
        assert_eq!(
            v.check(&info(Some("u")), &none),
            Outcome::Invalid("unsupported algorithm")
        );
        for not_token in ["public", "", "a.b.c", "a.b", "x.y.z.w"] {
            assert_eq!(
                v.check(&info(Some("u")), not_token),
                Outcome::NotAToken,
                "{not_token}"
            );
        }
    }

    #[test]
    fn bad_settings_name_their_line() {
        let root = std::path::Path::new("/");
        let e = settings(&keys(&[("auth.jwt.from", "cookie")]), root)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains(":1: auth.jwt.from: expected password or username"),
            "{e}"
        );
        let e = settings(&keys(&[("auth.jwt.pubkey", "/nonexistent.pem")]), root)
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains(":1: auth.jwt.pubkey: expected a readable PEM file"),
            "{e}"
        );
        let e = settings(&keys(&[("auth.jwt.secrets", "x")]), root)
            .err()
            .unwrap();
        assert!(
            e.to_string().contains(":1: unknown key auth.jwt.secrets"),
            "{e}"
        );
    }
}
