//! AES-256-GCM sealing of runtime config and secrets.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;

use crate::error::{Error, ErrorKind, Result};

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// A cluster's 256-bit encryption key for values the state store keeps sealed.
///
/// The key is generated once per cluster and travels to the head with its bootstrap
/// config. It is never logged: `Debug` prints `EncryptionKey(<redacted>)`.
#[derive(Clone, PartialEq, Eq)]
pub struct EncryptionKey([u8; 32]);

impl EncryptionKey {
    /// A new random key from the operating system's generator.
    pub fn generate() -> Self {
        let mut key = [0u8; 32];
        rand::rng().fill_bytes(&mut key);
        EncryptionKey(key)
    }

    /// A key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        EncryptionKey(bytes)
    }

    /// A key from 64 hex digits. The error never contains the input.
    pub fn from_hex(hex_key: &str) -> Result<Self> {
        let bytes = hex::decode(hex_key.trim()).map_err(|_| {
            Error::new(
                ErrorKind::InvalidConfig,
                "the cluster encryption key is not valid hex (expected 64 hex digits)",
            )
        })?;
        let key: [u8; 32] = bytes.try_into().map_err(|b: Vec<u8>| {
            Error::new(
                ErrorKind::InvalidConfig,
                format!("the cluster encryption key has {} bytes, expected 32", b.len()),
            )
        })?;
        Ok(EncryptionKey(key))
    }

    /// The key as 64 hex digits, to hand to the head. Treat the result as a secret.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Encrypts `plaintext`, bound to `aad` (the Redis key name): version byte, random
    /// nonce, ciphertext and tag.
    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let cipher = Aes256Gcm::new((&self.0).into());
        let mut nonce = [0u8; NONCE_LEN];
        rand::rng().fill_bytes(&mut nonce);
        let ciphertext = cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            .map_err(|_| Error::new(ErrorKind::Unexpected, "AES-GCM encryption failed"))?;
        let mut out = Vec::with_capacity(1 + NONCE_LEN + ciphertext.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ciphertext);
        Ok(out)
    }

    /// Decrypts a value made by [`seal`](Self::seal) with the same `aad`. A wrong key or
    /// a tampered value gives an `Unauthenticated` error.
    pub(crate) fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Vec<u8>> {
        if sealed.len() < 1 + NONCE_LEN + TAG_LEN || sealed[0] != VERSION {
            return Err(Error::new(
                ErrorKind::Unexpected,
                "the stored value is not a sealed value of this version (not encrypted by cloudtik?)",
            )
            .with_context("key", String::from_utf8_lossy(aad)));
        }
        let cipher = Aes256Gcm::new((&self.0).into());
        let (nonce, ciphertext) = sealed[1..].split_at(NONCE_LEN);
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ciphertext, aad })
            .map_err(|_| {
                Error::new(
                    ErrorKind::Unauthenticated,
                    "cannot decrypt the stored value: wrong cluster encryption key, or the value was tampered with",
                )
                .with_context("key", String::from_utf8_lossy(aad))
            })
    }
}

impl fmt::Debug for EncryptionKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("EncryptionKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_round_trip_with_random_nonces() {
        let key = EncryptionKey::generate();
        let a = key.seal(b"k", b"hello").unwrap();
        let b = key.seal(b"k", b"hello").unwrap();
        assert_ne!(a, b, "each value gets its own nonce");
        assert_eq!(key.open(b"k", &a).unwrap(), b"hello");
        assert!(!a.windows(5).any(|w| w == b"hello"));
    }

    #[test]
    fn wrong_key_tamper_and_other_aad_are_unauthenticated() {
        let key = EncryptionKey::generate();
        let sealed = key.seal(b"k", b"secret").unwrap();
        let other = EncryptionKey::generate();
        assert_eq!(
            other.open(b"k", &sealed).unwrap_err().kind(),
            ErrorKind::Unauthenticated
        );
        assert_eq!(
            key.open(b"other", &sealed).unwrap_err().kind(),
            ErrorKind::Unauthenticated
        );
        let mut tampered = sealed.clone();
        *tampered.last_mut().unwrap() ^= 1;
        assert_eq!(
            key.open(b"k", &tampered).unwrap_err().kind(),
            ErrorKind::Unauthenticated
        );
        assert_eq!(
            key.open(b"k", b"plain").unwrap_err().kind(),
            ErrorKind::Unexpected
        );
    }

    #[test]
    fn hex_round_trip_and_debug_is_redacted() {
        let key = EncryptionKey::generate();
        let hex_key = key.to_hex();
        assert_eq!(EncryptionKey::from_hex(&hex_key).unwrap(), key);
        assert!(!format!("{key:?}").contains(&hex_key));
        let err = EncryptionKey::from_hex("abcd").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidConfig);
        assert!(EncryptionKey::from_hex("zz").is_err());
    }
}
