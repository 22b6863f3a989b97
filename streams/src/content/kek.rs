//! The deployment's key-encryption key (KEK): 32 bytes from a file or an
//! environment variable, never logged, never stored by the system. It
//! wraps every data key (`keys.rs`); a KMS would hold it and wrap and
//! unwrap for us instead (docs/privacy.md, "Where the KEK lives").

use std::path::Path;

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use rand::RngCore;

use crate::error::{BoxError, StreamsError};

/// XChaCha20-Poly1305's nonce: random, 24 bytes, so a random one never
/// repeats in practice whatever the number of keys wrapped.
pub const NONCE_BYTES: usize = 24;

/// A key-encryption key. Its `Debug` shows nothing of it.
#[derive(Clone)]
pub struct Kek(XChaCha20Poly1305);

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek(..)")
    }
}

/// The key could not be opened: a wrong KEK, or corrupted bytes.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("does not open under this key")]
pub struct WrongKey;

impl Kek {
    pub fn from_bytes(bytes: [u8; 32]) -> Self {
        Kek(XChaCha20Poly1305::new(&bytes.into()))
    }

    /// A KEK as text: 64 hex digits (what `imctl up` writes).
    pub fn parse(text: &str) -> Result<Self, StreamsError> {
        let bytes = hex::decode(text.trim()).map_err(|e| setting("not hex", e.into()))?;
        let bytes: [u8; 32] = bytes
            .try_into()
            .map_err(|_| setting("not 32 bytes (64 hex digits)", "wrong length".into()))?;
        Ok(Self::from_bytes(bytes))
    }

    /// The KEK in `path` (64 hex digits).
    pub fn load(path: &Path) -> Result<Self, StreamsError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            StreamsError::setting(format!("key-encryption key file {}", path.display()), e)
        })?;
        Self::parse(&text).map_err(|e| {
            StreamsError::setting(format!("key-encryption key file {}", path.display()), e)
        })
    }

    /// The KEK in `path`, made there (readable by its owner only) if it
    /// is missing: what `imctl up` runs with.
    pub fn load_or_create(path: &Path) -> Result<Self, StreamsError> {
        if !path.exists() {
            let mut bytes = [0u8; 32];
            rand::rng().fill_bytes(&mut bytes);
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .map_err(|e| StreamsError::setting(format!("{}", dir.display()), e))?;
            }
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            // Readable by its owner only from the first byte.
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let written = options
                .open(path)
                .and_then(|mut f| std::io::Write::write_all(&mut f, hex::encode(bytes).as_bytes()));
            written.map_err(|e| StreamsError::setting(format!("{}", path.display()), e))?;
        }
        Self::load(path)
    }

    /// `plain` encrypted with a fresh nonce, bound to `aad`: nonce then
    /// ciphertext.
    pub fn wrap(&self, aad: &[u8], plain: &[u8]) -> Vec<u8> {
        seal_with(&self.0, aad, plain)
    }

    /// What `wrap` made with the same `aad`.
    pub fn unwrap(&self, aad: &[u8], wrapped: &[u8]) -> Result<Vec<u8>, WrongKey> {
        open_with(&self.0, aad, wrapped)
    }
}

fn setting(what: &str, source: BoxError) -> StreamsError {
    StreamsError::setting(format!("key-encryption key: {what}"), source)
}

/// A fresh nonce, then the AEAD ciphertext of `plain` bound to `aad`.
pub(crate) fn seal_with(cipher: &XChaCha20Poly1305, aad: &[u8], plain: &[u8]) -> Vec<u8> {
    let mut nonce = [0u8; NONCE_BYTES];
    rand::rng().fill_bytes(&mut nonce);
    let mut out = nonce.to_vec();
    let sealed = cipher
        .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain, aad })
        .expect("XChaCha20-Poly1305 encrypts any length we use");
    out.extend_from_slice(&sealed);
    out
}

/// The reverse of `seal_with`.
pub(crate) fn open_with(
    cipher: &XChaCha20Poly1305,
    aad: &[u8],
    sealed: &[u8],
) -> Result<Vec<u8>, WrongKey> {
    if sealed.len() < NONCE_BYTES {
        return Err(WrongKey);
    }
    let (nonce, data) = sealed.split_at(NONCE_BYTES);
    cipher
        .decrypt(XNonce::from_slice(nonce), Payload { msg: data, aad })
        .map_err(|_| WrongKey)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapped_bytes_open_only_under_the_same_key_and_binding() {
        let kek = Kek::from_bytes([7; 32]);
        let wrapped = kek.wrap(b"k.1.a.b", b"data key");
        assert_eq!(kek.unwrap(b"k.1.a.b", &wrapped).unwrap(), b"data key");
        assert_eq!(kek.unwrap(b"k.1.a.c", &wrapped), Err(WrongKey));
        assert_eq!(
            Kek::from_bytes([8; 32]).unwrap(b"k.1.a.b", &wrapped),
            Err(WrongKey)
        );
        let mut flipped = wrapped.clone();
        flipped[30] ^= 1;
        assert_eq!(kek.unwrap(b"k.1.a.b", &flipped), Err(WrongKey));
        assert_ne!(
            kek.wrap(b"x", b"same"),
            kek.wrap(b"x", b"same"),
            "fresh nonces"
        );
    }

    #[test]
    fn a_kek_is_64_hex_digits_and_never_printed() {
        assert!(Kek::parse(&"ab".repeat(32)).is_ok());
        let short = Kek::parse("abcd").unwrap_err().to_string();
        assert!(short.contains("32 bytes"), "{short}");
        assert!(Kek::parse(&"zz".repeat(32)).is_err());
        assert_eq!(
            format!("{:?}", Kek::parse(&"ab".repeat(32)).unwrap()),
            "Kek(..)"
        );
    }
}
