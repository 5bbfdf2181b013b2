//! Resource ids: a prefix, then 26 lowercase Crockford base32 characters of a
//! 48-bit millisecond timestamp and 80 random bits, so ids sort by creation.

use std::time::{SystemTime, UNIX_EPOCH};

const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// Unix time in milliseconds: the timestamps records carry.
pub fn now_millis() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub fn new_id(prefix: &str) -> String {
    let millis = now_millis().max(0) as u128;
    let random: u128 = rand::random::<u128>() & ((1u128 << 80) - 1);
    let mut value = ((millis & ((1u128 << 48) - 1)) << 80) | random;
    let mut out = [0u8; 26];
    for slot in out.iter_mut().rev() {
        *slot = ALPHABET[(value & 31) as usize];
        value >>= 5;
    }
    let mut id = String::with_capacity(prefix.len() + 27);
    id.push_str(prefix);
    id.push('_');
    // The alphabet is ASCII, so this cannot fail.
    id.push_str(std::str::from_utf8(&out).unwrap_or_default());
    id
}

/// Whether `id` has the shape `new_id(prefix)` produces; a cheap check that
/// turns typos into INVALID_ARGUMENT instead of NOT_FOUND.
pub fn is_valid(prefix: &str, id: &str) -> bool {
    let Some(rest) = id.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')) else {
        return false;
    };
    rest.len() == 26 && rest.bytes().all(|b| ALPHABET.contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_valid_unique_and_sorted_by_time() {
        let a = new_id("ds");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id("ds");
        assert!(is_valid("ds", &a) && is_valid("ds", &b));
        assert!(a < b);
        assert!(!is_valid("ds", "ds_short"));
        assert!(!is_valid("job", &a));
        assert!(!is_valid("ds", &a.to_uppercase()));
    }
}
