//! Reading files that must be regular files: a FIFO or device put where a
//! policy, ledger or key belongs would otherwise block or never end a read.
use std::{
    fs::{File, OpenOptions},
    io::{self, Read},
    os::unix::fs::{FileTypeExt, OpenOptionsExt},
    path::Path,
};

/// Opens `path` for reading, refusing anything but a regular file. The
/// check is made on the opened handle (fstat), so nothing can be swapped in
/// between; O_NONBLOCK keeps opening a FIFO from waiting for a writer, and
/// does nothing to a regular file.
pub fn open(path: &Path) -> io::Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(nix::libc::O_NONBLOCK)
        .open(path)?;
    check(&file)?;
    Ok(file)
}

/// An error unless `file` is a regular file.
pub fn check(file: &File) -> io::Result<()> {
    let kind = file.metadata()?.file_type();
    if kind.is_file() {
        return Ok(());
    }
    let what = if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_char_device() || kind.is_block_device() {
        "a device"
    } else if kind.is_dir() {
        "a directory"
    } else if kind.is_socket() {
        "a socket"
    } else {
        "not a file"
    };
    Err(io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("it is {what}, not a regular file"),
    ))
}

/// The bytes of the regular file `path`; more than `max` bytes is an error
/// of kind `FileTooLarge`. There is no unbounded read: files anyone may
/// write (recordings, the ledger) can be made sparse and huge, and must
/// not make a reader allocate without end. Found in review.
pub fn read_bounded(path: &Path, max: u64) -> io::Result<Vec<u8>> {
    let too_large = || too_large(max);
    let file = open(path)?;
    // Refused before reading anything: a sparse file costs no disk, and
    // reading up to the bound would still cost that much memory.
    if file.metadata()?.len() > max {
        return Err(too_large());
    }
    let mut bytes = Vec::new();
    file.take(max.saturating_add(1)).read_to_end(&mut bytes)?;
    // It may have grown since.
    if bytes.len() as u64 > max {
        return Err(too_large());
    }
    Ok(bytes)
}

fn too_large(max: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!("it is larger than {max} bytes, more than this reader takes"),
    )
}

/// [`read_bounded`] as a reader, for a file read a piece at a time: the
/// same refusal by size before anything is read, and the same error once
/// more than `max` bytes came (it grew meanwhile).
pub fn open_bounded(path: &Path, max: u64) -> io::Result<Bounded> {
    let file = open(path)?;
    if file.metadata()?.len() > max {
        return Err(too_large(max));
    }
    Ok(Bounded {
        file: file.take(max.saturating_add(1)),
        max,
    })
}

/// A regular file that errs instead of yielding more than its bound.
pub struct Bounded {
    file: io::Take<File>,
    max: u64,
}

impl Read for Bounded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read(buf)?;
        if self.file.limit() == 0 {
            return Err(too_large(self.max));
        }
        Ok(n)
    }
}

/// A secret file holds one password or token; anything bigger is a
/// mistake (a certificate, a dump). The same bound as the policy's
/// `password_file`.
pub const SECRET_MAX_BYTES: u64 = 64 * 1024;

/// The secret in the regular file `path`, as the policy reads a target's
/// `password_file`: at most [`SECRET_MAX_BYTES`], UTF-8, one final `\n`
/// or `\r\n` dropped (editors and `echo` add it; it is not part of the
/// secret), and not empty. For secrets re-read while running (webhook
/// bearer, store and recording passwords), so that a rotated file is
/// picked up. Found in review.
pub fn read_secret(path: &Path) -> io::Result<String> {
    let bytes = read_bounded(path, SECRET_MAX_BYTES)?;
    let line = match bytes.strip_suffix(b"\n") {
        Some(line) => line.strip_suffix(b"\r").unwrap_or(line),
        None => &bytes,
    };
    let text = std::str::from_utf8(line)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "it is not UTF-8"))?;
    if text.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "it is empty: write the secret into it (one line)",
        ));
    }
    Ok(text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fifo_or_device_is_refused_without_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(
            &fifo,
            nix::sys::stat::Mode::S_IRUSR | nix::sys::stat::Mode::S_IWUSR,
        )
        .unwrap();
        let e = read_bounded(&fifo, 1024).unwrap_err();
        assert_eq!(e.to_string(), "it is a FIFO, not a regular file");
        let zero = dir.path().join("zero");
        std::os::unix::fs::symlink("/dev/zero", &zero).unwrap();
        assert_eq!(
            read_bounded(&zero, 1024).unwrap_err().to_string(),
            "it is a device, not a regular file"
        );
        assert!(read_bounded(dir.path(), 1024).is_err());
    }

    #[test]
    fn a_regular_file_is_read_up_to_its_bound() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        std::fs::write(&path, b"12345").unwrap();
        assert_eq!(read_bounded(&path, 5).unwrap(), b"12345");
        assert_eq!(
            read_bounded(&path, 4).unwrap_err().kind(),
            io::ErrorKind::FileTooLarge
        );
        // Sparse: refused at once, nothing read.
        let sparse = dir.path().join("sparse");
        std::fs::File::create(&sparse)
            .unwrap()
            .set_len(200 << 30)
            .unwrap();
        let e = read_bounded(&sparse, 1 << 20).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::FileTooLarge);
        assert!(e.to_string().contains("larger than 1048576 bytes"), "{e}");
    }

    #[test]
    fn a_secret_loses_one_line_end_and_must_be_text() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        for (written, read) in [
            (&b"s3cret\r\n"[..], "s3cret"),
            (b"s3cret\n", "s3cret"),
            (b"s3cret", "s3cret"),
            (b"s3cret\n\n", "s3cret\n"),
        ] {
            std::fs::write(&path, written).unwrap();
            assert_eq!(read_secret(&path).unwrap(), read, "{written:?}");
        }
        for (written, error) in [
            (&b"\n"[..], "it is empty"),
            (b"", "it is empty"),
            (b"\xff\n", "not UTF-8"),
        ] {
            std::fs::write(&path, written).unwrap();
            let e = read_secret(&path).unwrap_err().to_string();
            assert!(e.contains(error), "{written:?}: {e}");
        }
        std::fs::write(&path, vec![b'x'; SECRET_MAX_BYTES as usize + 1]).unwrap();
        assert_eq!(
            read_secret(&path).unwrap_err().kind(),
            io::ErrorKind::FileTooLarge
        );
        let fifo = dir.path().join("fifo");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRUSR).unwrap();
        assert!(read_secret(&fifo).is_err());
    }
}
