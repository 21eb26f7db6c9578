//! Where an instance's links and maps live on bpffs, and removing them.
use std::path::{Path, PathBuf};

use aya::programs::links::PinnedLink;
use nix::sys::statfs::{BPF_FS_MAGIC, statfs};

use super::EbpfError;

/// Root of all instances.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
const PRODUCT_DIR: &str = "chokepoint";

/// What an instance name may be, for messages that reject one.
pub const INSTANCE_NAME_RULE: &str = "1 to 32 characters among a-z, 0-9, \"_\" and \"-\"";

/// Whether `name` can name an instance. The name becomes a path component
/// under the pin root, so anything else could reach outside it.
pub fn is_instance_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-')
}

/// The pin directories of one instance.
#[derive(Clone, Debug)]
pub struct PinDir {
    pub root: PathBuf,
}

impl PinDir {
    pub fn new(instance: &str) -> Self {
        Self {
            root: Path::new(BPFFS_ROOT).join(PRODUCT_DIR).join(instance),
        }
    }

    pub fn links(&self) -> PathBuf {
        self.root.join("links")
    }

    pub fn maps(&self) -> PathBuf {
        self.root.join("maps")
    }

    pub fn link(&self, program: &str) -> PathBuf {
        self.links().join(program)
    }

    pub fn map(&self, name: &str) -> PathBuf {
        self.maps().join(name)
    }

    /// Whether any program of this instance is still attached.
    pub fn has_links(&self) -> bool {
        std::fs::read_dir(self.links()).is_ok_and(|mut d| d.next().is_some())
    }

    /// All instances with a pin directory.
    pub fn all() -> Vec<String> {
        let Ok(dir) = std::fs::read_dir(Path::new(BPFFS_ROOT).join(PRODUCT_DIR)) else {
            return Vec::new();
        };
        let mut names: Vec<String> = dir
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }
}

/// Detaches every program of `instance` and removes its pins. Returns how
/// many links were removed; an instance with no pins is not an error.
pub fn detach(instance: &str) -> Result<usize, EbpfError> {
    let pins = PinDir::new(instance);
    if !on_bpffs(&pins.root)? {
        return Ok(0);
    }
    let mut removed = 0;
    if let Ok(entries) = std::fs::read_dir(pins.links()) {
        for entry in entries.flatten() {
            let path = entry.path();
            let link = PinnedLink::from_pin(&path).map_err(|source| EbpfError::Link {
                path: path.clone(),
                source,
            })?;
            // Unpinning drops the last reference: the kernel detaches it.
            drop(link.unpin().map_err(EbpfError::io(&path))?);
            removed += 1;
        }
    }
    remove_tree(&pins.root)?;
    Ok(removed)
}

/// Removes map pins and the (then empty) directories.
pub(crate) fn remove_tree(root: &Path) -> Result<(), EbpfError> {
    if !on_bpffs(root)? {
        return Ok(());
    }
    for sub in ["links", "maps"] {
        let dir = root.join(sub);
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(EbpfError::io(&path))?;
            }
            std::fs::remove_dir(&dir).map_err(EbpfError::io(&dir))?;
        }
    }
    match std::fs::remove_dir(root) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(EbpfError::io(root)(e)),
        _ => Ok(()),
    }
}

/// Whether `dir` exists and is on bpffs; an error if it exists elsewhere.
/// Removal deletes every file it finds, so a path that somehow left the pin
/// root must stop here rather than empty an ordinary directory.
fn on_bpffs(dir: &Path) -> Result<bool, EbpfError> {
    match statfs(dir) {
        Ok(fs) if fs.filesystem_type() == BPF_FS_MAGIC => Ok(true),
        Ok(_) => Err(EbpfError::NotBpffs { path: dir.into() }),
        Err(nix::errno::Errno::ENOENT) => Ok(false),
        Err(e) => Err(EbpfError::io(dir)(e.into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_names_stay_one_path_component() {
        for good in ["default", "ci-1", "a_b", &"x".repeat(32)] {
            assert!(is_instance_name(good), "{good}");
        }
        for bad in [
            "",
            "..",
            ".",
            "/tmp/x",
            "../..",
            "a/b",
            "A",
            "é",
            &"x".repeat(33),
        ] {
            assert!(!is_instance_name(bad), "{bad}");
        }
    }

    #[test]
    fn removal_refuses_a_directory_outside_bpffs() {
        let dir = tempfile::tempdir().unwrap();
        let maps = dir.path().join("maps");
        std::fs::create_dir(&maps).unwrap();
        std::fs::write(maps.join("keep"), b"data").unwrap();
        let err = remove_tree(dir.path()).unwrap_err();
        assert!(matches!(err, EbpfError::NotBpffs { .. }), "{err}");
        assert!(maps.join("keep").exists());
    }

    #[test]
    fn removal_of_a_missing_directory_is_a_no_op() {
        let dir = tempfile::tempdir().unwrap();
        remove_tree(&dir.path().join("gone")).unwrap();
    }
}
