//! Secrets the server must keep to use later (a job's webhook signing
//! secret) are sealed before they reach the store: ChaCha20-Poly1305 (ring)
//! under a key that lives outside the database, so a database dump or backup
//! does not carry them. The key is `LATHE_SECRETS_KEY` (64 hex characters;
//! every replica of a shared database needs the same one) or, without it,
//! `DATA_DIR/secrets.key`, made at first start with owner-only permissions.
//!
//! A sealed value is `sealed:v1:<nonce hex>:<ciphertext and tag hex>`;
//! `open` passes a value without that prefix through unchanged (records
//! written before sealing existed).

use std::path::Path;

use ring::aead::{Aad, CHACHA20_POLY1305, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};

const PREFIX: &str = "sealed:v1:";

/// Where the generated key is kept in the data dir.
pub const KEY_FILE: &str = "secrets.key";

pub struct SecretBox {
    key: LessSafeKey,
}

#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    #[error("LATHE_SECRETS_KEY must be 64 hex characters (32 bytes)")]
    BadKey,
    #[error("the secrets key file: {0}")]
    KeyFile(#[source] std::io::Error),
    #[error("a sealed secret does not open with this server's key (LATHE_SECRETS_KEY differs between replicas?)")]
    Open,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<key>)")
    }
}

impl SecretBox {
    pub fn new(key: [u8; 32]) -> SecretBox {
        // A 32-byte key is what CHACHA20_POLY1305 takes, so this cannot fail.
        let unbound = UnboundKey::new(&CHACHA20_POLY1305, &key).unwrap_or_else(|_| unreachable!());
        SecretBox {
            key: LessSafeKey::new(unbound),
        }
    }

    /// The key from `hex_key` when given, else from `data_dir/secrets.key`,
    /// made there (0600) when it does not exist.
    pub fn load(hex_key: Option<&str>, data_dir: &Path) -> Result<SecretBox, SecretsError> {
        if let Some(text) = hex_key {
            return parse_key(text.trim()).map(SecretBox::new);
        }
        let path = data_dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_key(text.trim()).map(SecretBox::new),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                write_owner_only(&path, &hex::encode(key)).map_err(SecretsError::KeyFile)?;
                Ok(SecretBox::new(key))
            }
            Err(e) => Err(SecretsError::KeyFile(e)),
        }
    }

    pub fn seal(&self, plaintext: &str) -> String {
        let nonce_bytes: [u8; NONCE_LEN] = rand::random();
        let mut data = plaintext.as_bytes().to_vec();
        // Sealing in place with a fresh random nonce cannot fail for inputs this size.
        self.key
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce_bytes), Aad::empty(), &mut data)
            .unwrap_or_else(|_| unreachable!());
        format!("{PREFIX}{}:{}", hex::encode(nonce_bytes), hex::encode(data))
    }

    pub fn open(&self, stored: &str) -> Result<String, SecretsError> {
        let Some(rest) = stored.strip_prefix(PREFIX) else {
            return Ok(stored.to_string());
        };
        let (nonce, body) = rest.split_once(':').ok_or(SecretsError::Open)?;
        let nonce: [u8; NONCE_LEN] = hex::decode(nonce)
            .ok()
            .and_then(|n| n.try_into().ok())
            .ok_or(SecretsError::Open)?;
        let mut data = hex::decode(body).map_err(|_| SecretsError::Open)?;
        let plain = self
            .key
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::empty(), &mut data)
            .map_err(|_| SecretsError::Open)?;
        String::from_utf8(plain.to_vec()).map_err(|_| SecretsError::Open)
    }
}

fn parse_key(text: &str) -> Result<[u8; 32], SecretsError> {
    hex::decode(text)
        .ok()
        .and_then(|k| k.try_into().ok())
        .ok_or(SecretsError::BadKey)
}

/// Writes `text` and a newline to `path`, readable by the owner only,
/// replacing an earlier file atomically (key files: this one's, `admin.key`).
pub(crate) fn write_owner_only(path: &Path, text: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = path.with_extension("key.tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    file.write_all(format!("{text}\n").as_bytes())?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_secrets_open_with_the_key_only() {
        let a = SecretBox::new([7; 32]);
        let sealed = a.seal("whsec_abc");
        assert!(sealed.starts_with(PREFIX) && !sealed.contains("whsec_abc"), "{sealed}");
        assert_ne!(sealed, a.seal("whsec_abc"), "a fresh nonce each time");
        assert_eq!(a.open(&sealed).unwrap(), "whsec_abc");
        assert!(SecretBox::new([8; 32]).open(&sealed).is_err());
        let mut tampered = sealed.clone();
        tampered.pop();
        tampered.push('0');
        assert!(a.open(&tampered).is_err() || tampered == sealed);
        assert_eq!(a.open("plain-old").unwrap(), "plain-old");
    }

    #[test]
    fn the_key_file_is_made_once_owner_only_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sealed = SecretBox::load(None, dir.path()).unwrap().seal("s");
        let mode = std::fs::metadata(dir.path().join(KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(SecretBox::load(None, dir.path()).unwrap().open(&sealed).unwrap(), "s");
        let given = hex::encode([1u8; 32]);
        let b = SecretBox::load(Some(&given), dir.path()).unwrap();
        assert!(b.open(&sealed).is_err(), "the environment's key wins over the file");
        assert!(matches!(
            SecretBox::load(Some("xyz"), dir.path()),
            Err(SecretsError::BadKey)
        ));
    }
}
