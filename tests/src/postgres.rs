//! A private PostgreSQL server for fault tests: its own cluster in a temporary directory, on
//! its own port, so that a test can crash and restart it without touching the shared server
//! every other test uses. Built with the machine's PostgreSQL binaries (`initdb`, `pg_ctl`,
//! found with `pg_config --bindir` or under `/usr/lib/postgresql/*/bin`), run as the
//! `postgres` user when the test runs as root (PostgreSQL refuses to run as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::free_port;

/// A PostgreSQL cluster of its own, removed when dropped.
#[derive(Debug)]
pub struct PrivatePostgres {
    bin: PathBuf,
    dir: PathBuf,
    port: u16,
    /// `Some(user)` when the server's commands must run as another user.
    run_as: Option<String>,
}

impl PrivatePostgres {
    /// Creates a cluster (trust authentication, loopback only) and starts it. Panics with the
    /// reason when it cannot.
    pub fn start() -> PrivatePostgres {
        Self::try_start().unwrap_or_else(|e| panic!("private PostgreSQL: {e}"))
    }

    fn try_start() -> Result<PrivatePostgres, String> {
        let bin = bindir()?;
        let port = free_port()?;
        let dir = std::env::temp_dir().join(format!("crm-pg-{port}-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let run_as = if is_root() {
            let user = "postgres".to_owned();
            run(Command::new("chown").arg(format!("{user}:")).arg(&dir))?;
            Some(user)
        } else {
            None
        };
        let pg = PrivatePostgres {
            bin,
            dir,
            port,
            run_as,
        };
        pg.run_tool(
            "initdb",
            &[
                "--auth=trust",
                "--username=postgres",
                "--no-sync",
                "--encoding=UTF8",
                "--locale=C",
                "-D",
            ],
        )?;
        pg.launch()?;
        Ok(pg)
    }

    /// A URL of the database `name` on this server.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Crashes the server as a power cut would: `pg_ctl stop -m immediate` (every backend is
    /// killed, no checkpoint; the next start recovers from the WAL).
    pub fn crash(&self) {
        if let Err(e) = self.run_tool("pg_ctl", &["stop", "-m", "immediate", "-D"]) {
            panic!("private PostgreSQL: crash: {e}");
        }
    }

    /// Starts the server again after [`PrivatePostgres::crash`], on the same port.
    pub fn restart(&self) {
        if let Err(e) = self.launch() {
            panic!("private PostgreSQL: restart: {e}");
        }
    }

    fn launch(&self) -> Result<(), String> {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off \
             -c max_connections=60",
            self.port,
            self.dir.display()
        );
        let log = self.dir.join("server.log");
        let log = log.display().to_string();
        self.run_tool(
            "pg_ctl",
            &["start", "-w", "-t", "60", "-l", &log, "-o", &options, "-D"],
        )
    }

    /// Runs `tool args... <data directory>`.
    fn run_tool(&self, tool: &str, args: &[&str]) -> Result<(), String> {
        let data = self.dir.join("data");
        let program = self.bin.join(tool);
        let mut command = match &self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(&program);
                c
            }
            None => Command::new(&program),
        };
        command.args(args).arg(&data);
        // The server's own directory: a user other than root can enter it.
        command.current_dir(&self.dir);
        run(&mut command)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let _ = self.run_tool("pg_ctl", &["stop", "-m", "immediate", "-D"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn run(command: &mut Command) -> Result<(), String> {
    let output = command
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{command:?}: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{command:?}: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ))
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Where `initdb` and `pg_ctl` are.
fn bindir() -> Result<PathBuf, String> {
    if let Ok(o) = Command::new("pg_config").arg("--bindir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if dir.join("initdb").is_file() {
            return Ok(dir);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map_err(|e| format!("no PostgreSQL binaries (pg_config, /usr/lib/postgresql): {e}"))?
        .filter_map(|d| d.ok().map(|d| d.path().join("bin")))
        .filter(|d| Path::new(d).join("initdb").is_file())
        .collect();
    found.sort();
    found
        .pop()
        .ok_or_else(|| "no initdb under /usr/lib/postgresql/*/bin".to_owned())
}
