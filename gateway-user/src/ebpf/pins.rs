//! Where an instance's links and maps live on bpffs, and removing them.
use std::path::{Path, PathBuf};

use aya::programs::links::PinnedLink;

use super::EbpfError;

/// Root of all instances.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
const PRODUCT_DIR: &str = "chokepoint";

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
