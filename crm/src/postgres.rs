//! The embedded read-model store: a private PostgreSQL cluster kept under the data directory,
//! started and stopped by `crm`. It is the same PostgreSQL the deployed platform uses, so the
//! very same projection SQL runs on it; only its life is managed here. It listens on a Unix
//! socket inside the data directory only (no TCP port).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// The socket "port": only names the socket file, nothing listens on TCP.
const SOCKET_PORT: u16 = 5433;

pub struct PrivatePostgres {
    child: Child,
    url: String,
}

impl PrivatePostgres {
    /// Starts (creating it the first time) the cluster in `dir`, and returns once it accepts
    /// connections to the database `crm`.
    pub fn start(dir: &Path) -> anyhow::Result<PrivatePostgres> {
        let bin = binaries()?;
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let dir = dir
            .canonicalize()
            .with_context(|| format!("resolving {}", dir.display()))?;
        let as_root = is_root();
        if as_root {
            // PostgreSQL refuses to run as root: the cluster belongs to the `postgres` user.
            run(
                Command::new("chown")
                    .arg("-R")
                    .arg("postgres:postgres")
                    .arg(&dir),
                "chown",
            )?;
        }
        if !dir.join("PG_VERSION").exists() {
            tracing::info!(dir = %dir.display(), "creating the embedded read-model store (initdb)");
            let mut initdb = pg_command(&bin.join("initdb"), as_root);
            initdb.arg("-D").arg(&dir).args([
                "-U",
                "crm",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
            ]);
            run(&mut initdb, "initdb")?;
        }
        if running(&dir) {
            bail!("another postgres already runs on {}: is another `crm up` using this data directory?", dir.display());
        }
        let log = std::fs::File::create(dir.join("server.log")).context("creating server.log")?;
        let mut postgres = pg_command(&bin.join("postgres"), as_root);
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
            .args(["-c", "fsync=on", "-c", "max_connections=50"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        let child = postgres.spawn().context("starting postgres")?;
        let url = format!(
            "postgres://crm@localhost/crm?host={}&port={SOCKET_PORT}",
            dir.display()
        );
        let mut me = PrivatePostgres { child, url };
        me.wait_until_ready(&bin, &dir)?;
        Ok(me)
    }

    /// A connection URL (Unix socket) to the `crm` database.
    pub fn url(&self) -> &str {
        &self.url
    }

    fn wait_until_ready(&mut self, bin: &Path, dir: &Path) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().context("waiting for postgres")? {
                let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
                bail!(
                    "postgres exited ({status}): {}",
                    log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                );
            }
            let ok = Command::new(bin.join("psql"))
                .args(["-h"])
                .arg(dir)
                .args([
                    "-p",
                    &SOCKET_PORT.to_string(),
                    "-U",
                    "crm",
                    "-d",
                    "postgres",
                    "-tAc",
                ])
                .arg("SELECT 1 FROM pg_database WHERE datname = 'crm'")
                .output();
            if let Ok(out) = ok {
                if out.status.success() {
                    if String::from_utf8_lossy(&out.stdout).trim() != "1" {
                        let mut create = Command::new(bin.join("psql"));
                        create.args(["-h"]).arg(dir).args([
                            "-p",
                            &SOCKET_PORT.to_string(),
                            "-U",
                            "crm",
                            "-d",
                            "postgres",
                            "-c",
                            "CREATE DATABASE crm",
                        ]);
                        run(&mut create, "create database")?;
                    }
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                bail!(
                    "postgres did not accept connections within 30 s; see {}",
                    dir.join("server.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        // SIGINT: fast shutdown (abort transactions, checkpoint, exit).
        let _ = Command::new("kill")
            .arg("-INT")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn running(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("postmaster.pid"))
        .ok()
        .and_then(|s| s.lines().next().map(str::to_owned))
        .is_some_and(|pid| Path::new("/proc").join(pid.trim()).exists())
}

fn pg_command(program: &Path, as_root: bool) -> Command {
    if as_root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
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

/// PostgreSQL's server binaries: `CRM_PG_BIN`, `pg_config --bindir`, or the newest under
/// /usr/lib/postgresql.
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
        .find(|d| d.join("postgres").exists())
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
