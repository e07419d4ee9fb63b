//! Child processes: the broker and the services (this binary in its serve roles).

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::stats::vm_hwm_kib;

/// A child process, killed when dropped.
pub struct Proc {
    pub name: String,
    child: std::process::Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak resident memory so far, in KiB.
    pub fn peak_kib(&self) -> Option<u64> {
        vm_hwm_kib(self.pid())
    }

    /// Fails when the process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); its log: {}\n{}",
                self.name,
                self.log.display(),
                tail(&self.log)
            );
        }
        Ok(())
    }

    /// Its exit status if it has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<std::process::ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    pub fn stop(mut self) {
        self.kill();
    }

    /// SIGTERM, then its exit status within `timeout` (else SIGKILL and an error).
    pub fn terminate(mut self, timeout: Duration) -> anyhow::Result<String> {
        if let Some(status) = self.child.try_wait()? {
            return Ok(format!("had exited: {status}"));
        }
        let sent = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .context("running kill -TERM")?;
        if !sent.success() {
            bail!("kill -TERM {} failed: {sent}", self.pid());
        }
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status.to_string());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        bail!("{} did not stop within {timeout:?} of SIGTERM", self.name)
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The last lines of a log file.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

pub fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Starts `program args...` with stdout and stderr to `log`.
pub fn spawn(name: &str, program: &Path, args: &[String], log: PathBuf) -> anyhow::Result<Proc> {
    spawn_command(name, Command::new(program), args, log)
}

/// Starts `command args...` (its program and environment set by the caller) with stdout and
/// stderr to `log`.
pub fn spawn_command(
    name: &str,
    mut command: Command,
    args: &[String],
    log: PathBuf,
) -> anyhow::Result<Proc> {
    let program = command.get_program().to_owned();
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    let child = command
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".to_owned()),
        )
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", program.to_string_lossy()))?;
    Ok(Proc {
        name: name.to_owned(),
        child,
        log,
    })
}

/// Starts this binary in one of its roles.
pub fn spawn_role(name: &str, args: &[String], log: PathBuf) -> anyhow::Result<Proc> {
    let me = std::env::current_exe().context("locating crm-bench")?;
    spawn(name, &me, args, log)
}

/// Waits until something accepts connections on the port.
pub fn wait_for_port(p: &mut Proc, port: u16, timeout: Duration) -> anyhow::Result<()> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        p.check_alive()?;
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!(
        "{} did not listen on {addr} within {timeout:?}; log:\n{}",
        p.name,
        tail(&p.log)
    )
}

/// Where a private broker keeps the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BrokerStorage {
    /// nisshi's memory engine: the whole log in the broker's memory (about 3 KB a record).
    Memory,
    /// nisshi's SQLite engine: one file in the broker's directory, on disk.
    Sqlite,
}

impl BrokerStorage {
    fn url(self) -> &'static str {
        match self {
            BrokerStorage::Memory => "memory://tansu/",
            // relative to the broker's working directory
            BrokerStorage::Sqlite => "sqlite://nisshi.db",
        }
    }
}

/// A private nisshi/tansu broker on a free port, its log kept as `storage` says.
pub fn start_broker(
    binary: &Path,
    dir: &Path,
    storage: BrokerStorage,
) -> anyhow::Result<(Proc, String)> {
    std::fs::create_dir_all(dir)?;
    let port = free_port()?;
    let url = format!("tcp://127.0.0.1:{port}");
    let out = std::fs::File::create(dir.join("broker.log"))?;
    let err = out.try_clone()?;
    let child = Command::new(binary)
        .args([
            "broker",
            "--listener-url",
            &url,
            "--advertised-listener-url",
            &url,
        ])
        .args(["--storage-engine", storage.url()])
        .envs(crm_tests::BROKER_ALLOCATOR_ENV)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let mut p = Proc {
        name: "broker".into(),
        child,
        log: dir.join("broker.log"),
    };
    wait_for_port(&mut p, port, Duration::from_secs(30))?;
    Ok((p, format!("127.0.0.1:{port}")))
}
