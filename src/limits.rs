//! Bounds on request fields that several services check the same way.

use std::collections::BTreeMap;

use crate::error::FieldViolation;

/// OpenAI's metadata bounds: 16 pairs, keys of 1-64 characters, values of
/// at most 512.
pub const METADATA_PAIRS: usize = 16;
pub const METADATA_KEY_CHARS: usize = 64;
pub const METADATA_VALUE_CHARS: usize = 512;

/// Longest JSON pointer (a label field, a stratification key).
pub const POINTER_CHARS: usize = 256;

/// Longest URL a client may hand the server (a webhook).
pub const URL_CHARS: usize = 2048;

/// Appends what is wrong with `metadata` (reported under `field`).
pub fn check_metadata(field: &str, metadata: &BTreeMap<String, String>, out: &mut Vec<FieldViolation>) {
    if metadata.len() > METADATA_PAIRS {
        out.push(FieldViolation::new(
            field,
            format!("at most {METADATA_PAIRS} key-value pairs"),
        ));
    }
    for (key, value) in metadata {
        let key_chars = key.chars().count();
        if key_chars == 0 || key_chars > METADATA_KEY_CHARS || value.chars().count() > METADATA_VALUE_CHARS {
            out.push(FieldViolation::new(
                format!("{field}[{}]", key.chars().take(METADATA_KEY_CHARS).collect::<String>()),
                format!("keys are 1 to {METADATA_KEY_CHARS} characters, values at most {METADATA_VALUE_CHARS}"),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_bounds() {
        let mut m = BTreeMap::new();
        m.insert("team".to_string(), "x".repeat(512));
        let mut v = Vec::new();
        check_metadata("metadata", &m, &mut v);
        assert!(v.is_empty());
        m.insert("k".repeat(65), "v".into());
        m.insert("long".into(), "x".repeat(513));
        check_metadata("metadata", &m, &mut v);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v.iter().all(|p| p.field.len() < 80));
        let many: BTreeMap<String, String> = (0..17).map(|i| (i.to_string(), String::new())).collect();
        let mut v = Vec::new();
        check_metadata("metadata", &many, &mut v);
        assert_eq!(v[0].field, "metadata");
    }
}
