//! The host's ed25519 sealing key: made on first start, kept as a 0600
//! file of the 32-byte seed in hex, its public half beside it.
use std::{
    fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};

const SECRET: &str = "host.ed25519";
const PUBLIC: &str = "host.ed25519.pub";

/// The secret key file holds one line of hex (64 digits); anything bigger
/// is not one, and must not be read whole.
const SECRET_MAX_BYTES: u64 = 4096;

/// What a seal signs: the format, the session and its final hash, so a
/// seal cannot be moved to another session; and whether the gateway put
/// it on after a crash, with the reason it gave, so such a seal cannot
/// pass for a session's end and its reason (a torn line cut off, say)
/// cannot be reworded. The reason comes last: it may hold any text.
fn message(session: &str, final_hash: &str, recovered: Option<&str>) -> Vec<u8> {
    match recovered {
        None => format!("chokepoint-seal-v1\n{session}\n{final_hash}"),
        Some(reason) => format!("chokepoint-seal-v2\n{session}\n{final_hash}\nrecovered\n{reason}"),
    }
    .into_bytes()
}

pub struct HostKey {
    key: SigningKey,
}

impl HostKey {
    /// Loads the key in `dir`, or makes one (and the directory, 0700).
    pub fn load_or_create(dir: &Path) -> Result<HostKey, String> {
        let secret = dir.join(SECRET);
        // A regular file only, and bounded: a FIFO put there must not
        // hang the daemon's start, nor a sparse huge file take its memory.
        match crate::regular_file::read_bounded(&secret, SECRET_MAX_BYTES) {
            Ok(bytes) => {
                let seed: [u8; 32] = std::str::from_utf8(&bytes)
                    .ok()
                    .and_then(|text| hex::decode(text.trim()).ok())
                    .and_then(|b| b.try_into().ok())
                    .ok_or_else(|| {
                        format!(
                            "{} is not a 64-hex-digit ed25519 seed: restore it, or move it away to make a new key (old recordings then verify only with --public-key)",
                            secret.display()
                        )
                    })?;
                let key = HostKey {
                    key: SigningKey::from_bytes(&seed),
                };
                key.restore_public(dir)?;
                Ok(key)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Self::create(dir),
            Err(e) => Err(format!("cannot read {}: {e}", secret.display())),
        }
    }

    fn create(dir: &Path) -> Result<HostKey, String> {
        make_private_dir(dir)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| format!("no randomness for a key: {e}"))?;
        let key = SigningKey::from_bytes(&seed);
        let secret = dir.join(SECRET);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&secret)
            .map_err(|e| format!("cannot create {}: {e}", secret.display()))?;
        writeln!(file, "{}", hex::encode(seed))
            .and_then(|()| file.sync_all())
            .map_err(|e| format!("cannot write {}: {e}", secret.display()))?;
        let public = dir.join(PUBLIC);
        fs::write(
            &public,
            format!("{}\n", hex::encode(key.verifying_key().as_bytes())),
        )
        .map_err(|e| format!("cannot write {}: {e}", public.display()))?;
        Ok(HostKey { key })
    }

    /// Rewrites the public key file when it is missing or does not match
    /// the secret (a power loss right after the key was made): `verify`
    /// trusts what it says.
    fn restore_public(&self, dir: &Path) -> Result<(), String> {
        let public = dir.join(PUBLIC);
        let expected = format!("{}\n", self.public_hex());
        // Bounded, regular files only: a FIFO there must not hang the
        // start; it is then replaced like any file that does not match.
        if crate::regular_file::read_bounded(&public, PUBLIC_MAX_BYTES)
            .is_ok_and(|t| t == expected.as_bytes())
        {
            return Ok(());
        }
        let tmp = dir.join(format!("{PUBLIC}.new"));
        // Whatever a crash (or anyone) left there goes first: opening a
        // FIFO to write would wait for a reader forever.
        let _ = fs::remove_file(&tmp);
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .and_then(|mut f| {
                f.write_all(expected.as_bytes())?;
                f.sync_all()
            })
            .and_then(|()| fs::rename(&tmp, &public))
            .map_err(|e| format!("cannot write {}: {e}", public.display()))
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }

    /// The seal of a session that ended.
    pub fn sign(&self, session: &str, final_hash: &str) -> String {
        self.sign_bytes(&message(session, final_hash, None))
    }

    /// The seal of a session the gateway stopped in the middle of, and why.
    pub fn sign_recovered(&self, session: &str, final_hash: &str, reason: &str) -> String {
        self.sign_bytes(&message(session, final_hash, Some(reason)))
    }

    pub(super) fn sign_bytes(&self, message: &[u8]) -> String {
        hex::encode(self.key.sign(message).to_bytes())
    }
}

/// Makes `dir` (its parents as usual) with mode 0700 for a new key; a
/// directory that already exists must be owned by this process's user and
/// closed to everyone else, or the key is not made there. It is refused
/// rather than chmodded: whoever else can write the directory can swap
/// the key for one they know and forge seals, and a key made there would
/// seem safe while it is not; quietly tightening a directory someone
/// chose (which may be shared, or owned by someone else) would hide that,
/// and could break whatever else uses it.
fn make_private_dir(dir: &Path) -> Result<(), String> {
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    match fs::DirBuilder::new().mode(0o700).create(dir) {
        // The umask can only take bits away from 0700.
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let meta = fs::metadata(dir).map_err(|e| format!("cannot read {}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!(
            "{} is not a directory: keys_dir must name one for the host signing key",
            dir.display()
        ));
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(format!(
            "{} is owned by uid {}, not by the gateway's user (uid {me}): its owner could replace the host signing key; chown it, or point keys_dir at a new directory",
            dir.display(),
            meta.uid()
        ));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(format!(
            "{} is open to other users (mode {mode:04o}): the host signing key must be kept where only the gateway's user can read or replace it; chmod 700 it, or point keys_dir at a new directory",
            dir.display()
        ));
    }
    Ok(())
}

/// The host's private key file in `dir`: where it is, the ledger's head is
/// too (the gateway writes both at its first start).
pub fn private_key_path(dir: &Path) -> PathBuf {
    dir.join(SECRET)
}

/// The public key file in `dir`, as hex.
pub fn public_key_path(dir: &Path) -> PathBuf {
    dir.join(PUBLIC)
}

/// A public key file holds one line of hex; anything bigger is not one.
const PUBLIC_MAX_BYTES: u64 = 4096;

/// Reads a public key from `path`, checked, as lowercase hex.
pub fn read_public(path: &Path) -> Result<String, String> {
    let bytes =
        crate::regular_file::read_bounded(path, PUBLIC_MAX_BYTES).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => format!(
                "cannot read {}: {e} (the key is made when the gateway first starts)",
                path.display()
            ),
            _ => format!("cannot read {}: {e}", path.display()),
        })?;
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| parse_public(text.trim()))
        .ok_or_else(|| {
            format!(
                "{} does not hold a 64-hex-digit ed25519 public key: the gateway rewrites it from the host key at its next start",
                path.display()
            )
        })
}

/// A public key as hex of either case, checked to be an ed25519 key and
/// given back in lowercase: seals and ledger lines name keys that way, and
/// trust is decided by comparing those strings.
pub fn parse_public(text: &str) -> Option<String> {
    let bytes: [u8; 32] = hex::decode(text).ok()?.try_into().ok()?;
    VerifyingKey::from_bytes(&bytes).ok()?;
    Some(hex::encode(bytes))
}

/// Whether `signature` (hex) seals `final_hash` of `session` under
/// `public` (hex), as a session's end or, with `recovered` (its reason),
/// after a crash.
pub fn verify(
    public: &str,
    session: &str,
    final_hash: &str,
    recovered: Option<&str>,
    signature: &str,
) -> bool {
    verify_bytes(public, &message(session, final_hash, recovered), signature)
}

/// Whether `signature` (hex) signs `message` under `public` (hex).
pub(super) fn verify_bytes(public: &str, message: &[u8], signature: &str) -> bool {
    let Some(key) = hex::decode(public)
        .ok()
        .and_then(|b| <[u8; 32]>::try_from(b).ok())
        .and_then(|b| VerifyingKey::from_bytes(&b).ok())
    else {
        return false;
    };
    let Some(signature) = hex::decode(signature)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b))
    else {
        return false;
    };
    key.verify(message, &signature).is_ok()
}
