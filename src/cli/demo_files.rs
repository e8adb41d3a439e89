//! The demo's pipeline and data, compiled into the binary: `watershed demo` writes them into a
//! fresh temporary directory and runs from there, so a copied binary runs the demo from
//! anywhere, with no checkout. The directory is the run's own (created exclusively) and is
//! removed when the demo ends.

use std::io::Write;
use std::path::{Path, PathBuf};

/// The shipped files, by path relative to the pipeline file (as `demo.yaml` names them).
const FILES: &[(&str, &[u8])] = &[
    ("demo.yaml", include_bytes!("../../examples/demo.yaml")),
    (
        "demo/vocabulary.csv",
        include_bytes!("../../examples/demo/vocabulary.csv"),
    ),
    (
        "demo/reference/snapshot.jsonl",
        include_bytes!("../../examples/demo/reference/snapshot.jsonl"),
    ),
    (
        "demo/reference/changes.jsonl",
        include_bytes!("../../examples/demo/reference/changes.jsonl"),
    ),
];

/// The demo's files written out; removed with it.
pub struct DemoFiles {
    dir: tempfile::TempDir,
}

impl DemoFiles {
    /// Writes the demo's files into a new temporary directory.
    pub fn unpack() -> std::io::Result<DemoFiles> {
        let dir = tempfile::Builder::new()
            .prefix("watershed-demo-")
            .tempdir()?;
        for (name, bytes) in FILES {
            let path = dir.path().join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::File::create_new(&path)?.write_all(bytes)?;
        }
        Ok(DemoFiles { dir })
    }

    /// The pipeline file.
    pub fn pipeline(&self) -> PathBuf {
        self.dir.path().join("demo.yaml")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_the_demo_pipeline_names_is_shipped() {
        let files = DemoFiles::unpack().unwrap();
        let text = std::fs::read_to_string(files.pipeline()).unwrap();
        for line in text.lines().filter(|l| !l.trim_start().starts_with('#')) {
            for word in line.split(|c: char| c.is_whitespace() || "[]{},:".contains(c)) {
                if word.starts_with("demo/") {
                    assert!(
                        files.dir().join(word).is_file(),
                        "`{word}` is named by demo.yaml but not shipped in the binary"
                    );
                }
            }
        }
        let dir = files.dir().to_path_buf();
        drop(files);
        assert!(!dir.exists(), "removed with the demo");
    }
}
