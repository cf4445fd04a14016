//! Two-factor codes (RFC 6238 TOTP: HMAC-SHA1, 30 s steps, 6 digits, ±1 step of skew) and
//! the sealing of TOTP secrets at rest (AES-256-GCM under the configured key, random nonce).
//!
//! Ours over `ring` (already in the tree) rather than `totp-rs`: the algorithm is 20 lines,
//! checked below against the RFC's test vectors, and totp-rs would add hmac, sha1, sha2 and
//! base32 crates for it.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use ring::aead::{AES_256_GCM, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

/// Seconds per code.
pub const STEP_SECS: i64 = 30;
/// Digits per code.
pub const DIGITS: u32 = 6;
/// Bytes of a new secret (160 bits, as RFC 4226 recommends).
pub const SECRET_BYTES: usize = 20;

/// The code of `secret` for time step `counter`, with `digits` digits.
pub fn code(secret: &[u8], counter: u64, digits: u32) -> u32 {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, secret);
    let tag = ring::hmac::sign(&key, &counter.to_be_bytes());
    let mac = tag.as_ref();
    let offset = usize::from(mac[mac.len() - 1] & 0x0f);
    let value = u32::from_be_bytes([
        mac[offset],
        mac[offset + 1],
        mac[offset + 2],
        mac[offset + 3],
    ]) & 0x7fff_ffff;
    value % 10u32.pow(digits)
}

/// Whether `text` is the code of `secret` at `now` (unix seconds), one step either side.
pub fn verify(secret: &[u8], text: &str, now: i64) -> bool {
    let text = text.trim();
    if text.len() != DIGITS as usize || !text.bytes().all(|b| b.is_ascii_digit()) {
        return false;
    }
    let Ok(given) = text.parse::<u32>() else {
        return false;
    };
    let step = now.div_euclid(STEP_SECS);
    (step - 1..=step + 1)
        .filter_map(|s| u64::try_from(s).ok())
        .any(|s| code(secret, s, DIGITS) == given)
}

/// The time step `text` is the code of at `now` (one step either side), if any.
pub fn matching_step(secret: &[u8], text: &str, now: i64) -> Option<i64> {
    let text = text.trim();
    if text.len() != DIGITS as usize || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let given = text.parse::<u32>().ok()?;
    let step = now.div_euclid(STEP_SECS);
    (step - 1..=step + 1)
        .find(|s| u64::try_from(*s).is_ok_and(|counter| code(secret, counter, DIGITS) == given))
}

/// The code of time step `step`, as the six digits an app shows.
pub fn code_at(secret: &[u8], step: i64) -> String {
    format!(
        "{:06}",
        code(secret, u64::try_from(step).unwrap_or(0), DIGITS)
    )
}

/// The current code (tests and tools use it).
pub fn current(secret: &[u8], now: i64) -> String {
    let step = u64::try_from(now.div_euclid(STEP_SECS)).unwrap_or(0);
    format!("{:06}", code(secret, step, DIGITS))
}

/// RFC 4648 base32 without padding (what authenticator apps read).
pub fn base32(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for byte in bytes {
        buffer = (buffer << 8) | u32::from(*byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(ALPHABET[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(ALPHABET[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The bytes of RFC 4648 base32 text (no padding); `None` for other characters.
pub fn base32_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let (mut buffer, mut bits) = (0u32, 0u32);
    for c in text.bytes() {
        let value = match c {
            b'A'..=b'Z' => c - b'A',
            b'2'..=b'7' => c - b'2' + 26,
            _ => return None,
        };
        buffer = (buffer << 5) | u32::from(value);
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((buffer >> bits) as u8);
        }
    }
    Some(out)
}

/// Amounts above which a transfer needs a 2FA code: per currency (`USD:1000,BTC:0.05`) and/or
/// one for every other currency (a bare amount). Compared exactly, at 18 decimals.
#[derive(Debug, Clone, Default)]
pub struct Thresholds {
    default: Option<u128>,
    per_currency: std::collections::BTreeMap<paycore_engine::CurrencyCode, u128>,
}

/// Decimals thresholds are kept at (the largest currency scale).
const THRESHOLD_SCALE: u8 = paycore_engine::currency::CURRENCY_SCALE_MAX;

impl Thresholds {
    pub fn parse(text: &str) -> Result<Thresholds, String> {
        let mut out = Thresholds::default();
        for item in text.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (code, amount) = match item.split_once(':') {
                Some((code, amount)) => (Some(code), amount),
                None => (None, item),
            };
            let amount = paycore_engine::amount::parse_amount(amount, THRESHOLD_SCALE)
                .map_err(|e| format!("--two-factor-above {item:?}: {e}"))?;
            match code {
                Some(code) => {
                    let code = paycore_engine::CurrencyCode::parse(code)
                        .map_err(|e| format!("--two-factor-above {item:?}: {e}"))?;
                    out.per_currency.insert(code, amount);
                }
                None => out.default = Some(amount),
            }
        }
        Ok(out)
    }

    /// Whether `amount` minor units of `currency` (scale `scale`) is above its threshold.
    pub fn exceeded(
        &self,
        currency: paycore_engine::CurrencyCode,
        amount: u128,
        scale: u8,
    ) -> bool {
        let Some(threshold) = self.per_currency.get(&currency).copied().or(self.default) else {
            return false;
        };
        let factor = 10u128.pow(u32::from(THRESHOLD_SCALE.saturating_sub(scale)));
        // Too large to scale up is certainly above any threshold.
        amount
            .checked_mul(factor)
            .is_none_or(|scaled| scaled > threshold)
    }
}

/// Seals and opens TOTP secrets with one AES-256-GCM key.
#[derive(Debug)]
pub struct SecretBox {
    key: LessSafeKey,
}

impl SecretBox {
    /// From 64 hex digits (32 bytes).
    pub fn from_hex(text: &str) -> Result<SecretBox, String> {
        let text = text.trim();
        if text.len() != 64 {
            return Err("the TOTP key is 64 hex digits (32 bytes)".into());
        }
        let bytes: Vec<u8> = (0..64)
            .step_by(2)
            .map(|i| u8::from_str_radix(&text[i..i + 2], 16))
            .collect::<Result<_, _>>()
            .map_err(|_| "the TOTP key is 64 hex digits (32 bytes)".to_string())?;
        let key = UnboundKey::new(&AES_256_GCM, &bytes).map_err(|_| "bad TOTP key".to_string())?;
        Ok(SecretBox {
            key: LessSafeKey::new(key),
        })
    }

    /// `base64(nonce || ciphertext || tag)`.
    pub fn seal(&self, plain: &[u8]) -> String {
        let nonce_bytes = crate::auth::random_bytes::<NONCE_LEN>();
        let mut data = plain.to_vec();
        // Sealing fails only for inputs past GCM's size limit, far beyond a 20-byte secret.
        let _ = self.key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce_bytes),
            Aad::empty(),
            &mut data,
        );
        let mut out = nonce_bytes.to_vec();
        out.extend_from_slice(&data);
        STANDARD.encode(out)
    }

    /// The secret, or `None` if the text was not sealed with this key (or was altered).
    pub fn open(&self, sealed: &str) -> Option<Vec<u8>> {
        let bytes = STANDARD.decode(sealed).ok()?;
        if bytes.len() < NONCE_LEN {
            return None;
        }
        let (nonce, data) = bytes.split_at(NONCE_LEN);
        let nonce = Nonce::try_assume_unique_for_key(nonce).ok()?;
        let mut data = data.to_vec();
        let plain = self
            .key
            .open_in_place(nonce, Aad::empty(), &mut data)
            .ok()?;
        Some(plain.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc6238_sha1_vectors() {
        let secret = b"12345678901234567890";
        for (time, expected) in [
            (59u64, 94_287_082u32),
            (1_111_111_109, 7_081_804),
            (1_111_111_111, 14_050_471),
            (1_234_567_890, 89_005_924),
            (2_000_000_000, 69_279_037),
        ] {
            assert_eq!(code(secret, time / 30, 8), expected, "t={time}");
        }
        assert!(verify(secret, "287082", 59));
        assert!(verify(secret, "287082", 59 + 30));
        assert!(!verify(secret, "287082", 59 + 90));
        assert!(!verify(secret, "28708", 59));
        assert!(!verify(secret, "abcdef", 59));
    }

    #[test]
    fn thresholds_per_currency_and_default() {
        let usd = paycore_engine::CurrencyCode::parse("USD").expect("code");
        let btc = paycore_engine::CurrencyCode::parse("BTC").expect("code");
        let jpy = paycore_engine::CurrencyCode::parse("JPY").expect("code");
        let t = Thresholds::parse("BTC:0.05, 1000").expect("parse");
        assert!(!t.exceeded(usd, 100_000, 2));
        assert!(t.exceeded(usd, 100_001, 2));
        assert!(!t.exceeded(btc, 5_000_000, 8));
        assert!(t.exceeded(btc, 5_000_001, 8));
        assert!(t.exceeded(jpy, 1001, 0));
        assert!(
            !Thresholds::parse("USD:10")
                .expect("parse")
                .exceeded(jpy, u128::MAX, 0)
        );
        assert!(Thresholds::parse("USD:ten").is_err());
        assert!(Thresholds::parse("usd:10").is_err());
    }

    #[test]
    fn base32_and_sealing() {
        assert_eq!(base32(b"foobar"), "MZXW6YTBOI");
        assert_eq!(base32_decode("MZXW6YTBOI").as_deref(), Some(&b"foobar"[..]));
        let sealed_box = SecretBox::from_hex(&"ab".repeat(32)).expect("key");
        let sealed = sealed_box.seal(b"secret");
        assert_eq!(sealed_box.open(&sealed).as_deref(), Some(&b"secret"[..]));
        let other = SecretBox::from_hex(&"cd".repeat(32)).expect("key");
        assert_eq!(other.open(&sealed), None);
        assert!(SecretBox::from_hex("zz").is_err());
    }
}
