//! What every database backend does with what it found for a user: compare the
//! password with the stored hash (and salt), read a superuser flag. EMQX 4 semantics:
//! a user that is not found is not this backend's to decide (ignore), a wrong or
//! missing password is refused (v5 0x86, v3 rc 4).

use bytes::Bytes;

use super::hash::{Algorithm, PasswordHash};
use crate::codec::ReasonCode;
use crate::hooks::AuthResult;

/// The refusal for a wrong password.
pub const WRONG_PASSWORD: AuthResult = AuthResult::Deny(ReasonCode::BAD_USER_NAME_OR_PASSWORD);

/// Whether `password` matches `stored` (with `salt`). bcrypt and pbkdf2 cost
/// milliseconds of CPU on purpose: they run on the blocking pool, not on a thread
/// that serves connections.
pub async fn password_matches(
    hash: PasswordHash,
    password: Option<Bytes>,
    salt: String,
    stored: String,
) -> bool {
    let Some(password) = password else {
        return false;
    };
    let slow = matches!(hash.algorithm, Algorithm::Bcrypt | Algorithm::Pbkdf2 { .. });
    let verify = move || hash.verify(&password, salt.as_bytes(), &stored);
    if slow {
        tokio::task::spawn_blocking(verify).await.unwrap_or(false)
    } else {
        verify()
    }
}

/// A superuser flag as the backends store it: `1`, `true` (any case), `t`, `on`.
pub fn truthy(value: &str) -> bool {
    let v = value.trim();
    v == "1"
        || v.eq_ignore_ascii_case("true")
        || v.eq_ignore_ascii_case("t")
        || v.eq_ignore_ascii_case("on")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passwords_and_flags() {
        let h = PasswordHash::parse("sha256").unwrap();
        let stored = h.hash(b"pw", b"");
        assert!(
            password_matches(
                h,
                Some(Bytes::from_static(b"pw")),
                String::new(),
                stored.clone()
            )
            .await
        );
        assert!(
            !password_matches(
                h,
                Some(Bytes::from_static(b"px")),
                String::new(),
                stored.clone()
            )
            .await
        );
        assert!(!password_matches(h, None, String::new(), stored).await);
        let b = PasswordHash::parse("bcrypt").unwrap();
        let stored = bcrypt::hash("pw", 4).unwrap();
        assert!(password_matches(b, Some(Bytes::from_static(b"pw")), String::new(), stored).await);
        assert!(
            truthy("1")
                && truthy("TRUE")
                && truthy("t")
                && !truthy("0")
                && !truthy("")
                && !truthy("false")
        );
    }
}
