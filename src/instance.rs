//! The identity of this process among the processes that run one pipeline together (the
//! instances of a consumer group): a short name, stable across restarts, that the
//! exactly-once Kafka sink puts in its transactional ids so that two instances never fence
//! each other while a restarted instance fences what it left open.
//!
//! The id is, in order: `WATERSHED_INSTANCE_ID` when set (a StatefulSet's pod name, say);
//! else the one kept in the checkpoint directory's `instance-id` file; else a new random one,
//! written there (atomically) by the first run. Each instance has its own checkpoint
//! directory, so its id follows its state. The file is only read by `validate` and
//! `explain`; only a run writes it.

use std::io::Write;
use std::path::Path;

/// The environment variable that names this instance.
pub const ENV: &str = "WATERSHED_INSTANCE_ID";

/// The file in the checkpoint directory that keeps the id.
pub const FILE: &str = "instance-id";

/// The longest id accepted (it goes into transactional ids and group names).
const MAX_LEN: usize = 64;

/// Why an id could not be had.
#[derive(Debug, thiserror::Error)]
pub enum InstanceIdError {
    #[error(
        "{source_name} holds `{value}`, which is not an instance id: use 1 to {MAX_LEN} letters, digits, `.`, `_` or `-`"
    )]
    Invalid { source_name: String, value: String },
    #[error("{path}: {error}")]
    Io {
        path: String,
        #[source]
        error: std::io::Error,
    },
}

/// Whether `id` can name an instance.
pub fn is_valid(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_LEN
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// This process's id for a pipeline keeping its checkpoints in `checkpoint_dir`: from the
/// environment, else from the directory's file, else new (and written to the file).
pub fn resolve(checkpoint_dir: &Path) -> Result<String, InstanceIdError> {
    resolve_with(std::env::var(ENV).ok(), checkpoint_dir)
}

fn resolve_with(env: Option<String>, checkpoint_dir: &Path) -> Result<String, InstanceIdError> {
    if let Some(id) = env {
        let id = id.trim().to_string();
        return if is_valid(&id) {
            Ok(id)
        } else {
            Err(InstanceIdError::Invalid {
                source_name: ENV.into(),
                value: id,
            })
        };
    }
    let path = checkpoint_dir.join(FILE);
    let io = |error| InstanceIdError::Io {
        path: path.display().to_string(),
        error,
    };
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim().to_string();
            if is_valid(&id) {
                Ok(id)
            } else {
                Err(InstanceIdError::Invalid {
                    source_name: path.display().to_string(),
                    value: id.chars().take(80).collect(),
                })
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let id = crate::random::hex(6).map_err(io)?;
            std::fs::create_dir_all(checkpoint_dir).map_err(io)?;
            // Written aside and renamed: a crash leaves the file whole or absent.
            let tmp = checkpoint_dir.join(format!("{FILE}.tmp"));
            let mut f = std::fs::File::create(&tmp).map_err(io)?;
            f.write_all(format!("{id}\n").as_bytes()).map_err(io)?;
            f.sync_all().map_err(io)?;
            drop(f);
            std::fs::rename(&tmp, &path).map_err(io)?;
            if let Ok(d) = std::fs::File::open(checkpoint_dir) {
                let _ = d.sync_all();
            }
            Ok(id)
        }
        Err(e) => Err(io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_id_is_written_once_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let ckpt = dir.path().join("ckpt");
        let a = resolve_with(None, &ckpt).unwrap();
        assert!(is_valid(&a) && a.len() == 12, "{a}");
        assert_eq!(resolve_with(None, &ckpt).unwrap(), a);
        let other = resolve_with(None, &dir.path().join("other")).unwrap();
        assert_ne!(other, a);
    }

    #[test]
    fn the_environment_wins_and_is_checked() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            resolve_with(Some(" pod-2 ".into()), dir.path()).unwrap(),
            "pod-2"
        );
        assert!(!dir.path().join(FILE).exists());
        let e = resolve_with(Some("a b".into()), dir.path()).unwrap_err();
        assert!(e.to_string().contains(ENV), "{e}");
    }

    #[test]
    fn a_damaged_file_is_refused_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), "not an id\n").unwrap();
        let e = resolve_with(None, dir.path()).unwrap_err();
        assert!(e.to_string().contains("instance-id"), "{e}");
        assert_eq!(
            std::fs::read_to_string(dir.path().join(FILE)).unwrap(),
            "not an id\n"
        );
    }
}
