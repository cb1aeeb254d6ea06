//! Signed heads: anchored heads signed with a team's ed25519 key, so that write access to
//! the database and to the anchor file is not enough to forge history.
//!
//! An anchor line proves only what the anchor file says, and whoever can write the
//! database can often write the anchor file too. A head signed with a secret key kept out
//! of their reach (a CI secret) cannot be forged: `memwarden ledger verify --public-key`
//! refuses anchor lines that are unsigned or signed by another key, or for another ledger.
//!
//! The signed message is domain-separated and names the ledger, so a head cannot be
//! replayed onto another ledger, and a signature made for anything else is never a head's:
//!
//! ```text
//! memwarden-ledger-head/1\n<ledger identity>\n<seq>\n<hash>
//! ```
//!
//! Key files are one line of text (comment lines starting with `#` and blank lines aside):
//! `memwarden-ed25519-secret-v1 <64 hex digits>` (the 32-byte ed25519 seed) and
//! `memwarden-ed25519-public-v1 <64 hex digits>` (the 32-byte public key).

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

/// The environment variable naming the secret key file that signs anchored heads.
pub const LEDGER_KEY_VAR: &str = "MEMWARDEN_LEDGER_KEY";
/// The first word of a secret key file's key line.
pub const SECRET_TAG: &str = "memwarden-ed25519-secret-v1";
/// The first word of a public key file's key line.
pub const PUBLIC_TAG: &str = "memwarden-ed25519-public-v1";
/// The first line of every signed message: what is signed, and the format's version.
pub const HEAD_DOMAIN: &str = "memwarden-ledger-head/1";

/// Why a key could not be made, read or written.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The file cannot be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The key file.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
    /// The file is not a key of the expected kind.
    #[error("{path}: {problem}")]
    Malformed {
        /// The key file.
        path: PathBuf,
        /// What is wrong, and what a good file looks like.
        problem: String,
    },
    /// keygen refuses to replace a key.
    #[error("{path} already exists: a key is never overwritten (a lost secret key cannot be recovered); move it away or choose another path")]
    Exists {
        /// The existing file.
        path: PathBuf,
    },
    /// The system's random source failed.
    #[error("cannot draw random bytes for a key: {0}")]
    Random(String),
}

/// A secret signing key. Its `Debug` never shows the key.
pub struct SecretKey(SigningKey);

/// A public key, which checks heads signed by its secret key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(VerifyingKey);

/// A head's ed25519 signature, written as 128 lowercase hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HeadSignature([u8; 64]);

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretKey(public {})", self.public().fingerprint())
    }
}

/// The message a head's signature is made over.
pub fn head_message(identity: &str, seq: i64, hash: &str) -> Vec<u8> {
    format!("{HEAD_DOMAIN}\n{identity}\n{seq}\n{hash}").into_bytes()
}

impl SecretKey {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<SecretKey, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(SecretKey(SigningKey::from_bytes(&seed)))
    }

    /// Parses a secret key file's text.
    pub fn parse(text: &str) -> Result<SecretKey, String> {
        let bytes = parse_key_text(text, SECRET_TAG, PUBLIC_TAG, "secret", "public")?;
        Ok(SecretKey(SigningKey::from_bytes(&bytes)))
    }

    /// Reads a secret key file.
    pub fn read(path: &Path) -> Result<SecretKey, KeyError> {
        let text = read_key_file(path)?;
        SecretKey::parse(&text).map_err(|problem| KeyError::Malformed {
            path: path.to_owned(),
            problem,
        })
    }

    /// The key file's text.
    pub fn to_text(&self) -> String {
        format!(
            "# memwarden ledger signing key (SECRET): keep it in a CI secret, never in a repository\n{SECRET_TAG} {}\n",
            to_hex(&self.0.to_bytes())
        )
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// Signs head `seq`:`hash` of the ledger named `identity`.
    pub fn sign_head(&self, identity: &str, seq: i64, hash: &str) -> HeadSignature {
        HeadSignature(self.0.sign(&head_message(identity, seq, hash)).to_bytes())
    }
}

impl PublicKey {
    /// Parses a public key file's text.
    pub fn parse(text: &str) -> Result<PublicKey, String> {
        let bytes = parse_key_text(text, PUBLIC_TAG, SECRET_TAG, "public", "secret")?;
        let key = VerifyingKey::from_bytes(&bytes)
            .map_err(|_| "the key is not a point of the ed25519 curve: the file was damaged; copy it again from where the key pair was made".to_owned())?;
        if key.is_weak() {
            return Err("the key is a weak (small-order) ed25519 key, which would accept forged signatures: make a new key pair with `memwarden ledger keygen`".to_owned());
        }
        Ok(PublicKey(key))
    }

    /// Reads a public key file.
    pub fn read(path: &Path) -> Result<PublicKey, KeyError> {
        let text = read_key_file(path)?;
        PublicKey::parse(&text).map_err(|problem| KeyError::Malformed {
            path: path.to_owned(),
            problem,
        })
    }

    /// The key file's text.
    pub fn to_text(&self) -> String {
        format!(
            "# memwarden ledger public key: commit it, and check heads with `memwarden ledger verify --public-key FILE`\n{PUBLIC_TAG} {}\n",
            to_hex(self.0.as_bytes())
        )
    }

    /// A short name for messages: the first 16 hex digits of the key.
    pub fn fingerprint(&self) -> String {
        to_hex(&self.0.as_bytes()[..8])
    }

    /// Whether `signature` is this key's over head `seq`:`hash` of ledger `identity`
    /// (strict verification: no malleable or small-order signatures).
    pub fn verifies(
        &self,
        identity: &str,
        seq: i64,
        hash: &str,
        signature: &HeadSignature,
    ) -> bool {
        self.0
            .verify_strict(
                &head_message(identity, seq, hash),
                &Signature::from_bytes(&signature.0),
            )
            .is_ok()
    }
}

impl HeadSignature {
    /// Parses 128 hex digits (either case).
    pub fn parse(text: &str) -> Option<HeadSignature> {
        let mut bytes = [0u8; 64];
        from_hex(text, &mut bytes)?;
        Some(HeadSignature(bytes))
    }
}

impl fmt::Display for HeadSignature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&to_hex(&self.0))
    }
}

/// Why a signed head does not verify with any of `keys`, or `None` when one of them
/// signed it for this ledger.
pub fn signature_problem(
    keys: &[PublicKey],
    identity: &str,
    seq: i64,
    hash: &str,
    signature: Option<&HeadSignature>,
) -> Option<String> {
    let Some(signature) = signature else {
        return Some(
            format!("it is unsigned (written by a run without {LEDGER_KEY_VAR}, or forged by someone without the key)"),
        );
    };
    if keys
        .iter()
        .any(|key| key.verifies(identity, seq, hash, signature))
    {
        return None;
    }
    let fingerprints: Vec<String> = keys.iter().map(PublicKey::fingerprint).collect();
    Some(format!(
        "its signature does not verify with the given public key(s) {} for this ledger ({identity}): it was signed by another key, copied from another ledger's anchors, or altered",
        fingerprints.join(", ")
    ))
}

/// Writes a new key pair: the secret key with mode 0600, the public key with mode 0644.
/// Neither file may exist; when the public key cannot be written, the secret key just
/// written is removed, so that no half pair is left.
pub fn write_key_pair(secret_path: &Path, public_path: &Path) -> Result<PublicKey, KeyError> {
    for path in [secret_path, public_path] {
        if path.symlink_metadata().is_ok() {
            return Err(KeyError::Exists {
                path: path.to_owned(),
            });
        }
    }
    let secret = SecretKey::generate()?;
    let public = secret.public();
    write_new(secret_path, &secret.to_text(), 0o600)?;
    if let Err(error) = write_new(public_path, &public.to_text(), 0o644) {
        let _ = fs::remove_file(secret_path);
        return Err(error);
    }
    Ok(public)
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), KeyError> {
    let io_error = |source: io::Error| {
        if source.kind() == io::ErrorKind::AlreadyExists {
            KeyError::Exists {
                path: path.to_owned(),
            }
        } else {
            KeyError::Io {
                path: path.to_owned(),
                source,
            }
        }
    };
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_error)?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .map_err(io_error)
}

fn read_key_file(path: &Path) -> Result<String, KeyError> {
    let bytes = fs::read(path).map_err(|source| KeyError::Io {
        path: path.to_owned(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| KeyError::Malformed {
        path: path.to_owned(),
        problem: "not text: a key file is one line, e.g. written by `memwarden ledger keygen`"
            .to_owned(),
    })
}

/// The 32 key bytes of the one key line `TAG HEX`.
fn parse_key_text(
    text: &str,
    tag: &str,
    other_tag: &str,
    kind: &str,
    other_kind: &str,
) -> Result<[u8; 32], String> {
    let mut lines = text
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'));
    let line = lines.next().ok_or_else(|| {
        format!("no key in the file: expected one line '{tag} <64 hex digits>', as `memwarden ledger keygen` writes")
    })?;
    if lines.next().is_some() {
        return Err(format!(
            "more than one key line: a {kind} key file holds one line '{tag} <64 hex digits>'"
        ));
    }
    let mut fields = line.split_ascii_whitespace();
    let found_tag = fields.next().unwrap_or_default();
    if found_tag == other_tag {
        return Err(format!(
            "this is a {other_kind} key, not a {kind} key: {}",
            if kind == "secret" {
                format!("{LEDGER_KEY_VAR} names the secret key file (`memwarden ledger keygen` writes both)")
            } else {
                "--public-key takes the public key file; never hand the secret key to a verifier"
                    .to_owned()
            }
        ));
    }
    if found_tag != tag {
        return Err(format!(
            "the key line starts with '{}', not '{tag}': not a memwarden {kind} key (expected '{tag} <64 hex digits>')",
            found_tag.chars().take(40).collect::<String>()
        ));
    }
    let hex = fields.next().unwrap_or_default();
    if fields.next().is_some() {
        return Err(format!(
            "the key line has more than two fields: expected '{tag} <64 hex digits>'"
        ));
    }
    let mut bytes = [0u8; 32];
    from_hex(hex, &mut bytes).ok_or_else(|| {
        format!(
            "the key is not 64 hex digits (it has {} characters): the file was cut or altered; copy it again from where the key pair was made",
            hex.chars().count()
        )
    })?;
    Ok(bytes)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn from_hex(text: &str, out: &mut [u8]) -> Option<()> {
    let digits = text.as_bytes();
    if digits.len() != out.len() * 2 {
        return None;
    }
    let value = |d: u8| (d as char).to_digit(16).map(|v| v as u8);
    for (byte, pair) in out.iter_mut().zip(digits.chunks_exact(2)) {
        *byte = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const HASH: &str = "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";

    #[test]
    fn keys_round_trip_through_their_text_and_sign_heads_for_one_ledger() {
        let secret = SecretKey::generate().expect("random");
        let again = SecretKey::parse(&secret.to_text()).expect("secret parses");
        let public = PublicKey::parse(&secret.public().to_text()).expect("public parses");
        assert_eq!(again.public(), public);
        let signature = secret.sign_head("sqlite:///l", 3, HASH);
        let text = signature.to_string();
        assert_eq!(text.len(), 128);
        let parsed = HeadSignature::parse(&text.to_ascii_uppercase()).expect("parses");
        assert_eq!(parsed, signature);
        assert!(public.verifies("sqlite:///l", 3, HASH, &parsed));
        assert!(
            !public.verifies("sqlite:///other", 3, HASH, &parsed),
            "another ledger"
        );
        assert!(
            !public.verifies("sqlite:///l", 4, HASH, &parsed),
            "another seq"
        );
        assert!(!public.verifies("sqlite:///l", 3, &HASH.replace('a', "b"), &parsed));
        let stranger = SecretKey::generate().expect("random").public();
        assert!(!stranger.verifies("sqlite:///l", 3, HASH, &parsed));
        assert_eq!(
            signature_problem(
                &[stranger.clone(), public.clone()],
                "sqlite:///l",
                3,
                HASH,
                Some(&parsed)
            ),
            None,
            "any of several keys (rotation)"
        );
        let problem = signature_problem(&[stranger], "sqlite:///l", 3, HASH, Some(&parsed))
            .expect("another key");
        assert!(problem.contains("signed by another key"), "{problem}");
        let problem = signature_problem(&[public], "sqlite:///l", 3, HASH, None).expect("unsigned");
        assert!(problem.contains("unsigned"), "{problem}");
        assert!(HeadSignature::parse(&text[..126]).is_none());
        assert!(HeadSignature::parse(&format!("{}zz", &text[..126])).is_none());
    }

    #[test]
    fn the_message_is_domain_separated_and_names_the_ledger() {
        assert_eq!(
            head_message("postgres://db:5432/l", 7, "ab"),
            b"memwarden-ledger-head/1\npostgres://db:5432/l\n7\nab"
        );
    }

    #[test]
    fn malformed_keys_are_refused_with_what_is_wrong() {
        let secret = SecretKey::generate().expect("random");
        let public_text = secret.public().to_text();
        let secret_text = secret.to_text();
        let refused = |result: Result<(), String>| result.expect_err("refused");
        let as_secret = |t: &str| SecretKey::parse(t).map(drop);
        let as_public = |t: &str| PublicKey::parse(t).map(drop);
        assert!(refused(as_secret(&public_text)).contains("this is a public key, not a secret key"));
        assert!(refused(as_public(&secret_text)).contains("never hand the secret key"));
        assert!(refused(as_secret("")).contains("no key in the file"));
        assert!(refused(as_secret("# only a comment\n")).contains("no key in the file"));
        assert!(refused(as_secret("ssh-ed25519 AAAA")).contains("not a memwarden secret key"));
        let cut = &secret_text.trim_end()[..secret_text.trim_end().len() - 2];
        assert!(refused(as_secret(cut)).contains("not 64 hex digits"));
        assert!(
            refused(as_secret(&format!("{SECRET_TAG} {}", "g".repeat(64))))
                .contains("not 64 hex digits")
        );
        assert!(refused(as_secret(&format!("{secret_text}{secret_text}")))
            .contains("more than one key line"));
        assert!(
            refused(as_secret(&format!("{SECRET_TAG} {} extra", "0".repeat(64))))
                .contains("more than two fields")
        );
        // The identity point is a small-order (weak) key.
        let weak = format!("{PUBLIC_TAG} 01{}", "0".repeat(62));
        assert!(refused(as_public(&weak)).contains("weak"));
    }

    #[test]
    fn a_key_pair_is_written_private_and_never_overwritten() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (secret_path, public_path) = (dir.path().join("k"), dir.path().join("k.pub"));
        let public = write_key_pair(&secret_path, &public_path).expect("written");
        let mode = |p: &Path| fs::metadata(p).expect("exists").permissions().mode() & 0o777;
        assert_eq!(mode(&secret_path), 0o600);
        assert_eq!(PublicKey::read(&public_path).expect("reads"), public);
        assert_eq!(
            SecretKey::read(&secret_path).expect("reads").public(),
            public
        );
        let before = fs::read(&secret_path).expect("read");
        let refused = write_key_pair(&secret_path, &dir.path().join("other.pub"))
            .expect_err("an existing secret key is kept");
        assert!(matches!(refused, KeyError::Exists { .. }), "{refused}");
        assert_eq!(fs::read(&secret_path).expect("read"), before);
        assert!(!dir.path().join("other.pub").exists());

        // The public key cannot be written: no half pair is left.
        let lone = dir.path().join("lone");
        let error = write_key_pair(&lone, &dir.path().join("missing/dir/k.pub"))
            .expect_err("unwritable public key");
        assert!(matches!(error, KeyError::Io { .. }), "{error}");
        assert!(!lone.exists(), "the secret key of a half pair is removed");

        let error = SecretKey::read(&dir.path().join("absent")).expect_err("missing");
        assert!(error.to_string().contains("absent"), "{error}");
    }
}
