//! The embedded read-model store: a private PostgreSQL cluster kept under the data directory,
//! started and stopped by `crm`. It is the same PostgreSQL the deployed platform uses, so the
//! very same projection SQL runs on it; only its life is managed here. It listens on a Unix
//! socket inside its own directory only (no TCP port), and that directory is readable by its
//! owner only, so only this user (and root) can connect.
//!
//! - PostgreSQL's server binaries come from the machine (`CRM_PG_BIN`, the newest under
//!   `/usr/lib/postgresql`, or `pg_config --bindir`).
//! - PostgreSQL refuses to run as root: when `crm` runs as root, the cluster belongs to the
//!   `postgres` user and its programs run as that user.
//! - The server runs in a process group of its own, so a Ctrl-C in the terminal reaches
//!   `crm` only, which stops the services first and the database last.
//! - The caller holds the data directory's lock ([`crate::datadir::DataDirLock`]): a server
//!   still running on the directory is an orphan of a `crm` that was killed, and is stopped
//!   before a new one starts.

use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection};

/// The socket "port": only names the socket file, nothing listens on TCP.
const SOCKET_PORT: u16 = 5433;
/// The database and superuser of the cluster.
const DATABASE: &str = "crm";
/// A Unix socket path is at most 107 bytes.
const MAX_SOCKET_PATH: usize = 100;

pub struct PrivatePostgres {
    child: Option<Child>,
    dir: PathBuf,
    url: String,
}

impl PrivatePostgres {
    /// Starts (creating it the first time) the cluster in `dir`, and returns once it accepts
    /// connections to the database `crm`.
    pub async fn start(dir: &Path) -> anyhow::Result<PrivatePostgres> {
        let dir = dir.to_owned();
        let mut pg = tokio::task::spawn_blocking(move || Self::spawn(&dir))
            .await
            .context("starting postgres")??;
        match pg.wait_until_ready().await {
            Ok(()) => Ok(pg),
            Err(e) => {
                pg.stop().await;
                Err(e)
            }
        }
    }

    /// The connection URL (Unix socket) of the `crm` database of a cluster in `dir`, running
    /// or not.
    pub fn url_for(dir: &Path) -> anyhow::Result<String> {
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        Ok(url(&dir))
    }

    /// True when a server runs on the cluster in `dir`.
    pub fn is_running(dir: &Path) -> bool {
        postmaster(dir).is_some()
    }

    fn spawn(dir: &Path) -> anyhow::Result<PrivatePostgres> {
        let bin = binaries()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let socket = dir.join(format!(".s.PGSQL.{SOCKET_PORT}"));
        if socket.as_os_str().len() > MAX_SOCKET_PATH {
            bail!(
                "the data directory's path is too long for PostgreSQL's socket ({}): use a shorter --data-dir",
                socket.display()
            );
        }
        let owner = if is_root()? {
            // PostgreSQL refuses to run as root: the cluster belongs to the `postgres` user
            let owner = user_ids("postgres")?.context(
                "running as root, the embedded PostgreSQL needs the `postgres` user (it refuses to run as root); create it, or pass --database-url",
            )?;
            chown_tree(&dir, owner)?;
            Some(owner)
        } else {
            None
        };
        if let Some(pid) = postmaster(&dir) {
            // we hold the data directory's lock: this is an orphan of a killed `crm`
            tracing::warn!(pid, dir = %dir.display(), "stopping a postgres left running by an earlier crm");
            stop_pid(pid, Duration::from_secs(60));
            if postmaster(&dir).is_some() {
                bail!(
                    "postgres (pid {pid}) still runs on {}; stop it first",
                    dir.display()
                );
            }
        }
        if !dir.join("PG_VERSION").exists() {
            tracing::info!(dir = %dir.display(), "creating the embedded read-model store (initdb)");
            let mut initdb = pg_command(&bin.join("initdb"), owner);
            initdb.arg("-D").arg(&dir).args([
                "-U",
                DATABASE,
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-instructions",
            ]);
            run(&mut initdb, "initdb").map_err(|e| {
                if owner.is_some() {
                    e.context(format!(
                        "(running as root, the cluster runs as `postgres`, which must be able to reach {}: every parent directory must be searchable by it)",
                        dir.display()
                    ))
                } else {
                    e
                }
            })?;
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("server.log"))
            .context("opening server.log")?;
        let log_err = log.try_clone().context("opening server.log")?;
        let mut postgres = pg_command(&bin.join("postgres"), owner);
        postgres
            .arg("-D")
            .arg(&dir)
            .args([
                "-c",
                "listen_addresses=",
                "-p",
                &SOCKET_PORT.to_string(),
                "-k",
            ])
            .arg(&dir)
            .args([
                "-c",
                "max_connections=60",
                "-c",
                "unix_socket_permissions=0700",
            ])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            // not in our process group: a Ctrl-C reaches `crm`, which stops it last
            .process_group(0);
        let child = postgres.spawn().context("starting postgres")?;
        tracing::info!(pid = child.id(), dir = %dir.display(), "embedded PostgreSQL started");
        Ok(PrivatePostgres {
            child: Some(child),
            url: url(&dir),
            dir,
        })
    }

    /// A connection URL (Unix socket) to the `crm` database.
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn wait_until_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let options = PgConnectOptions::from_str(&self.url)
            .context("the embedded database's URL")?
            .database("postgres")
            .disable_statement_logging();
        loop {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait().context("waiting for postgres")? {
                    self.child = None;
                    let log =
                        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
                    bail!(
                        "postgres exited ({status}): {}",
                        log.lines()
                            .rev()
                            .take(5)
                            .collect::<Vec<_>>()
                            .into_iter()
                            .rev()
                            .collect::<Vec<_>>()
                            .join(" | ")
                    );
                }
            }
            if let Ok(mut conn) = options.connect().await {
                let exists: Option<i32> =
                    sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
                        .bind(DATABASE)
                        .fetch_optional(&mut conn)
                        .await
                        .context("looking for the crm database")?;
                if exists.is_none() {
                    sqlx::query(&format!("CREATE DATABASE {DATABASE}"))
                        .execute(&mut conn)
                        .await
                        .context("creating the crm database")?;
                }
                let _ = conn.close().await;
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres did not accept connections within 60 s; see {}",
                    self.dir.join("server.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Stops the server (fast shutdown: open transactions abort, a checkpoint is written)
    /// and waits for it to exit.
    pub async fn stop(mut self) {
        if let Some(child) = self.child.take() {
            let _ = tokio::task::spawn_blocking(move || stop_child(child)).await;
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if let Some(child) = self.child.take() {
            stop_child(child);
        }
    }
}

fn stop_child(mut child: Child) {
    signal(child.id(), "INT");
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            tracing::info!("embedded PostgreSQL stopped");
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    tracing::warn!("embedded PostgreSQL did not stop within 30 s; killing it");
    let _ = child.kill();
    let _ = child.wait();
}

fn signal(pid: u32, signal: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{signal}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stops a server that is not our child, and waits for it to be gone.
fn stop_pid(pid: u32, within: Duration) {
    signal(pid, "INT");
    let deadline = Instant::now() + within;
    while Instant::now() < deadline && alive(pid) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A process that exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.chars().next())
            .is_some_and(|state| state != 'Z' && state != 'X'),
        Err(_) => false,
    }
}

/// The pid of the postgres server running on `dir`, if one does.
fn postmaster(dir: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let is_postgres = String::from_utf8_lossy(&cmdline).contains("postgres");
    (is_postgres && alive(pid)).then_some(pid)
}

fn url(dir: &Path) -> String {
    let host: String = dir
        .to_string_lossy()
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    format!("postgres://{DATABASE}@localhost/{DATABASE}?host={host}&port={SOCKET_PORT}")
}

fn is_root() -> anyhow::Result<bool> {
    // /proc/self belongs to the process's effective user
    Ok(std::fs::metadata("/proc/self")
        .context("reading /proc/self")?
        .uid()
        == 0)
}

/// (uid, gid) of a user, from /etc/passwd.
fn user_ids(name: &str) -> anyhow::Result<Option<(u32, u32)>> {
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    Ok(passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        (fields.next()? == name).then_some(())?;
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    }))
}

fn chown_tree(dir: &Path, (uid, gid): (u32, u32)) -> anyhow::Result<()> {
    let meta = std::fs::symlink_metadata(dir).with_context(|| format!("{}", dir.display()))?;
    if meta.uid() != uid || meta.gid() != gid {
        std::os::unix::fs::lchown(dir, Some(uid), Some(gid))
            .with_context(|| format!("chown {}", dir.display()))?;
    }
    if meta.is_dir() {
        for entry in std::fs::read_dir(dir).with_context(|| format!("{}", dir.display()))? {
            let entry = entry.with_context(|| format!("{}", dir.display()))?;
            chown_tree(&entry.path(), (uid, gid))?;
        }
    }
    Ok(())
}

fn pg_command(program: &Path, owner: Option<(u32, u32)>) -> Command {
    let mut c = Command::new(program);
    if let Some((uid, gid)) = owner {
        c.uid(uid).gid(gid).env("HOME", "/tmp");
    }
    c.env_remove("PGDATA")
        .env_remove("PGHOST")
        .env_remove("PGPORT");
    c
}

fn run(command: &mut Command, what: &str) -> anyhow::Result<()> {
    let out = command
        .output()
        .with_context(|| format!("running {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// PostgreSQL's server binaries: `CRM_PG_BIN`, the newest under /usr/lib/postgresql, or
/// `pg_config --bindir`.
fn binaries() -> anyhow::Result<PathBuf> {
    if let Ok(dir) = std::env::var("CRM_PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.path().join("bin"))
                .collect()
        })
        .unwrap_or_default();
    candidates.sort_by_key(|p| {
        p.parent()
            .and_then(|v| v.file_name())
            .and_then(|v| v.to_str())
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(0)
    });
    if let Some(dir) = candidates
        .into_iter()
        .rev()
        .find(|d| d.join("postgres").exists() && d.join("initdb").exists())
    {
        return Ok(dir);
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("postgres").exists() {
            return Ok(dir);
        }
    }
    bail!("the embedded default needs PostgreSQL's server binaries (initdb, postgres): install PostgreSQL, set CRM_PG_BIN, or pass --database-url")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_socket_url_is_percent_encoded_and_parses() {
        let u = url(Path::new("/tmp/a b/pg"));
        assert_eq!(
            u,
            "postgres://crm@localhost/crm?host=%2Ftmp%2Fa%20b%2Fpg&port=5433"
        );
        assert!(PgConnectOptions::from_str(&u).is_ok());
    }
}
