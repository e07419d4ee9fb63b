//! Shared test bed: starts the broker, makes fresh databases, and builds event streams
//! decided by the domain ([`world`]).
//!
//! Kafka: [`KafkaBroker::start`] runs a private Tansu broker (installed once by
//! `scripts/kafka-testbed.sh ensure`) on a free port and kills it on drop; with
//! `CRM_TEST_KAFKA_BROKERS=host:port` set, tests use that broker instead. [`unique_prefix`]
//! gives every test its own topics, so tests can share a broker and run in parallel.
//!
//! The end-to-end suite that drives the `crm` binary on both backends is `crm/tests/e2e.rs`:
//! Cargo hands the path of a binary (`CARGO_BIN_EXE_crm`) only to its own crate's tests. It
//! uses this crate's broker.

pub mod db;
pub mod postgres;
pub mod world;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Set to `host:port[,...]` to run the tests against an existing Kafka-protocol broker.
pub const BROKERS_ENV: &str = "CRM_TEST_KAFKA_BROKERS";

/// The test broker's allocator (nisshi uses mimalloc) without transparent huge pages, for every
/// broker the tests, `crm-bench` and `scripts/kafka-testbed.sh` start: with them, well over half
/// of the broker's CPU under load was the kernel zeroing fresh 2 MiB pages (`clear_page_erms`
/// under `mi_page_free_list_extend`; docs/benchmarks.md).
pub const BROKER_ALLOCATOR_ENV: [(&str, &str); 2] = [
    ("MIMALLOC_ALLOW_THP", "0"),
    ("MIMALLOC_ALLOW_LARGE_OS_PAGES", "0"),
];

/// The repository's `scripts/kafka-testbed.sh`.
pub fn testbed_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/kafka-testbed.sh")
}

/// The tansu binary, installed by the script if missing (once per process).
pub fn tansu_binary() -> Result<PathBuf, String> {
    static TANSU: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    TANSU
        .get_or_init(|| {
            let script = testbed_script();
            let status = Command::new("bash")
                .arg(&script)
                .arg("ensure")
                .stdout(Stdio::inherit())
                .stderr(Stdio::inherit())
                .status()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if !status.success() {
                return Err(format!("{} ensure failed: {status}", script.display()));
            }
            let out = Command::new("bash")
                .arg(&script)
                .arg("bin")
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            let path = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if path.is_file() {
                Ok(path)
            } else {
                Err(format!("tansu not found at {}", path.display()))
            }
        })
        .clone()
}

/// How the broker stores its log.
#[derive(Debug, Clone)]
enum Storage {
    Memory,
    /// `sqlite://tansu.db` in this directory: survives a kill and restart.
    Sqlite(PathBuf),
    /// A throw-away SQLite file on tmpfs, removed on drop: tansu 0.6.0 has the memory engine
    /// only with its `dynostore` feature, which the cached build lacks.
    Scratch(PathBuf),
}

/// Set once tansu refused the memory engine: later brokers go straight to SQLite.
static NO_MEMORY_ENGINE: AtomicBool = AtomicBool::new(false);

fn scratch_dir(port: u16) -> PathBuf {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let shm = Path::new("/dev/shm");
    let base = if shm.is_dir() {
        shm.to_owned()
    } else {
        std::env::temp_dir()
    };
    base.join(format!(
        "crm-tansu-{}-{port}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// A Kafka-protocol broker for one test (or several, with [`unique_prefix`]).
#[derive(Debug)]
pub struct KafkaBroker {
    brokers: String,
    /// None when the broker is external (`CRM_TEST_KAFKA_BROKERS`).
    process: Option<Process>,
}

#[derive(Debug)]
struct Process {
    child: Option<Child>,
    port: u16,
    storage: Storage,
    log: PathBuf,
}

impl KafkaBroker {
    /// The broker of `CRM_TEST_KAFKA_BROKERS`, or a fresh in-memory Tansu. Panics with the
    /// reason when no broker can be had.
    pub fn start() -> Self {
        match std::env::var(BROKERS_ENV) {
            Ok(brokers) if !brokers.trim().is_empty() => KafkaBroker {
                brokers: brokers.trim().to_owned(),
                process: None,
            },
            _ => Self::spawn(Storage::Memory).unwrap_or_else(|e| panic!("kafka test bed: {e}")),
        }
    }

    /// A private Tansu that keeps its log in `dir` (SQLite), for crash and restart tests:
    /// see [`KafkaBroker::kill`] and [`KafkaBroker::restart`]. Ignores `CRM_TEST_KAFKA_BROKERS`.
    pub fn start_persistent(dir: &Path) -> Self {
        Self::spawn(Storage::Sqlite(dir.to_owned()))
            .unwrap_or_else(|e| panic!("kafka test bed: {e}"))
    }

    /// `bootstrap.servers` for clients.
    pub fn brokers(&self) -> &str {
        &self.brokers
    }

    /// The APIs the broker advertises, as `(api key, min version, max version)`
    /// (a plain ApiVersions v0 exchange).
    pub fn api_versions(&self) -> Result<Vec<(i16, i16, i16)>, String> {
        let first = self.brokers.split(',').next().unwrap_or_default().trim();
        api_versions(first)
    }

    /// Panics, naming the cause, when the broker cannot commit or abort transactions: Tansu
    /// 0.6.0 does not implement EndTxn (API key 26) at all, so librdkafka refuses
    /// `commit_transaction` and `abort_transaction` ("EndTxnRequest (KIP-98) not supported").
    pub fn require_transactions(&self) {
        const END_TXN: i16 = 26;
        match self.api_versions() {
            Ok(apis) if apis.iter().any(|(key, _, _)| *key == END_TXN) => {}
            Ok(_) => panic!(
                "the broker at {} does not implement EndTxn (Kafka API 26): transactions can \
                 begin but never commit or abort. Tansu 0.6.0 lacks it; use a broker that has \
                 it (Apache Kafka, Redpanda, or a newer Tansu) via {BROKERS_ENV}",
                self.brokers
            ),
            Err(e) => panic!("ApiVersions against {}: {e}", self.brokers),
        }
    }

    /// Kills the broker with SIGKILL (no clean shutdown). Panics for an external broker.
    pub fn kill(&mut self) {
        let process = self
            .process
            .as_mut()
            .unwrap_or_else(|| panic!("cannot kill an external broker"));
        process.kill();
    }

    /// Starts the broker again on the same port with the same storage (after [`kill`]).
    ///
    /// [`kill`]: KafkaBroker::kill
    pub fn restart(&mut self) {
        let process = self
            .process
            .as_mut()
            .unwrap_or_else(|| panic!("cannot restart an external broker"));
        process.kill();
        if let Err(e) = process.launch() {
            panic!("kafka test bed: restart: {e}");
        }
    }

    fn spawn(storage: Storage) -> Result<Self, String> {
        let mut last_error = String::new();
        // A free port may be taken between finding and binding it: try a few.
        for _ in 0..3 {
            let port = free_port()?;
            // Tests get a throw-away SQLite file on tmpfs: the same engine as the persistent
            // crash tests, so every test runs on one storage path.
            let storage = match &storage {
                Storage::Memory => Storage::Scratch(scratch_dir(port)),
                other => other.clone(),
            };
            let mut process = Process {
                child: None,
                port,
                storage,
                log: std::env::temp_dir().join(format!("crm-tansu-{port}.log")),
            };
            let mut launched = process.launch();
            if launched.is_err()
                && matches!(process.storage, Storage::Memory)
                && process.lacks_memory_engine()
            {
                NO_MEMORY_ENGINE.store(true, Ordering::Relaxed);
                process.storage = Storage::Scratch(scratch_dir(port));
                launched = process.launch();
            }
            match launched {
                Ok(()) => {
                    return Ok(KafkaBroker {
                        brokers: format!("127.0.0.1:{port}"),
                        process: Some(process),
                    })
                }
                Err(e) => last_error = e,
            }
        }
        Err(last_error)
    }
}

impl Process {
    fn launch(&mut self) -> Result<(), String> {
        let tansu = tansu_binary()?;
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let (workdir, engine) = match &self.storage {
            Storage::Memory => (std::env::temp_dir(), "memory://tansu/".to_owned()),
            Storage::Sqlite(dir) | Storage::Scratch(dir) => {
                std::fs::create_dir_all(dir)
                    .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
                // The file is relative to the broker's working directory.
                (dir.clone(), "sqlite://tansu.db".to_owned())
            }
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(&self.log)
            .map_err(|e| format!("cannot open {}: {e}", self.log.display()))?;
        let log_err = log
            .try_clone()
            .map_err(|e| format!("cannot open {}: {e}", self.log.display()))?;
        let child = Command::new(&tansu)
            .arg("broker")
            .args(["--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &engine])
            // no waiting for more members before a group's first assignment
            .args(["--group-initial-rebalance-delay", "0s"])
            .envs(BROKER_ALLOCATOR_ENV)
            .current_dir(workdir)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", tansu.display()))?;
        self.child = Some(child);
        self.wait_ready(Duration::from_secs(30))
    }

    fn lacks_memory_engine(&self) -> bool {
        std::fs::read_to_string(&self.log)
            .map(|log| log.contains("FeatureNotEnabled") && log.contains("dynostore"))
            .unwrap_or(false)
    }

    fn wait_ready(&mut self, timeout: Duration) -> Result<(), String> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.port));
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    self.child = None;
                    return Err(format!(
                        "tansu exited ({status}) on port {}; see {}",
                        self.port,
                        self.log.display()
                    ));
                }
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill();
        Err(format!(
            "tansu did not accept connections on {addr} within {timeout:?}; see {}",
            self.log.display()
        ))
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
        if let Storage::Scratch(dir) = &self.storage {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn api_versions(address: &str) -> Result<Vec<(i16, i16, i16)>, String> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;

    let addr = address
        .to_socket_addrs()
        .map_err(|e| format!("{address}: {e}"))?
        .next()
        .ok_or_else(|| format!("{address}: no address"))?;
    let mut stream =
        TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let client_id = b"crm-tests";
    // ApiVersions (key 18) v0: key, version, correlation id, client id.
    let mut body = Vec::new();
    body.extend_from_slice(&18i16.to_be_bytes());
    body.extend_from_slice(&0i16.to_be_bytes());
    body.extend_from_slice(&1i32.to_be_bytes());
    body.extend_from_slice(&(client_id.len() as i16).to_be_bytes());
    body.extend_from_slice(client_id);
    let mut request = (body.len() as i32).to_be_bytes().to_vec();
    request.extend_from_slice(&body);
    stream.write_all(&request).map_err(|e| e.to_string())?;
    let mut size = [0u8; 4];
    stream.read_exact(&mut size).map_err(|e| e.to_string())?;
    let mut response = vec![0u8; i32::from_be_bytes(size).max(0) as usize];
    stream
        .read_exact(&mut response)
        .map_err(|e| e.to_string())?;
    let i16_at = |at: usize| -> Result<i16, String> {
        response
            .get(at..at + 2)
            .map(|b| i16::from_be_bytes([b[0], b[1]]))
            .ok_or_else(|| "short ApiVersions response".to_owned())
    };
    // correlation id (4), error code (2), array length (4), then 6 bytes per API.
    let error = i16_at(4)?;
    if error != 0 {
        return Err(format!("ApiVersions error code {error}"));
    }
    let count = response
        .get(6..10)
        .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or_else(|| "short ApiVersions response".to_owned())?;
    (0..count.max(0) as usize)
        .map(|i| {
            let at = 10 + 6 * i;
            Ok((i16_at(at)?, i16_at(at + 2)?, i16_at(at + 4)?))
        })
        .collect()
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free port: {e}"))
}

/// A topic prefix (and so group and transactional ids) no other test uses, e.g.
/// `t4711-3-fencing.`: tests can share one broker and run in parallel.
pub fn unique_prefix(test_name: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let name: String = test_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "t{}-{:x}-{}-{name}.",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}
