//! Anchored heads: what the chain's head was, remembered outside the database.
//!
//! The hash chain shows an edit, but whoever can write the database can delete the newest
//! records or recompute every hash after an edit, and the chain is consistent again. So
//! every recorded run appends the head it produced (`SEQ HASH UNIX_S`, one line, `O_APPEND`
//! and `fsync`) to an anchor file kept apart from the ledger, one file per ledger location
//! (see [`anchor_dir`]). `memwarden ledger verify` then checks that every anchored record
//! is still in the chain with the same hash, and that the chain has not shrunk below the
//! highest anchored sequence number.
//!
//! An anchor file only proves what this machine wrote; [`ExpectedHead`] (`verify
//! --expect-head SEQ:HASH`) checks a head kept anywhere else (a CI log, a release note),
//! which is how a shared PostgreSQL ledger with writers on many machines is anchored.
//!
//! Whoever can write the anchor file too can make it agree with a rewritten chain. With a
//! team key ([`crate::signing`]), each line also carries the head's signature
//! (`SEQ HASH UNIX_S SIGNATURE`), and [`check_signatures`] keeps only the lines signed by
//! one of the team's public keys for this very ledger. [`anchor_head`] anchors a new head,
//! signed when `MEMWARDEN_LEDGER_KEY` names a key (used by `run` and `ledger sync`).

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::chain::StoredEntry;
use crate::signing::{self, HeadSignature, KeyError, PublicKey, SecretKey};
use crate::store::LedgerLocation;

/// Why an anchor could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum AnchorError {
    /// The anchor file (or its directory) cannot be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The anchor file or directory.
        path: PathBuf,
        /// What the system said.
        source: io::Error,
    },
}

/// The directory holding anchor files: `$MEMWARDEN_ANCHOR_DIR`, else `anchors/` in
/// `$MEMWARDEN_HOME`, else `$XDG_STATE_HOME/memwarden/anchors`, else
/// `~/.local/state/memwarden/anchors`. It is apart from the default ledger (in the data
/// directory) so that replacing the data directory does not replace the anchors.
pub fn anchor_dir() -> PathBuf {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(dir) = var("MEMWARDEN_ANCHOR_DIR") {
        return PathBuf::from(dir);
    }
    if let Some(home) = var("MEMWARDEN_HOME") {
        return PathBuf::from(home).join("anchors");
    }
    if let Some(state) = var("XDG_STATE_HOME") {
        return PathBuf::from(state).join("memwarden/anchors");
    }
    let home = var("HOME").map_or_else(|| PathBuf::from("."), PathBuf::from);
    home.join(".local/state/memwarden/anchors")
}

/// The identity a ledger's anchors are filed under: the canonical path of an SQLite file,
/// or a PostgreSQL URL reduced to `postgres://HOST:PORT/DB` (no user, password or options,
/// so that every user of a shared ledger on this machine files its heads together).
pub fn ledger_identity(location: &LedgerLocation) -> String {
    match location {
        LedgerLocation::Sqlite(path) => {
            let canonical = fs::canonicalize(path)
                .or_else(|_| std::path::absolute(path))
                .unwrap_or_else(|_| path.clone());
            format!("sqlite://{}", canonical.display())
        }
        LedgerLocation::Postgres(url) => {
            let rest = url.split_once("://").map_or(url.as_str(), |(_, rest)| rest);
            let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
            let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
            let (host, database) = rest.split_once('/').unwrap_or((rest, ""));
            let host = host.to_ascii_lowercase();
            let host = if host.rsplit_once(':').is_some_and(|(_, port)| {
                !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit())
            }) {
                host
            } else {
                format!("{host}:5432")
            };
            format!("postgres://{host}/{database}")
        }
    }
}

/// One anchored head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Anchor {
    /// Sequence number of the record that was the head.
    pub seq: i64,
    /// Its hash.
    pub hash: String,
    /// When it was anchored, seconds since the Unix epoch (not signed).
    pub at_unix_s: u64,
    /// The head's signature, when the run that anchored it had a signing key.
    pub signature: Option<HeadSignature>,
    /// Its line in the anchor file (1-based; 0 when not read from a file).
    pub line: usize,
}

/// The anchor file of one ledger.
#[derive(Debug, Clone)]
pub struct AnchorFile {
    path: PathBuf,
    identity: String,
}

/// What an anchor file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnchorLog {
    /// The anchors, in file order.
    pub anchors: Vec<Anchor>,
    /// Lines that are not `SEQ HASH UNIX_S [SIGNATURE]` (1-based line number, text).
    pub malformed: Vec<(usize, String)>,
}

impl AnchorFile {
    /// The anchor file of `location` in [`anchor_dir`].
    pub fn for_ledger(location: &LedgerLocation) -> AnchorFile {
        AnchorFile::in_dir(&anchor_dir(), location)
    }

    /// The anchor file of `location` in `dir`.
    pub fn in_dir(dir: &Path, location: &LedgerLocation) -> AnchorFile {
        let identity = ledger_identity(location);
        let digest = blake3::hash(identity.as_bytes()).to_hex();
        AnchorFile {
            path: dir.join(format!("{}.anchors", &digest[..32])),
            identity,
        }
    }

    /// Where the file is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The ledger's identity ([`ledger_identity`]), which signed heads name.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Appends `seq hash now` as one line (with the head's signature as a fourth field when
    /// `signer` is given), creating the file (with a header naming the ledger) and its
    /// directory when missing, and syncs it to disk. Returns the signature written.
    pub fn append(
        &self,
        seq: i64,
        hash: &str,
        signer: Option<&SecretKey>,
    ) -> Result<Option<HeadSignature>, AnchorError> {
        let io_error = |path: &Path| {
            let path = path.to_owned();
            move |source| AnchorError::Io { path, source }
        };
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        let mut file = fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o644)
            .open(&self.path)
            .map_err(io_error(&self.path))?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        // One write per line: O_APPEND keeps concurrent runs' lines whole and apart. The
        // header is written by whoever finds the file empty; a second header is harmless.
        let mut text = String::new();
        if file.metadata().map_err(io_error(&self.path))?.len() == 0 {
            text.push_str(&format!(
                "# memwarden ledger heads of {} (SEQ HASH UNIX_S [SIGNATURE]), append-only\n",
                self.identity
            ));
        }
        let signature = signer.map(|key| key.sign_head(&self.identity, seq, hash));
        match &signature {
            Some(signature) => text.push_str(&format!("{seq} {hash} {now} {signature}\n")),
            None => text.push_str(&format!("{seq} {hash} {now}\n")),
        }
        file.write_all(text.as_bytes())
            .and_then(|()| file.sync_all())
            .map_err(io_error(&self.path))?;
        Ok(signature)
    }

    /// The anchors, or `None` when there is no anchor file.
    pub fn read(&self) -> Result<Option<AnchorLog>, AnchorError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(AnchorError::Io {
                    path: self.path.clone(),
                    source,
                })
            }
        };
        let mut log = AnchorLog::default();
        for (index, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match parse_line(line, index + 1) {
                Some(anchor) => log.anchors.push(anchor),
                None => log.malformed.push((index + 1, line.to_owned())),
            }
        }
        Ok(Some(log))
    }
}

fn parse_line(text: &str, line: usize) -> Option<Anchor> {
    let mut fields = text.split_ascii_whitespace();
    let seq = fields.next()?.parse().ok().filter(|&seq: &i64| seq >= 1)?;
    let hash = fields.next().filter(|h| is_hash(h))?.to_owned();
    let at_unix_s = fields.next()?.parse().ok()?;
    let signature = match fields.next() {
        Some(field) => Some(HeadSignature::parse(field)?),
        None => None,
    };
    if fields.next().is_some() {
        return None;
    }
    Some(Anchor {
        seq,
        hash,
        at_unix_s,
        signature,
        line,
    })
}

fn is_hash(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What the anchors say about a chain.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AnchorCheck {
    /// Anchors checked.
    pub anchored: usize,
    /// The highest anchored head.
    pub highest: Option<Anchor>,
    /// Every contradiction between the anchors and the chain, in sentences.
    pub problems: Vec<String>,
}

/// Checks `anchors` against `entries` (in `seq` order): each anchored record must still be
/// there with its anchored hash, and the chain must reach the highest anchored record.
pub fn check(anchors: &[Anchor], entries: &[StoredEntry]) -> AnchorCheck {
    let head_seq = entries.last().map_or(0, |e| e.seq);
    let highest = anchors.iter().max_by_key(|a| a.seq).cloned();
    let mut problems = Vec::new();
    if let Some(top) = highest.as_ref().filter(|top| top.seq > head_seq) {
        let missing = match top.seq - head_seq {
            1 => "1 record is".to_owned(),
            n => format!("{n} records are"),
        };
        problems.push(format!(
            "the chain ends at record #{head_seq}, but record #{} was anchored {}: {missing} missing from the end (deleted: the ledger was truncated); last anchored head {}:{}",
            top.seq,
            when(top.at_unix_s),
            top.seq,
            top.hash
        ));
    }
    let mut rewritten: Vec<&Anchor> = Vec::new();
    let mut gone: Vec<&Anchor> = Vec::new();
    for anchor in anchors.iter().filter(|a| a.seq <= head_seq) {
        match entries.binary_search_by_key(&anchor.seq, |e| e.seq) {
            Ok(index) if entries[index].hash == anchor.hash => {}
            Ok(_) => rewritten.push(anchor),
            Err(_) => gone.push(anchor),
        }
    }
    if let Some(first) = rewritten.iter().min_by_key(|a| a.seq) {
        let stored = entries
            .binary_search_by_key(&first.seq, |e| e.seq)
            .map_or("", |i| entries[i].hash.as_str());
        problems.push(format!(
            "{} anchored head(s) no longer match the chain (it was recomputed after an edit, or replaced): record #{} was anchored {} as {} but now has hash {stored}",
            rewritten.len(),
            first.seq,
            when(first.at_unix_s),
            first.hash,
        ));
    }
    for anchor in gone {
        problems.push(format!(
            "record #{} was anchored {} as {} but is no longer in the chain (deleted)",
            anchor.seq,
            when(anchor.at_unix_s),
            anchor.hash
        ));
    }
    AnchorCheck {
        anchored: anchors.len(),
        highest,
        problems,
    }
}

fn when(at_unix_s: u64) -> String {
    format!("at unix time {at_unix_s}")
}

/// What the team's public keys say about an anchor file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignatureCheck {
    /// The anchors signed by one of the keys for this ledger: the only ones to trust.
    pub trusted: Vec<Anchor>,
    /// One sentence per other anchor line, naming its line, its record and why.
    pub problems: Vec<String>,
}

/// Splits `anchors` into those signed by one of `keys` for the ledger `identity` and the
/// rest (unsigned, signed by another key or for another ledger, or altered).
pub fn check_signatures(anchors: &[Anchor], identity: &str, keys: &[PublicKey]) -> SignatureCheck {
    let mut check = SignatureCheck::default();
    for anchor in anchors {
        match signing::signature_problem(
            keys,
            identity,
            anchor.seq,
            &anchor.hash,
            anchor.signature.as_ref(),
        ) {
            None => check.trusted.push(anchor.clone()),
            Some(why) => check.problems.push(format!(
                "anchor line {} (record #{}, {}:{}) is not a signed head: {why}",
                anchor.line, anchor.seq, anchor.seq, anchor.hash
            )),
        }
    }
    check
}

/// `--expect-head SEQ:HASH[:SIGNATURE]`: record `seq` has `hash` (and the head was signed
/// by a team key, when a signature is given).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedHead {
    /// Sequence number.
    pub seq: i64,
    /// Full hash (64 hex digits).
    pub hash: String,
    /// The head's signature, as a run with `MEMWARDEN_LEDGER_KEY` prints it.
    pub signature: Option<HeadSignature>,
}

impl ExpectedHead {
    /// Parses `SEQ:HASH` or `SEQ:HASH:SIGNATURE` as printed by `memwarden run` and
    /// `ledger verify`.
    pub fn parse(text: &str) -> Result<ExpectedHead, String> {
        let (seq, hash) = text
            .trim()
            .split_once(':')
            .ok_or_else(|| format!("'{text}' is not SEQ:HASH (e.g. 42:3fa9…, the full 64-digit hash printed by `memwarden run` or `memwarden ledger verify`)"))?;
        let (hash, signature) = match hash.split_once(':') {
            Some((hash, signature)) => (
                hash,
                Some(HeadSignature::parse(signature).ok_or_else(|| {
                    format!("the signature in '{text}' is not 128 hex digits: give the whole SEQ:HASH:SIGNATURE a signing run printed")
                })?),
            ),
            None => (hash, None),
        };
        let seq: i64 = seq
            .parse()
            .ok()
            .filter(|&s| s >= 1)
            .ok_or_else(|| format!("'{seq}' in '{text}' is not a record number (1 or more)"))?;
        let hash = hash.to_ascii_lowercase();
        if !is_hash(&hash) {
            return Err(format!(
                "'{hash}' in '{text}' is not a full hash: give all 64 hex digits, as `memwarden run` and `memwarden ledger verify` print them"
            ));
        }
        Ok(ExpectedHead {
            seq,
            hash,
            signature,
        })
    }

    /// `None` when record `seq` of `entries` has the expected hash, else why not.
    pub fn mismatch(&self, entries: &[StoredEntry]) -> Option<String> {
        match entries.binary_search_by_key(&self.seq, |e| e.seq) {
            Ok(index) if entries[index].hash == self.hash => None,
            Ok(index) => Some(format!(
                "record #{} has hash {}, not the expected {}: the chain was rewritten, or this is another ledger",
                self.seq, entries[index].hash, self.hash
            )),
            Err(_) => Some(format!(
                "record #{} is not in the ledger (it has {} record(s), the last #{}): it was deleted, or this is another ledger",
                self.seq,
                entries.len(),
                entries.last().map_or(0, |e| e.seq)
            )),
        }
    }
}

pub use crate::signing::LEDGER_KEY_VAR;

/// What anchoring a head did.
#[derive(Debug, Default)]
pub struct Anchored {
    /// The head's signature, when `MEMWARDEN_LEDGER_KEY` names a usable key (also when the
    /// anchor file could not be written: the printed head still carries it).
    pub signature: Option<HeadSignature>,
    /// What was not protected and what to do, one sentence each, for stderr.
    pub warnings: Vec<String>,
}

impl Anchored {
    /// `SEQ:HASH`, or `SEQ:HASH:SIGNATURE` when signed: what `--expect-head` takes.
    pub fn head(&self, seq: i64, hash: &str) -> String {
        match &self.signature {
            Some(signature) => format!("{seq}:{hash}:{signature}"),
            None => format!("{seq}:{hash}"),
        }
    }
}

/// The signing key named by `MEMWARDEN_LEDGER_KEY` (unset or empty: none).
fn signing_key() -> Result<Option<SecretKey>, KeyError> {
    match std::env::var_os(LEDGER_KEY_VAR).filter(|v| !v.is_empty()) {
        Some(path) => SecretKey::read(Path::new(&path)).map(Some),
        None => Ok(None),
    }
}

/// Appends the head to the ledger's anchor file, signed when `MEMWARDEN_LEDGER_KEY` names
/// a key. Never fails: what could not be done comes back as warnings saying what was not
/// protected and what to do (a key that cannot be used leaves an unsigned line, loudly).
pub fn anchor_head(location: &LedgerLocation, seq: i64, hash: &str) -> Anchored {
    let file = AnchorFile::for_ledger(location);
    let mut anchored = Anchored::default();
    let key = match signing_key() {
        Ok(key) => key,
        Err(error) => {
            anchored.warnings.push(format!(
                "{LEDGER_KEY_VAR}: cannot use the signing key ({error}), so the ledger head {seq}:{hash} is anchored UNSIGNED and `memwarden ledger verify --public-key` will report its line: fix the key file (`memwarden ledger keygen` writes one) or unset {LEDGER_KEY_VAR}"
            ));
            None
        }
    };
    match file.append(seq, hash, key.as_ref()) {
        Ok(signature) => anchored.signature = signature,
        Err(error) => {
            anchored.signature = key.map(|key| key.sign_head(file.identity(), seq, hash));
            anchored.warnings.push(format!(
                "cannot anchor the ledger head {} in {}: {error}. Without it, `memwarden ledger verify` cannot detect the deletion of this run or a recomputed chain: make {} writable or set MEMWARDEN_ANCHOR_DIR to a writable directory, and keep the head above (e.g. in the CI log) for `ledger verify --expect-head`",
                anchored.head(seq, hash),
                file.path().display(),
                file.path().parent().unwrap_or(file.path()).display(),
            ));
        }
    }
    anchored
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: i64, hash: &str) -> StoredEntry {
        StoredEntry {
            seq,
            run_id: format!("r{seq}"),
            model: "m".into(),
            version: "1".into(),
            stage: "train".into(),
            record_json: "{}".into(),
            prev_hash: String::new(),
            hash: hash.into(),
        }
    }

    fn h(c: char) -> String {
        std::iter::repeat_n(c, 64).collect()
    }

    #[test]
    fn anchors_round_trip_and_name_malformed_lines() {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = LedgerLocation::Sqlite(dir.path().join("l.sqlite"));
        let file = AnchorFile::in_dir(&dir.path().join("anchors"), &location);
        assert_eq!(file.read().expect("reads"), None, "no file yet");
        file.append(1, &h('a'), None).expect("append");
        file.append(2, &h('b'), None).expect("append");
        let mut raw = fs::OpenOptions::new()
            .append(true)
            .open(file.path())
            .expect("open");
        raw.write_all(b"3 nothex 5\n").expect("write");
        let log = file.read().expect("reads").expect("present");
        assert_eq!(
            log.anchors.iter().map(|a| a.seq).collect::<Vec<_>>(),
            [1, 2]
        );
        assert_eq!(log.malformed, [(4, "3 nothex 5".to_owned())]);
    }

    #[test]
    fn truncation_rewrites_and_deletions_are_named() {
        let anchors = |pairs: &[(i64, char)]| -> Vec<Anchor> {
            pairs
                .iter()
                .map(|&(seq, c)| Anchor {
                    seq,
                    hash: h(c),
                    at_unix_s: 7,
                    signature: None,
                    line: 0,
                })
                .collect()
        };
        let chain = [entry(1, &h('a')), entry(2, &h('b')), entry(3, &h('c'))];
        let fine = check(&anchors(&[(1, 'a'), (3, 'c')]), &chain);
        assert!(fine.problems.is_empty(), "{:?}", fine.problems);

        let truncated = check(&anchors(&[(1, 'a'), (5, 'e')]), &chain);
        assert_eq!(truncated.problems.len(), 1);
        assert!(
            truncated.problems[0].contains("2 records are missing from the end"),
            "{:?}",
            truncated.problems
        );

        let rewritten = check(&anchors(&[(2, 'x')]), &chain);
        assert!(rewritten.problems[0].contains("recomputed"));

        let gap = [entry(1, &h('a')), entry(3, &h('c'))];
        let gone = check(&anchors(&[(2, 'b')]), &gap);
        assert!(gone.problems[0].contains("#2"), "{:?}", gone.problems);
    }

    #[test]
    fn expected_heads_parse_strictly() {
        let good = ExpectedHead::parse(&format!("3:{}", h('A'))).expect("parses");
        assert_eq!((good.seq, good.hash.as_str()), (3, h('a').as_str()));
        assert!(ExpectedHead::parse("3").is_err());
        assert!(ExpectedHead::parse("0:aaaa").is_err());
        let short = ExpectedHead::parse("3:3fa9").expect_err("short");
        assert!(short.contains("64 hex digits"), "{short}");
        let chain = [entry(1, &h('a')), entry(3, &h('a'))];
        assert_eq!(good.mismatch(&chain), None);
        let missing = ExpectedHead::parse(&format!("2:{}", h('a'))).expect("parses");
        assert!(missing
            .mismatch(&chain)
            .is_some_and(|m| m.contains("not in the ledger")));
    }

    #[test]
    fn signed_anchors_round_trip_and_only_this_ledgers_keys_are_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = LedgerLocation::Sqlite(dir.path().join("l.sqlite"));
        let file = AnchorFile::in_dir(&dir.path().join("anchors"), &location);
        let team = SecretKey::generate().expect("key");
        let stranger = SecretKey::generate().expect("key");
        let signed = file.append(1, &h('a'), Some(&team)).expect("append");
        file.append(2, &h('b'), None).expect("append");
        file.append(3, &h('c'), Some(&stranger)).expect("append");
        // A line signed by the team key for another ledger, copied here.
        let other = AnchorFile::in_dir(
            &dir.path().join("anchors"),
            &LedgerLocation::Sqlite(dir.path().join("other.sqlite")),
        );
        let copied = team.sign_head(other.identity(), 4, &h('d'));
        let mut raw = fs::OpenOptions::new()
            .append(true)
            .open(file.path())
            .expect("open");
        raw.write_all(format!("4 {} 9 {copied}\n", h('d')).as_bytes())
            .expect("write");
        raw.write_all(format!("5 {} 9 {copied} extra\n5 {} 9 abc\n", h('e'), h('e')).as_bytes())
            .expect("write");
        let log = file.read().expect("reads").expect("present");
        assert_eq!(log.anchors.len(), 4);
        assert_eq!(log.anchors[0].signature, signed);
        assert_eq!(log.anchors[0].line, 2, "after the header");
        assert_eq!(
            log.malformed
                .iter()
                .map(|(line, _)| *line)
                .collect::<Vec<_>>(),
            [6, 7],
            "a fifth field, and a fourth that is no signature"
        );

        let keys = [stranger.public(), team.public()];
        let both = check_signatures(&log.anchors, file.identity(), &keys);
        assert_eq!(
            both.trusted.iter().map(|a| a.seq).collect::<Vec<_>>(),
            [1, 3],
            "either key of a rotation"
        );
        let team_only = check_signatures(&log.anchors, file.identity(), &[team.public()]);
        assert_eq!(
            team_only.trusted.iter().map(|a| a.seq).collect::<Vec<_>>(),
            [1]
        );
        assert_eq!(team_only.problems.len(), 3, "{:?}", team_only.problems);
        assert!(
            team_only.problems[0].starts_with("anchor line 3 (record #2,")
                && team_only.problems[0].contains("unsigned"),
            "{:?}",
            team_only.problems
        );
        assert!(team_only.problems[1].contains("signed by another key"));
        assert!(team_only.problems[2].starts_with("anchor line 5 (record #4,"));
    }

    #[test]
    fn expected_heads_may_carry_a_signature() {
        let team = SecretKey::generate().expect("key");
        let signature = team.sign_head("sqlite:///l", 3, &h('a'));
        let head = ExpectedHead::parse(&format!("3:{}:{signature}", h('a'))).expect("parses");
        assert_eq!(head.signature, Some(signature));
        assert_eq!(head.hash, h('a'));
        let bad = ExpectedHead::parse(&format!("3:{}:{}", h('a'), "ab")).expect_err("short");
        assert!(bad.contains("not 128 hex digits"), "{bad}");
    }

    #[test]
    fn postgres_identities_drop_credentials_and_options() {
        let id = |url: &str| ledger_identity(&LedgerLocation::Postgres(url.to_owned()));
        assert_eq!(
            id("postgresql://u:secret@DB.example:5433/ledger?sslmode=require"),
            "postgres://db.example:5433/ledger"
        );
        assert_eq!(
            id("postgres://db.example/ledger"),
            id("postgres://other@db.example:5432/ledger")
        );
    }
}
