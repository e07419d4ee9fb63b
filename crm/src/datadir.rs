//! The data directory of the embedded default: `log/` (the embedded event logs), `pg/` (the
//! private PostgreSQL cluster), `auth/` (the local signing secret). One process owns it at a
//! time, like any embedded database: `crm up` holds an exclusive lock on `crm.lock` while it
//! runs (the operating system releases it when the process dies, however it dies).

use std::fs::{File, TryLockError};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use projection_service::EmbeddedTopics;

/// The data directory, as every `crm` command that uses it takes it.
#[derive(Debug, Clone, clap::Args)]
pub struct DataDirArgs {
    /// The embedded default's data directory: the event log (`log/`), the private PostgreSQL
    /// (`pg/`), the local signing secret (`auth/`, which also signs `crm token`'s and `crm
    /// demo`'s tokens).
    #[arg(
        id = "data_dir",
        long = "data-dir",
        env = "CRM_DATA_DIR",
        default_value = "data"
    )]
    pub dir: PathBuf,
}

/// The exclusive lock of a data directory; released on drop.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes the lock, or says who has it.
    pub fn acquire(dir: &Path) -> anyhow::Result<DataDirLock> {
        match Self::try_acquire(dir)? {
            Some(lock) => Ok(lock),
            None => bail!(
                "another crm process (`crm up`?) is using the data directory {}",
                dir.display()
            ),
        }
    }

    /// Takes the lock if it is free; `None` when another process holds it.
    pub fn try_acquire(dir: &Path) -> anyhow::Result<Option<DataDirLock>> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let path = dir.join("crm.lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => Ok(Some(DataDirLock { _file: file })),
            Err(TryLockError::WouldBlock) => Ok(None),
            Err(TryLockError::Error(e)) => {
                Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
    }
}

pub fn log_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("log")
}

pub fn pg_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("pg")
}

/// Opens the embedded logs. The partition count is fixed when the log is created (a
/// customer's partition depends on it) and kept in `log/partitions`; a different
/// `--partitions` later is ignored with a warning.
pub fn open_topics(data_dir: &Path, requested: i32) -> anyhow::Result<EmbeddedTopics> {
    let dir = log_dir(data_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let file = dir.join("partitions");
    let partitions = match std::fs::read_to_string(&file) {
        Ok(text) => {
            let kept: i32 = text
                .trim()
                .parse()
                .with_context(|| format!("{} is not a number", file.display()))?;
            if kept != requested {
                tracing::warn!(
                    kept,
                    requested,
                    "the embedded log keeps the partition count it was created with"
                );
            }
            kept
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if requested < 1 {
                bail!("--partitions must be at least 1");
            }
            std::fs::write(&file, format!("{requested}\n"))
                .with_context(|| format!("writing {}", file.display()))?;
            requested
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", file.display())),
    };
    EmbeddedTopics::open(&dir, partitions)
        .with_context(|| format!("opening the embedded log in {}", dir.display()))
}
