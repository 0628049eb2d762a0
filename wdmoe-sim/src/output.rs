//! Output and input plumbing for every `wdmoe` subcommand: nothing panics,
//! nothing is half-written, nothing is read without a bound.
//!
//! | need | use |
//! |---|---|
//! | print to stdout | [`Stdout`]: buffered; a closed pipe becomes [`CliError::BrokenPipe`] (a quiet exit), any other failure (e.g. a full disk) a clean error |
//! | print a note to stderr | [`note`]: never panics, even with stderr closed |
//! | output files | [`OutputFiles`]: [`OutputFiles::add`] checks each path *before* the work (parent folder created, not a folder itself, writable), [`OutputFiles::commit`] writes every file to a temporary file in the same folder and renames them into place only when all were written: a failure leaves the old files (if any) and no partial set |
//! | one file | [`write_atomic`] |
//! | read an input file | [`read_bounded`]: refuses a file larger than the caller's limit before reading it |
//! | end `main` | [`finish`]: maps the result to an exit code and prints the error (nothing for a closed pipe) |
//!
//! Exit codes: 0 success (also when the reader of stdout went away: the
//! output nobody reads is dropped quietly, files were already written), 1 a
//! subcommand's own failure count (e.g. `select` lines that failed), 2 an
//! error (printed as `error: …` on stderr).
//!
//! A subcommand returns `Result<ExitCode, CliError>`; `String` errors convert
//! with `?`, so `Err(format!(…))?` works:
//!
//! ```no_run
//! use std::process::ExitCode;
//! use wdmoe_sim::output::{finish, CliError, OutputFiles, Stdout};
//!
//! fn run() -> Result<ExitCode, CliError> {
//!     let mut files = OutputFiles::default();
//!     files.add("out/table.csv".as_ref())?;      // checked now, before the work
//!     let table = String::from("a,b\n1,2\n");     // ... the long computation ...
//!     files.set_contents(0, table.clone().into_bytes());
//!     files.commit(false)?;                       // all files or none
//!     let mut out = Stdout::new();
//!     out.write_str(&table)?;                     // closed pipe: quiet exit
//!     out.flush()?;
//!     Ok(ExitCode::SUCCESS)
//! }
//! fn main() -> ExitCode { finish(run()) }
//! ```

use std::fmt;
use std::io::{self, BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};

/// Why a subcommand stopped.
#[derive(Debug)]
pub enum CliError {
    /// The reader of stdout went away: stop quietly.
    BrokenPipe,
    /// Anything else, as the message printed after `error: `.
    Msg(String),
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::BrokenPipe => f.write_str("stdout closed"),
            CliError::Msg(m) => f.write_str(m),
        }
    }
}

impl std::error::Error for CliError {}

impl From<String> for CliError {
    fn from(s: String) -> Self {
        CliError::Msg(s)
    }
}

impl From<&str> for CliError {
    fn from(s: &str) -> Self {
        CliError::Msg(s.to_string())
    }
}

/// Maps an error writing to stdout: a closed pipe is [`CliError::BrokenPipe`].
pub fn stdout_error(e: io::Error) -> CliError {
    if e.kind() == io::ErrorKind::BrokenPipe {
        CliError::BrokenPipe
    } else {
        CliError::Msg(format!("cannot write to stdout: {e}"))
    }
}

/// Ends `main`: `Ok(code)` is returned as is; an error is printed as
/// `error: …` on stderr with exit code 2; a closed stdout exits 0 silently.
pub fn finish(r: Result<ExitCode, CliError>) -> ExitCode {
    match r {
        Ok(code) => code,
        Err(CliError::BrokenPipe) => ExitCode::SUCCESS,
        Err(CliError::Msg(m)) => {
            note(&format!("error: {m}"));
            ExitCode::from(2)
        }
    }
}

/// Writes one line to stderr, ignoring failures (stderr may be closed too).
pub fn note(line: &str) {
    let mut e = io::stderr().lock();
    let _ = writeln!(e, "{line}");
    let _ = e.flush();
}

/// Buffered stdout whose errors are values, never panics.
#[derive(Debug)]
pub struct Stdout {
    w: BufWriter<io::Stdout>,
}

impl Default for Stdout {
    fn default() -> Self {
        Self::new()
    }
}

impl Stdout {
    /// A buffered handle on stdout.
    pub fn new() -> Self {
        Self {
            w: BufWriter::with_capacity(64 * 1024, io::stdout()),
        }
    }

    /// Writes `s` (buffered).
    pub fn write_str(&mut self, s: &str) -> Result<(), CliError> {
        self.w.write_all(s.as_bytes()).map_err(stdout_error)
    }

    /// Writes `s` and a newline (buffered).
    pub fn line(&mut self, s: &str) -> Result<(), CliError> {
        self.write_str(s)?;
        self.write_str("\n")
    }

    /// Flushes to the terminal, pipe or file; call it before returning.
    pub fn flush(&mut self) -> Result<(), CliError> {
        self.w.flush().map_err(stdout_error)
    }

    /// The underlying writer (for protocols that stream, e.g. `select`).
    pub fn writer(&mut self) -> &mut BufWriter<io::Stdout> {
        &mut self.w
    }
}

/// Reads a text file of at most `max_bytes` bytes; a larger file is an
/// error naming the limit, found before the file is read.
pub fn read_bounded(path: &Path, max_bytes: u64) -> Result<String, CliError> {
    let f = std::fs::File::open(path)
        .map_err(|e| CliError::Msg(format!("cannot read {}: {e}", path.display())))?;
    let too_big = |n: u64| {
        CliError::Msg(format!(
            "{}: the file is {} than the limit of {max_bytes} bytes",
            path.display(),
            if n > 0 {
                format!("{n} bytes, larger")
            } else {
                "larger".into()
            }
        ))
    };
    if let Ok(m) = f.metadata() {
        if m.is_file() && m.len() > max_bytes {
            return Err(too_big(m.len()));
        }
    }
    let mut text = String::new();
    f.take(max_bytes + 1)
        .read_to_string(&mut text)
        .map_err(|e| CliError::Msg(format!("cannot read {}: {e}", path.display())))?;
    if text.len() as u64 > max_bytes {
        return Err(too_big(0));
    }
    Ok(text)
}

/// An existing path that is neither a regular file nor a folder (a device
/// such as `/dev/stdout` or `/dev/full`, a named pipe): it cannot be replaced
/// by a rename, so it is written in place.
fn is_special(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|m| !m.is_file() && !m.is_dir())
}

fn write_in_place(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    let res = (|| -> io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).open(path)?;
        f.write_all(bytes)?;
        f.flush()
    })();
    res.map_err(|e| CliError::Msg(format!("cannot write {}: {e}", path.display())))
}

static TMP_COUNTER: AtomicU64 = AtomicU64::new(0);

fn temp_path(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let n = TMP_COUNTER.fetch_add(1, Ordering::Relaxed);
    path.with_file_name(format!(".{name}.{}.{n}.tmp", std::process::id()))
}

/// Checks that `path` can be written, before any work: creates its parent
/// folder, refuses a folder or a missing file name, and creates (then
/// removes) a temporary file beside it.
pub fn check_output_path(path: &Path) -> Result<(), CliError> {
    let fail = |why: String| CliError::Msg(format!("cannot write {}: {why}", path.display()));
    if path.file_name().is_none() || path.as_os_str().to_string_lossy().ends_with('/') {
        return Err(fail("not a file name".into()));
    }
    if path.is_dir() {
        return Err(fail("it is a folder".into()));
    }
    if is_special(path) {
        // A device or pipe (e.g. /dev/stdout): written in place, not renamed over.
        std::fs::OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| fail(e.to_string()))?;
        return Ok(());
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| {
            CliError::Msg(format!(
                "cannot write {}: cannot create folder {}: {e}",
                path.display(),
                dir.display()
            ))
        })?;
    }
    let tmp = temp_path(path);
    std::fs::File::create(&tmp).map_err(|e| fail(e.to_string()))?;
    let _ = std::fs::remove_file(&tmp);
    Ok(())
}

fn write_temp(path: &Path, bytes: &[u8]) -> Result<PathBuf, CliError> {
    let tmp = temp_path(path);
    let res = (|| -> io::Result<()> {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    })();
    match res {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            Err(CliError::Msg(format!(
                "cannot write {}: {e}",
                path.display()
            )))
        }
    }
}

/// Writes `bytes` to `path` atomically: into a temporary file in the same
/// folder, then renamed over `path`. On failure `path` is untouched and the
/// temporary file removed.
///
/// A device or named pipe (e.g. `/dev/stdout`) is written in place instead.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), CliError> {
    if is_special(path) {
        return write_in_place(path, bytes);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| CliError::Msg(format!("cannot create folder {}: {e}", dir.display())))?;
    }
    let tmp = write_temp(path, bytes)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        CliError::Msg(format!("cannot write {}: {e}", path.display()))
    })
}

/// A set of output files, checked before the work and written all together.
#[derive(Debug, Default)]
pub struct OutputFiles {
    files: Vec<(PathBuf, Vec<u8>)>,
}

impl OutputFiles {
    /// Registers `path` (checked now with [`check_output_path`]) and returns
    /// its index for [`OutputFiles::set_contents`].
    pub fn add(&mut self, path: &Path) -> Result<usize, CliError> {
        check_output_path(path)?;
        self.files.push((path.to_path_buf(), Vec::new()));
        Ok(self.files.len() - 1)
    }

    /// The registered paths, in order.
    pub fn paths(&self) -> impl Iterator<Item = &Path> {
        self.files.iter().map(|(p, _)| p.as_path())
    }

    /// Number of registered files.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// No file registered.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// Sets the contents of file `i`.
    pub fn set_contents(&mut self, i: usize, bytes: Vec<u8>) {
        if let Some(f) = self.files.get_mut(i) {
            f.1 = bytes;
        }
    }

    /// Writes every file to a temporary file, then renames all into place.
    /// If any write fails, every temporary file is removed and no target is
    /// touched. Devices and named pipes (e.g. `/dev/stdout`) are written in
    /// place after the regular files were staged. With `announce`, prints `wrote PATH` on stderr per file.
    pub fn commit(self, announce: bool) -> Result<(), CliError> {
        let mut temps: Vec<(PathBuf, &Path)> = Vec::with_capacity(self.files.len());
        let mut special = Vec::new();
        for (path, bytes) in &self.files {
            if is_special(path) {
                special.push((path, bytes));
                continue;
            }
            match write_temp(path, bytes) {
                Ok(t) => temps.push((t, path)),
                Err(e) => {
                    for (t, _) in &temps {
                        let _ = std::fs::remove_file(t);
                    }
                    return Err(e);
                }
            }
        }
        let mut first_err = None;
        for (path, bytes) in special {
            if let Err(e) = write_in_place(path, bytes) {
                first_err.get_or_insert(e);
            } else if announce {
                note(&format!("wrote {}", path.display()));
            }
        }
        for (tmp, path) in &temps {
            if let Err(e) = std::fs::rename(tmp, path) {
                let _ = std::fs::remove_file(tmp);
                first_err.get_or_insert(CliError::Msg(format!(
                    "cannot write {}: {e}",
                    path.display()
                )));
            } else if announce {
                note(&format!("wrote {}", path.display()));
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("wdmoe-output-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn atomic_write_replaces_and_leaves_no_temp() {
        let d = dir("atomic");
        let p = d.join("a.txt");
        write_atomic(&p, b"one").unwrap();
        write_atomic(&p, b"two").unwrap();
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "two");
        let names: Vec<_> = std::fs::read_dir(&d).unwrap().collect();
        assert_eq!(names.len(), 1);
    }

    #[test]
    fn checks_refuse_folders_and_files_as_folders() {
        let d = dir("check");
        assert!(check_output_path(&d)
            .unwrap_err()
            .to_string()
            .contains("folder"));
        std::fs::write(d.join("f"), "x").unwrap();
        let e = check_output_path(&d.join("f").join("x.csv")).unwrap_err();
        assert!(e.to_string().contains("cannot create folder"), "{e}");
        check_output_path(&d.join("new").join("x.csv")).unwrap();
        assert!(d.join("new").is_dir());
        assert!(!d.join("new").join("x.csv").exists());
    }

    #[test]
    fn commit_all_or_nothing() {
        let d = dir("commit");
        let mut f = OutputFiles::default();
        let a = f.add(&d.join("a")).unwrap();
        let b = f.add(&d.join("b")).unwrap();
        f.set_contents(a, b"A".to_vec());
        f.set_contents(b, b"B".to_vec());
        f.commit(false).unwrap();
        assert_eq!(std::fs::read(d.join("a")).unwrap(), b"A");
        assert_eq!(std::fs::read(d.join("b")).unwrap(), b"B");
        assert_eq!(std::fs::read_dir(&d).unwrap().count(), 2);
    }

    #[test]
    fn read_bounded_refuses_large_files() {
        let d = dir("read");
        let p = d.join("s.toml");
        std::fs::write(&p, "x".repeat(100)).unwrap();
        assert_eq!(read_bounded(&p, 100).unwrap().len(), 100);
        let e = read_bounded(&p, 99).unwrap_err().to_string();
        assert!(e.contains("limit of 99 bytes"), "{e}");
        assert!(read_bounded(&d.join("none"), 10)
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
    }
}
