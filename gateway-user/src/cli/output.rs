//! The commands' standard output and error. A write that fails (a full
//! disk, a closed pipe) must not pass unnoticed: found in review,
//! `sessions verify --all > report` on a full disk exited 0 with the
//! report empty, and `println!` panicked instead (exit 101). Every write
//! goes through here or [`super::escaped::Escaped`]; the first failure is
//! kept, and [`super::main`] makes it exit 2.
use std::{
    fmt,
    io::{self, Write},
    sync::Mutex,
};

/// The first failed write: its kind and what the system said.
static FAILED: Mutex<Option<(io::ErrorKind, String)>> = Mutex::new(None);

/// Keeps `error` if it is the first write to fail.
pub(crate) fn record(error: &io::Error) {
    let mut failed = FAILED.lock().unwrap_or_else(|p| p.into_inner());
    failed.get_or_insert_with(|| (error.kind(), error.to_string()));
}

/// The first write that failed, if one did.
pub(crate) fn failure() -> Option<(io::ErrorKind, String)> {
    FAILED.lock().unwrap_or_else(|p| p.into_inner()).clone()
}

/// Writes `args` (and a newline when `newline`) to `w`, keeping a failure;
/// whether it was written.
pub(crate) fn write(mut w: impl Write, args: fmt::Arguments<'_>, newline: bool) -> bool {
    let written = w
        .write_fmt(args)
        .and_then(|()| if newline { w.write_all(b"\n") } else { Ok(()) })
        .and_then(|()| w.flush());
    if let Err(e) = &written {
        record(e);
    }
    written.is_ok()
}

/// `println!` that never panics: a failure is kept for the exit code.
macro_rules! say {
    ($($arg:tt)*) => {
        {
            let _ = $crate::cli::output::write(std::io::stdout().lock(), format_args!($($arg)*), true);
        }
    };
}

/// `print!` that never panics.
macro_rules! say_raw {
    ($($arg:tt)*) => {
        {
            let _ = $crate::cli::output::write(std::io::stdout().lock(), format_args!($($arg)*), false);
        }
    };
}

/// `eprintln!` that never panics.
macro_rules! tell {
    ($($arg:tt)*) => {
        {
            let _ = $crate::cli::output::write(std::io::stderr().lock(), format_args!($($arg)*), true);
        }
    };
}

pub(crate) use {say, say_raw, tell};

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer whose every write fails as a full disk does.
    struct Full;

    impl Write for Full {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from_raw_os_error(28))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Only that some failure is kept is asserted: which one came first
    /// depends on the other tests in this binary, which print to the real
    /// stdout (closed under `cargo test | head`).
    #[test]
    fn a_failed_write_is_kept_not_panicked_on() {
        assert!(write(Vec::new(), format_args!("fine"), true));
        assert!(!write(Full, format_args!("lost {}", 1), true));
        assert!(!write(Full, format_args!("lost too"), false));
        assert!(failure().is_some());
    }
}
