//! Password hashes as EMQX 4's auth plugins store them (`password_hash = ...`):
//! `plain`, `md5`, `sha`, `sha256`, `sha512`, `bcrypt`, `pbkdf2,<mac>,<iterations>,<dklen>`,
//! and for the backends that keep a salt column, where the salt goes: `salt,sha256`
//! (salt before the password) or `sha256,salt` (after).
//!
//! Digests are compared as lowercase hex, in constant time. bcrypt carries its own
//! salt and cost in the stored string (`$2b$12$...`), so the salt argument is unused.

use std::fmt;

use hmac::Hmac;
use md5::Md5;
use sha1::Sha1;
use sha2::{Digest, Sha256, Sha512};
use subtle::ConstantTimeEq;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Plain,
    Md5,
    Sha,
    Sha256,
    Sha512,
    Bcrypt,
    Pbkdf2 {
        mac: Mac,
        iterations: u32,
        dklen: usize,
    },
}

/// The HMAC digest of `pbkdf2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mac {
    Md5,
    Sha,
    Sha256,
    Sha512,
}

/// Where a salt is joined to the password before hashing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaltAt {
    None,
    Before,
    After,
}

/// A parsed `password_hash` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PasswordHash {
    pub algorithm: Algorithm,
    pub salt: SaltAt,
}

/// Refusal phrased to follow "expected " in a config error.
pub const EXPECTED: &str = "plain, md5, sha, sha256, sha512, bcrypt, \
    pbkdf2,<md5|sha|sha256|sha512>,<iterations>,<dklen>, or salt,<hash> / <hash>,salt";

const MAX_PBKDF2_ITERATIONS: u32 = 10_000_000;
const MAX_DKLEN: usize = 1024;

impl PasswordHash {
    pub const fn new(algorithm: Algorithm) -> PasswordHash {
        PasswordHash {
            algorithm,
            salt: SaltAt::None,
        }
    }

    /// Parse a `password_hash` value.
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let parts: Vec<&str> = text.split(',').map(str::trim).collect();
        let simple = |name: &str| -> Option<Algorithm> {
            Some(match name {
                "plain" => Algorithm::Plain,
                "md5" => Algorithm::Md5,
                "sha" => Algorithm::Sha,
                "sha256" => Algorithm::Sha256,
                "sha512" => Algorithm::Sha512,
                "bcrypt" => Algorithm::Bcrypt,
                _ => return None,
            })
        };
        let parsed = match parts.as_slice() {
            [name] => simple(name).map(PasswordHash::new),
            ["salt", name] => simple(name).map(|algorithm| PasswordHash {
                algorithm,
                salt: SaltAt::Before,
            }),
            [name, "salt"] => simple(name).map(|algorithm| PasswordHash {
                algorithm,
                salt: SaltAt::After,
            }),
            ["pbkdf2", mac, iterations, dklen] => {
                let mac = match *mac {
                    "md5" => Some(Mac::Md5),
                    "sha" => Some(Mac::Sha),
                    "sha256" => Some(Mac::Sha256),
                    "sha512" => Some(Mac::Sha512),
                    _ => None,
                };
                let iterations = iterations
                    .parse::<u32>()
                    .ok()
                    .filter(|&i| (1..=MAX_PBKDF2_ITERATIONS).contains(&i));
                let dklen = dklen
                    .parse::<usize>()
                    .ok()
                    .filter(|&d| (1..=MAX_DKLEN).contains(&d));
                match (mac, iterations, dklen) {
                    (Some(mac), Some(iterations), Some(dklen)) => {
                        Some(PasswordHash::new(Algorithm::Pbkdf2 {
                            mac,
                            iterations,
                            dklen,
                        }))
                    }
                    _ => None,
                }
            }
            _ => None,
        };
        parsed.ok_or_else(|| EXPECTED.to_string())
    }

    /// The stored form of `password` with `salt`: lowercase hex for digests, the
    /// password itself for `plain`, a fresh `$2b$` string for bcrypt (cost 10, as
    /// EMQX's default salt) — so two bcrypt hashes of one password differ.
    pub fn hash(&self, password: &[u8], salt: &[u8]) -> String {
        match self.algorithm {
            Algorithm::Plain => String::from_utf8_lossy(password).into_owned(),
            Algorithm::Bcrypt => bcrypt::hash(password, 10).unwrap_or_default(),
            Algorithm::Pbkdf2 {
                mac,
                iterations,
                dklen,
            } => hex::encode(pbkdf2(mac, password, salt, iterations, dklen)),
            digest => {
                let input = self.salted(password, salt);
                hex::encode(match digest {
                    Algorithm::Md5 => Md5::digest(&input).to_vec(),
                    Algorithm::Sha => Sha1::digest(&input).to_vec(),
                    Algorithm::Sha256 => Sha256::digest(&input).to_vec(),
                    _ => Sha512::digest(&input).to_vec(),
                })
            }
        }
    }

    /// Whether `password` (with `salt`) matches `stored`. Constant time in the
    /// compared bytes; a malformed bcrypt string is a mismatch, never an error.
    pub fn verify(&self, password: &[u8], salt: &[u8], stored: &str) -> bool {
        match self.algorithm {
            Algorithm::Bcrypt => bcrypt::verify(password, stored).unwrap_or(false),
            Algorithm::Plain => bool::from(password.ct_eq(stored.as_bytes())),
            _ => {
                let computed = self.hash(password, salt);
                let stored = stored.trim().to_ascii_lowercase();
                bool::from(computed.as_bytes().ct_eq(stored.as_bytes()))
            }
        }
    }

    fn salted(&self, password: &[u8], salt: &[u8]) -> Vec<u8> {
        match self.salt {
            SaltAt::None => password.to_vec(),
            SaltAt::Before => [salt, password].concat(),
            SaltAt::After => [password, salt].concat(),
        }
    }
}

fn pbkdf2(mac: Mac, password: &[u8], salt: &[u8], iterations: u32, dklen: usize) -> Vec<u8> {
    let mut out = vec![0u8; dklen];
    match mac {
        Mac::Md5 => pbkdf2::pbkdf2::<Hmac<Md5>>(password, salt, iterations, &mut out),
        Mac::Sha => pbkdf2::pbkdf2::<Hmac<Sha1>>(password, salt, iterations, &mut out),
        Mac::Sha256 => pbkdf2::pbkdf2::<Hmac<Sha256>>(password, salt, iterations, &mut out),
        Mac::Sha512 => pbkdf2::pbkdf2::<Hmac<Sha512>>(password, salt, iterations, &mut out),
    }
    // Only an invalid HMAC key length fails, and HMAC takes any length.
    .unwrap_or_default();
    out
}

impl fmt::Display for PasswordHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = |a: Algorithm| match a {
            Algorithm::Plain => "plain",
            Algorithm::Md5 => "md5",
            Algorithm::Sha => "sha",
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
            Algorithm::Bcrypt => "bcrypt",
            Algorithm::Pbkdf2 { .. } => "pbkdf2",
        };
        match (self.algorithm, self.salt) {
            (
                Algorithm::Pbkdf2 {
                    mac,
                    iterations,
                    dklen,
                },
                _,
            ) => {
                let mac = match mac {
                    Mac::Md5 => "md5",
                    Mac::Sha => "sha",
                    Mac::Sha256 => "sha256",
                    Mac::Sha512 => "sha512",
                };
                write!(f, "pbkdf2,{mac},{iterations},{dklen}")
            }
            (a, SaltAt::None) => f.write_str(name(a)),
            (a, SaltAt::Before) => write!(f, "salt,{}", name(a)),
            (a, SaltAt::After) => write!(f, "{},salt", name(a)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(setting: &str, password: &str, salt: &str) -> String {
        PasswordHash::parse(setting)
            .unwrap()
            .hash(password.as_bytes(), salt.as_bytes())
    }

    #[test]
    fn digests_match_known_values() {
        // Reference values from coreutils (`printf public | sha256sum` etc.).
        assert_eq!(
            hash("md5", "public", ""),
            "4c9184f37cff01bcdc32dc486ec36961"
        );
        assert_eq!(
            hash("sha", "public", ""),
            "61c9b2b17db77a27841bbeeabff923448b0f6388"
        );
        assert_eq!(
            hash("sha256", "public", ""),
            "efa1f375d76194fa51a3556a97e641e61685f914d446979da50a551a4333ffd7"
        );
        assert_eq!(hash("plain", "public", "x"), "public");
    }

    #[test]
    fn salt_goes_where_the_setting_says() {
        assert_eq!(
            hash("salt,sha256", "public", "s"),
            hash("sha256", "spublic", "")
        );
        assert_eq!(
            hash("sha256,salt", "public", "s"),
            hash("sha256", "publics", "")
        );
        assert_ne!(
            hash("salt,md5", "public", "s"),
            hash("md5,salt", "public", "s")
        );
    }

    #[test]
    fn pbkdf2_matches_rfc6070() {
        // RFC 6070 test vector 2: "password"/"salt", 2 iterations, 20 bytes, HMAC-SHA1.
        assert_eq!(
            hash("pbkdf2,sha,2,20", "password", "salt"),
            "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957"
        );
    }

    #[test]
    fn verify_accepts_the_right_password_only() {
        for setting in [
            "plain",
            "md5",
            "sha",
            "sha256,salt",
            "salt,sha512",
            "pbkdf2,sha256,10,32",
        ] {
            let h = PasswordHash::parse(setting).unwrap();
            let stored = h.hash(b"secret", b"NaCl");
            assert!(h.verify(b"secret", b"NaCl", &stored), "{setting}");
            assert!(h.verify(b"secret", b"NaCl", &stored.to_uppercase()) || setting == "plain");
            assert!(!h.verify(b"secreT", b"NaCl", &stored), "{setting}");
            assert!(!h.verify(b"", b"NaCl", &stored), "{setting}");
        }
    }

    #[test]
    fn bcrypt_carries_its_salt_and_a_broken_hash_is_a_mismatch() {
        let h = PasswordHash::parse("bcrypt").unwrap();
        let (a, b) = (h.hash(b"pw", b""), h.hash(b"pw", b""));
        assert_ne!(a, b, "fresh salt each time");
        assert!(h.verify(b"pw", b"", &a) && h.verify(b"pw", b"", &b));
        assert!(!h.verify(b"pw2", b"", &a));
        assert!(!h.verify(b"pw", b"", "$2b$not-a-hash"));
    }

    #[test]
    fn settings_round_trip_and_bad_ones_are_refused() {
        for s in [
            "plain",
            "sha256",
            "salt,md5",
            "sha,salt",
            "pbkdf2,sha512,1000,20",
            "bcrypt",
        ] {
            assert_eq!(PasswordHash::parse(s).unwrap().to_string(), s);
        }
        for bad in [
            "",
            "sha3",
            "salt,salt",
            "pbkdf2,sha256,0,20",
            "pbkdf2,sha256,1000",
            "md5,pepper",
        ] {
            assert_eq!(PasswordHash::parse(bad).unwrap_err(), EXPECTED, "{bad}");
        }
    }
}
