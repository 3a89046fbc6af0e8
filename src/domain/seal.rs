//! What the hub hands out and takes back is sealed under keys derived from
//! the hub database's secret: a client can neither read nor forge it, and
//! every instance on one database opens what another sealed. A readable
//! cursor would tell a partner how many changes it may not see were
//! committed between two of its own; a readable audit page token or event
//! name, how many events other partners caused.
//!
//! Page tokens (any length) are sealed with AES-256-GCM (`Sealer`); feed
//! positions and audit ids (numbers) with one AES block (`NumberSeal`), which
//! costs a twentieth of a GCM seal: a full sync seals a cursor per change.

use std::sync::Arc;

use aes::Aes128;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit};
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};

use super::{Error, Result};

/// Bytes a sealed value adds to its plaintext: nonce and tag.
const OVERHEAD: usize = NONCE_LEN + 16;

/// Derives the key for `what` of `purpose` from the hub's secret.
fn derive(secret: &[u8], purpose: &str, what: &str) -> hmac::Tag {
    let master = hmac::Key::new(hmac::HMAC_SHA256, secret);
    hmac::sign(&master, format!("copex {purpose} {what}").as_bytes())
}

/// Numbers below 2^48 sealed into 16 bytes: one AES-128 block of the
/// number, a 32-bit salt and a 48-bit check value (encode-then-encipher). A
/// block the hub did not make opens with a chance of 2^-48.
#[derive(Clone)]
pub struct NumberSeal {
    cipher: Aes128,
    check: [u8; 6],
}

/// The largest number `NumberSeal` seals: 2^48 - 1 (at 30,000 changes a
/// second, 300 years of feed).
pub const MAX_NUMBER: u64 = (1 << 48) - 1;

impl NumberSeal {
    pub fn new(secret: &[u8], purpose: &'static str) -> Self {
        let key = derive(secret, purpose, "block key");
        let check = derive(secret, purpose, "check");
        let mut check_bytes = [0u8; 6];
        check_bytes.copy_from_slice(&check.as_ref()[..6]);
        Self {
            cipher: Aes128::new_from_slice(&key.as_ref()[..16])
                .expect("16 bytes are an AES-128 key"),
            check: check_bytes,
        }
    }

    /// `n` (at most `MAX_NUMBER`, to which larger ones are clamped) with a
    /// salt: salt 0 always gives the same block, a random salt one that
    /// cannot be told from another sealing of `n`.
    pub fn seal(&self, n: u64, salt: u32) -> [u8; 16] {
        let mut block = [0u8; 16];
        block[..6].copy_from_slice(&n.min(MAX_NUMBER).to_be_bytes()[2..]);
        block[6..10].copy_from_slice(&salt.to_be_bytes());
        block[10..].copy_from_slice(&self.check);
        let mut block = block.into();
        self.cipher.encrypt_block(&mut block);
        block.into()
    }

    /// A random salt, for `seal`.
    pub fn random_salt() -> u32 {
        let mut salt = [0u8; 4];
        // Without the system's randomness a salt of 0 is still sound; only
        // unlinkability is lost.
        let _ = SystemRandom::new().fill(&mut salt);
        u32::from_be_bytes(salt)
    }

    pub fn open(&self, sealed: &[u8]) -> Option<u64> {
        let block: [u8; 16] = sealed.try_into().ok()?;
        let mut block = block.into();
        self.cipher.decrypt_block(&mut block);
        let block: [u8; 16] = block.into();
        if block[10..] != self.check {
            return None;
        }
        let mut n = [0u8; 8];
        n[2..].copy_from_slice(&block[..6]);
        Some(u64::from_be_bytes(n))
    }
}

/// Values of any length sealed with AES-256-GCM and a random nonce: sealing
/// one value twice gives two unrelated strings.
#[derive(Clone)]
pub struct Sealer {
    key: Arc<LessSafeKey>,
    purpose: &'static str,
}

impl Sealer {
    /// A sealer for one purpose: values sealed for another do not open here.
    pub fn new(secret: &[u8], purpose: &'static str) -> Self {
        let key = UnboundKey::new(&AES_256_GCM, derive(secret, purpose, "key").as_ref())
            .map(LessSafeKey::new)
            .expect("a SHA-256 output is an AES-256 key");
        Self {
            key: Arc::new(key),
            purpose,
        }
    }

    /// `nonce || ciphertext || tag`.
    pub fn seal(&self, plain: &[u8]) -> Result<Vec<u8>> {
        let mut nonce = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce)
            .map_err(|_| Error::internal("the system's randomness is unavailable"))?;
        let mut out = Vec::with_capacity(plain.len() + OVERHEAD);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(plain);
        let tag = self
            .key
            .seal_in_place_separate_tag(
                Nonce::assume_unique_for_key(nonce),
                Aad::from(self.purpose.as_bytes()),
                &mut out[NONCE_LEN..],
            )
            .map_err(|_| Error::internal("a value too large to seal"))?;
        out.extend_from_slice(tag.as_ref());
        Ok(out)
    }

    /// The plaintext, or `None` for anything not sealed by this sealer.
    pub fn open(&self, sealed: &[u8]) -> Option<Vec<u8>> {
        if sealed.len() < OVERHEAD {
            return None;
        }
        let (nonce, rest) = sealed.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut buffer = rest.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::from(self.purpose.as_bytes()), &mut buffer)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_under_their_secret_and_purpose() {
        let sealer = Sealer::new(b"secret", "page token");
        let sealed = sealer.seal(b"position 42").unwrap();
        assert_eq!(sealed.len(), b"position 42".len() + OVERHEAD);
        assert!(!sealed.windows(11).any(|w| w == b"position 42"));
        assert_eq!(sealer.open(&sealed).as_deref(), Some(&b"position 42"[..]));
        assert_eq!(Sealer::new(b"other", "page token").open(&sealed), None);
        assert_eq!(Sealer::new(b"secret", "cursor").open(&sealed), None);
        for i in 0..sealed.len() {
            let mut tampered = sealed.clone();
            tampered[i] ^= 1;
            assert_eq!(sealer.open(&tampered), None, "byte {i} flipped");
        }
        assert_eq!(sealer.open(&sealed[..sealed.len() - 1]), None);
        assert_eq!(sealer.open(b""), None);
        assert_ne!(sealer.seal(b"7").unwrap(), sealer.seal(b"7").unwrap());
    }

    #[test]
    fn numbers_open_only_under_their_secret_and_purpose() {
        let numbers = NumberSeal::new(b"secret", "cursor");
        for n in [0, 1, 1083, MAX_NUMBER] {
            for salt in [0, 7, NumberSeal::random_salt()] {
                let sealed = numbers.seal(n, salt);
                assert_eq!(numbers.open(&sealed), Some(n));
                assert_eq!(NumberSeal::new(b"other", "cursor").open(&sealed), None);
                assert_eq!(NumberSeal::new(b"secret", "audit").open(&sealed), None);
                for i in 0..16 {
                    let mut tampered = sealed;
                    tampered[i] ^= 1;
                    assert_eq!(numbers.open(&tampered), None, "byte {i} flipped");
                }
                assert!(!sealed.windows(6).any(|w| w == &n.to_be_bytes()[2..]) || n == 0);
            }
        }
        assert_eq!(
            numbers.open(&numbers.seal(MAX_NUMBER + 1, 0)),
            Some(MAX_NUMBER)
        );
        assert_eq!(numbers.open(&[0u8; 15]), None);
    }

    #[test]
    fn salt_zero_repeats_and_other_salts_unlink() {
        let numbers = NumberSeal::new(b"secret", "cursor");
        assert_eq!(numbers.seal(7, 0), numbers.seal(7, 0));
        assert_ne!(numbers.seal(7, 0), numbers.seal(8, 0));
        assert_ne!(numbers.seal(7, 1), numbers.seal(7, 2));
    }
}
