//! The per-run token that the endpoint's state-changing requests (`POST /savepoint`) must
//! carry as `Authorization: Bearer <token>`: 32 random bytes, made when the run starts,
//! compared in constant time, never logged. It is kept in a file only its owner can read
//! (mode 0600), where `watershed savepoint` finds it:
//!
//! - `<checkpoint.dir>/run.token` when the pipeline keeps checkpoints;
//! - otherwise `$XDG_RUNTIME_DIR/watershed/<pipeline>-<port>.token`, or, without
//!   `XDG_RUNTIME_DIR`, `<temp dir>/watershed-<uid>/<pipeline>-<port>.token` (a directory of
//!   mode 0700 that must belong to this user).
//!
//! The file is replaced atomically when a run starts and removed when it ends.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};

use std::path::{Path, PathBuf};

/// The token's file name in a checkpoint directory.
pub const FILE_NAME: &str = "run.token";

/// A run's token. Its `Debug` does not show it.
#[derive(Clone)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A new random token.
    pub fn generate() -> std::io::Result<Token> {
        crate::random::hex(32).map(Token)
    }

    /// Whether `presented` is this token, in time that does not depend on where they differ.
    pub fn matches(&self, presented: &[u8]) -> bool {
        let ours = self.0.as_bytes();
        // The length is no secret: every token has 64 characters.
        if presented.len() != ours.len() {
            return false;
        }
        let diff = ours
            .iter()
            .zip(presented)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        std::hint::black_box(diff) == 0
    }

    /// Whether an `Authorization` header value carries this token.
    pub fn authorizes(&self, header: Option<&[u8]>) -> bool {
        header
            .and_then(|h| h.strip_prefix(b"Bearer "))
            .is_some_and(|t| self.matches(t.trim_ascii()))
    }

    /// Writes the token to `path` (mode 0600), replacing what is there atomically: a new file
    /// is written beside it and renamed over it.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let tmp = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        let written = f
            .write_all(self.0.as_bytes())
            .and_then(|()| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    /// Removes `path` if it still holds this token (a later run may have replaced it).
    pub fn remove(&self, path: &Path) {
        if read(path).is_ok_and(|t| self.matches(t.as_bytes())) {
            let _ = std::fs::remove_file(path);
        }
    }

    /// The token itself, to send.
    pub fn secret(&self) -> &str {
        &self.0
    }
}

/// Reads a token file.
pub fn read(path: &Path) -> std::io::Result<String> {
    Ok(std::fs::read_to_string(path)?.trim().to_string())
}

/// Where the token of a run of pipeline `pipeline` serving on `port` is kept (see the module
/// header); nothing is created.
pub fn file_for(checkpoint_dir: Option<&Path>, pipeline: &str, port: u16) -> PathBuf {
    if let Some(dir) = checkpoint_dir {
        return dir.join(FILE_NAME);
    }
    let safe: String = pipeline
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    runtime_dir().join(format!("{safe}-{port}.token"))
}

/// Writes a new run's `token` where `file_for` says, creating its directory: the checkpoint
/// directory, or the private runtime directory (refused when it is not private to this
/// user). Returns the file.
pub fn write_for_run(
    token: &Token,
    checkpoint_dir: Option<&Path>,
    pipeline: &str,
    port: u16,
) -> std::io::Result<PathBuf> {
    let path = file_for(checkpoint_dir, pipeline, port);
    match checkpoint_dir {
        Some(dir) => std::fs::create_dir_all(dir)?,
        None => private_dir(&runtime_dir())?,
    }
    token.write(&path)?;
    Ok(path)
}

fn euid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// `$XDG_RUNTIME_DIR/watershed`, else `<temp dir>/watershed-<uid>`.
fn runtime_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d).join("watershed"),
        _ => std::env::temp_dir().join(format!("watershed-{}", euid())),
    }
}

/// Creates `dir` with mode 0700; an existing one must be a directory of this user that
/// nobody else can use.
fn private_dir(dir: &Path) -> std::io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() || meta.uid() != euid() || meta.permissions().mode() & 0o077 != 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::PermissionDenied,
            format!(
                "{} is not a directory only this user can use: not keeping the endpoint token there",
                dir.display()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_only_accepted_whole_as_a_bearer_token() {
        let t = Token::generate().unwrap();
        let header = format!("Bearer {}", t.secret());
        assert!(t.authorizes(Some(header.as_bytes())));
        assert!(!t.authorizes(None));
        assert!(!t.authorizes(Some(t.secret().as_bytes())), "no scheme");
        assert!(!t.authorizes(Some(format!("Basic {}", t.secret()).as_bytes())));
        let mut wrong = header.clone().into_bytes();
        let last = wrong.len() - 1;
        wrong[last] = if wrong[last] == b'0' { b'1' } else { b'0' };
        assert!(!t.authorizes(Some(&wrong)));
        assert!(!t.authorizes(Some(&header.as_bytes()[..header.len() - 1])));
        assert!(!format!("{t:?}").contains(t.secret()));
    }

    #[test]
    fn the_token_file_is_private_and_removed_only_while_it_is_this_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = file_for(Some(dir.path()), "p", 0);
        assert_eq!(path, dir.path().join("run.token"));
        std::fs::write(&path, "an older run's").unwrap();
        let t = Token::generate().unwrap();
        assert_eq!(write_for_run(&t, Some(dir.path()), "p", 0).unwrap(), path);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(read(&path).unwrap(), t.secret());
        let later = Token::generate().unwrap();
        later.write(&path).unwrap();
        t.remove(&path);
        assert!(path.exists(), "a later run's token stays");
        later.remove(&path);
        assert!(!path.exists());
    }

    #[test]
    fn a_runtime_directory_that_others_can_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mine = dir.path().join("mine");
        private_dir(&mine).unwrap();
        assert_eq!(
            std::fs::metadata(&mine).unwrap().permissions().mode() & 0o777,
            0o700
        );
        private_dir(&mine).unwrap();
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = private_dir(&shared).unwrap_err();
        assert!(
            e.to_string().contains("not a directory only this user"),
            "{e}"
        );
    }
}
