//! The data set on disk. It is generated once, before anything is timed, customer by customer
//! into files under the run's work directory (what each phase sends, already encoded), and each
//! phase then reads its file as it sends: the harness holds one chunk of the data set at a time
//! whatever its size (100k customers and ~12.6M events at `large`), and no phase's timing
//! includes generating its data.
//!
//! Each file is a sequence of length-prefixed blobs (`u32` little-endian, then the bytes):
//! - `commands.bin`: per customer, the number of its commands, then per command its method,
//!   path and JSON body (in the order they must run, the registration first);
//! - `touchpoints.bin`: per batch of `/v1/touchpoints:batch`, the number of its items, then
//!   its NDJSON body;
//! - `inbound.bin`: per inbound record (every third touchpoint again, with new ids), its key,
//!   JSON body, CloudEvents `time` and `id`.

use std::fs::File;
use std::io::{BufRead, BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context};
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::gen::Generator;
use crate::stats::round;

/// What was written, and where.
pub struct Spool {
    pub dir: PathBuf,
    /// Every customer's id, in the data set's order.
    pub customers: Vec<Uuid>,
    pub commands: u64,
    pub touchpoints: u64,
    pub batches: u64,
    pub inbound: u64,
    pub bytes: u64,
    pub seconds: f64,
}

impl Spool {
    pub fn commands_file(&self) -> PathBuf {
        self.dir.join("commands.bin")
    }
    pub fn touchpoints_file(&self) -> PathBuf {
        self.dir.join("touchpoints.bin")
    }
    pub fn inbound_file(&self) -> PathBuf {
        self.dir.join("inbound.bin")
    }

    pub fn summary(&self) -> Value {
        json!({
            "what": "the data set generated once into files under the work directory (every phase reads its part back as it sends; generation is not in any phase's timing)",
            "customers": self.customers.len(),
            "single_commands": self.commands,
            "touchpoints": self.touchpoints,
            "touchpoint_batches": self.batches,
            "inbound_records": self.inbound,
            "bytes": self.bytes,
            "seconds": round(self.seconds),
        })
    }

    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn put(w: &mut impl Write, bytes: &[u8]) -> anyhow::Result<()> {
    let len = u32::try_from(bytes.len()).context("a blob over 4 GiB")?;
    w.write_all(&len.to_le_bytes())?;
    w.write_all(bytes)?;
    Ok(())
}

fn put_count(w: &mut impl Write, n: usize) -> anyhow::Result<()> {
    let n = u32::try_from(n).context("a count over u32")?;
    w.write_all(&n.to_le_bytes())?;
    Ok(())
}

/// The next `u32`, or `None` at the end of the file (and only there).
fn take_u32(r: &mut impl BufRead) -> anyhow::Result<Option<u32>> {
    if r.fill_buf()?.is_empty() {
        return Ok(None);
    }
    let mut len = [0u8; 4];
    r.read_exact(&mut len).context("a truncated spool file")?;
    Ok(Some(u32::from_le_bytes(len)))
}

fn take(r: &mut impl BufRead) -> anyhow::Result<Vec<u8>> {
    let len = take_u32(r)?.context("a truncated spool file")?;
    let mut bytes = vec![0u8; len as usize];
    r.read_exact(&mut bytes).context("a truncated spool file")?;
    Ok(bytes)
}

fn take_string(r: &mut impl BufRead) -> anyhow::Result<String> {
    String::from_utf8(take(r)?).context("a spool string is not UTF-8")
}

fn create(path: &Path) -> anyhow::Result<BufWriter<File>> {
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(BufWriter::with_capacity(1 << 20, f))
}

fn open(path: &Path) -> anyhow::Result<BufReader<File>> {
    let f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    Ok(BufReader::with_capacity(1 << 20, f))
}

/// Generates the data set into `dir` (created afresh): `customers` scripts from `seed`, the
/// touchpoints in batches of `batch` items, every third touchpoint again as an inbound record.
pub fn write(
    dir: &Path,
    seed: u64,
    customers: usize,
    touchpoints: (u64, u64),
    now: DateTime<Utc>,
    batch: usize,
) -> anyhow::Result<Spool> {
    let started = Instant::now();
    let _ = std::fs::remove_dir_all(dir);
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut spool = Spool {
        dir: dir.to_owned(),
        customers: Vec::with_capacity(customers),
        commands: 0,
        touchpoints: 0,
        batches: 0,
        inbound: 0,
        bytes: 0,
        seconds: 0.0,
    };
    let mut commands = create(&spool.commands_file())?;
    let mut batches = create(&spool.touchpoints_file())?;
    let mut inbound = create(&spool.inbound_file())?;
    let batch = batch.max(1);
    let (mut body, mut items) = (Vec::new(), 0usize);
    let mut n_touchpoint = 0u64;
    for script in Generator::new(seed, customers, touchpoints, now) {
        spool.customers.push(script.customer_id);
        put_count(&mut commands, script.commands.len())?;
        for c in &script.commands {
            put(&mut commands, c.method.as_str().as_bytes())?;
            put(&mut commands, c.path.as_bytes())?;
            put(&mut commands, &serde_json::to_vec(&c.body)?)?;
        }
        spool.commands += script.commands.len() as u64;
        for item in &script.touchpoints {
            serde_json::to_writer(&mut body, item)?;
            body.push(b'\n');
            items += 1;
            if items == batch {
                put_count(&mut batches, items)?;
                put(&mut batches, &body)?;
                spool.batches += 1;
                body.clear();
                items = 0;
            }
            // every third touchpoint again on the inbound topic, with new ids
            if n_touchpoint.is_multiple_of(3) {
                let customer = item["customer_id"].as_str().unwrap_or_default();
                let record = serde_json::to_vec(&json!({
                    "customer_id": customer,
                    "touchpoint_id": Uuid::now_v7(),
                    "touchpoint": item["touchpoint"],
                }))?;
                put(&mut inbound, customer.as_bytes())?;
                put(&mut inbound, &record)?;
                put(
                    &mut inbound,
                    item["occurred_at"].as_str().unwrap_or_default().as_bytes(),
                )?;
                put(&mut inbound, Uuid::now_v7().to_string().as_bytes())?;
                spool.inbound += 1;
            }
            n_touchpoint += 1;
        }
        spool.touchpoints += script.touchpoints.len() as u64;
    }
    if items > 0 {
        put_count(&mut batches, items)?;
        put(&mut batches, &body)?;
        spool.batches += 1;
    }
    for w in [&mut commands, &mut batches, &mut inbound] {
        w.flush()?;
    }
    for f in [
        spool.commands_file(),
        spool.touchpoints_file(),
        spool.inbound_file(),
    ] {
        spool.bytes += std::fs::metadata(&f)?.len();
    }
    spool.seconds = started.elapsed().as_secs_f64();
    Ok(spool)
}

/// One HTTP command, its body already JSON.
pub struct Command {
    pub method: reqwest::Method,
    pub path: String,
    pub body: Vec<u8>,
}

/// Every customer's commands, one customer at a time.
pub struct Commands(BufReader<File>);

impl Commands {
    pub fn open(spool: &Spool) -> anyhow::Result<Commands> {
        Ok(Commands(open(&spool.commands_file())?))
    }

    fn customer(&mut self) -> anyhow::Result<Option<Vec<Command>>> {
        let Some(n) = take_u32(&mut self.0)? else {
            return Ok(None);
        };
        let mut out = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let method = take(&mut self.0)?;
            let method = reqwest::Method::from_bytes(&method).context("a spooled method")?;
            let path = take_string(&mut self.0)?;
            let body = take(&mut self.0)?;
            out.push(Command { method, path, body });
        }
        Ok(Some(out))
    }
}

impl Iterator for Commands {
    type Item = anyhow::Result<Vec<Command>>;
    fn next(&mut self) -> Option<Self::Item> {
        self.customer().transpose()
    }
}

/// The batches of `/v1/touchpoints:batch`: (items, NDJSON body).
pub struct Batches(BufReader<File>);

impl Batches {
    pub fn open(spool: &Spool) -> anyhow::Result<Batches> {
        Ok(Batches(open(&spool.touchpoints_file())?))
    }

    fn batch(&mut self) -> anyhow::Result<Option<(u64, Vec<u8>)>> {
        let Some(n) = take_u32(&mut self.0)? else {
            return Ok(None);
        };
        Ok(Some((u64::from(n), take(&mut self.0)?)))
    }
}

impl Iterator for Batches {
    type Item = anyhow::Result<(u64, Vec<u8>)>;
    fn next(&mut self) -> Option<Self::Item> {
        self.batch().transpose()
    }
}

/// An inbound record: key (the customer id), JSON body, CloudEvents `time` and `id`.
pub struct Inbound {
    pub key: String,
    pub body: Vec<u8>,
    pub time: String,
    pub id: String,
}

pub struct InboundRecords(BufReader<File>);

impl InboundRecords {
    pub fn open(spool: &Spool) -> anyhow::Result<InboundRecords> {
        Ok(InboundRecords(open(&spool.inbound_file())?))
    }

    fn record(&mut self) -> anyhow::Result<Option<Inbound>> {
        if self.0.fill_buf()?.is_empty() {
            return Ok(None);
        }
        let key = take_string(&mut self.0)?;
        let body = take(&mut self.0)?;
        let time = take_string(&mut self.0)?;
        let id = take_string(&mut self.0)?;
        if key.is_empty() {
            bail!("an inbound record without a key");
        }
        Ok(Some(Inbound {
            key,
            body,
            time,
            id,
        }))
    }
}

impl Iterator for InboundRecords {
    type Item = anyhow::Result<Inbound>;
    fn next(&mut self) -> Option<Self::Item> {
        self.record().transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_written_reads_back_in_order() -> anyhow::Result<()> {
        let dir = std::env::temp_dir().join(format!("crm-bench-spool-{}", std::process::id()));
        let now = Utc::now();
        let spool = write(&dir, 7, 12, (5, 10), now, 16)?;
        let scripts = crate::gen::scripts(7, 12, (5, 10), now);
        assert_eq!(spool.customers.len(), 12);
        let mut n = 0;
        for (read, script) in Commands::open(&spool)?.zip(&scripts) {
            let read = read?;
            assert_eq!(read.len(), script.commands.len());
            for (a, b) in read.iter().zip(&script.commands) {
                assert_eq!(a.path, b.path);
                assert_eq!(a.method, b.method);
                assert_eq!(serde_json::from_slice::<Value>(&a.body)?, b.body);
            }
            n += 1;
        }
        assert_eq!(n, 12);
        let items: u64 = Batches::open(&spool)?
            .map(|b| b.map(|(n, _)| n))
            .sum::<anyhow::Result<u64>>()?;
        let total: usize = scripts.iter().map(|s| s.touchpoints.len()).sum();
        assert_eq!(items, total as u64);
        assert_eq!(spool.touchpoints, total as u64);
        let inbound = InboundRecords::open(&spool)?.count();
        assert_eq!(inbound as u64, spool.inbound);
        assert_eq!(spool.inbound, (total as u64).div_ceil(3));
        spool.remove();
        Ok(())
    }
}
