//! The embedded event log: the customer-events topic kept in files under a data directory, for
//! the single-process default (`crm up` with no Kafka). Same records, same partitioning, same
//! one-writer-per-partition rule as Kafka, so the services run unchanged on it.
//!
//! Each partition is one append-only file. A transaction is written as its records followed by
//! a commit marker and flushed with `fsync`; on open, records after the last commit marker (a
//! torn write) are cut off, so a transaction is visible whole or not at all.
//!
//! The records stay on disk: memory holds where each committed record starts in its file
//! (8 bytes a record), and a read takes the byte range of the records it returns with one
//! positioned read, so memory does not grow with history (the page cache keeps what is hot).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::Utc;
use domain::KafkaRecord;
use tokio::sync::watch;

use crate::kafka::{partition_for, LogError, RecordAppender, StoredRecord};
use crate::log::CustomerLog;
use crate::Position;

const RECORD: u8 = 1;
const COMMIT: u8 = 2;

fn io(context: &str, e: std::io::Error) -> LogError {
    LogError::Task(format!("{context}: {e}"))
}

/// One partition's file and what is known of it.
struct PartitionFile {
    /// Opened to read and to append (`O_APPEND`): reads are positioned, so they need no lock.
    file: Arc<File>,
    /// Where each committed record starts in the file, in offset order.
    starts: Vec<u64>,
    /// The length of the committed part of the file: where the next record will start.
    committed: u64,
    /// Bumped by every new writer: an older writer sees a newer generation and is fenced.
    generation: Arc<AtomicU64>,
}

/// The log of one data directory.
pub struct EmbeddedLog {
    dir: PathBuf,
    topic: String,
    partitions: i32,
    files: Mutex<HashMap<i32, Arc<Mutex<PartitionFile>>>>,
    /// Counts committed appends: in-process readers wait on it for new records.
    appended: Arc<watch::Sender<u64>>,
}

/// One record to append: what a Kafka producer would send. A missing key is stored empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OwnedRecord {
    pub key: Vec<u8>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub value: Vec<u8>,
}

impl EmbeddedLog {
    /// Opens (or creates) the log in `dir`.
    pub fn open(dir: &Path, topic: String, partitions: i32) -> Result<Self, LogError> {
        std::fs::create_dir_all(dir).map_err(|e| io("creating the data directory", e))?;
        Ok(EmbeddedLog {
            dir: dir.to_owned(),
            topic,
            partitions,
            files: Mutex::new(HashMap::new()),
            appended: Arc::new(watch::channel(0).0),
        })
    }

    /// The topic's name, as positions carry it.
    pub fn topic_name(&self) -> &str {
        &self.topic
    }

    /// Changes (to a count of appends) after every committed append: `changed().await` on
    /// it wakes a reader when new records may be there.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.appended.subscribe()
    }

    /// Appends `record` to the partition of its key, outside the one-writer rule (which
    /// guards the customer streams): for topics that only collect, such as dead letters and
    /// alerts. Durable (fsync) when it returns.
    pub async fn publish(&self, record: OwnedRecord) -> Result<Position, LogError> {
        let partition = partition_for(&record.key, self.partitions);
        let file = self.partition(partition)?;
        let topic = self.topic.clone();
        let appended = self.appended.clone();
        let positions = tokio::task::spawn_blocking(move || {
            let mut f = file.lock().unwrap_or_else(PoisonError::into_inner);
            write_committed(&mut f, &topic, partition, &[record], &appended)
        })
        .await??;
        positions
            .into_iter()
            .next()
            .ok_or_else(|| LogError::Task("nothing appended".into()))
    }

    fn partition(&self, partition: i32) -> Result<Arc<Mutex<PartitionFile>>, LogError> {
        if !(0..self.partitions).contains(&partition) {
            return Err(LogError::Task(format!("no partition {partition}")));
        }
        let mut files = self.files.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(f) = files.get(&partition) {
            return Ok(f.clone());
        }
        let path = self.dir.join(format!("{}-{partition}.log", self.topic));
        let (starts, committed) = recover(&path)?;
        let handle = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .map_err(|e| io("opening a partition file", e))?;
        let file = Arc::new(Mutex::new(PartitionFile {
            file: Arc::new(handle),
            starts,
            committed,
            generation: Arc::new(AtomicU64::new(0)),
        }));
        files.insert(partition, file.clone());
        Ok(file)
    }

    /// Committed records of `partition` from `offset` on (for in-process consumers).
    pub fn read(&self, partition: i32, offset: i64) -> Result<Vec<StoredRecord>, LogError> {
        self.read_at_most(partition, offset, usize::MAX)
    }

    /// At most `max` committed records of `partition` from `offset` on.
    pub fn read_at_most(
        &self,
        partition: i32,
        offset: i64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, LogError> {
        let from = usize::try_from(offset.max(0)).unwrap_or(usize::MAX);
        // what to read, taken under the lock; the read itself needs none (committed bytes
        // never change)
        let (handle, begin, end, count) = {
            let file = self.partition(partition)?;
            let f = file.lock().unwrap_or_else(PoisonError::into_inner);
            if from >= f.starts.len() || max == 0 {
                return Ok(Vec::new());
            }
            let to = from.saturating_add(max).min(f.starts.len());
            let end = f.starts.get(to).copied().unwrap_or(f.committed);
            (f.file.clone(), f.starts[from], end, to - from)
        };
        let len = usize::try_from(end - begin)
            .map_err(|_| LogError::Task("a read larger than memory".into()))?;
        let mut bytes = vec![0u8; len];
        handle
            .read_exact_at(&mut bytes, begin)
            .map_err(|e| io("reading a partition file", e))?;
        let mut cursor = Cursor {
            bytes: &bytes,
            at: 0,
        };
        let mut records = Vec::with_capacity(count);
        while records.len() < count {
            match cursor.u8() {
                Some(RECORD) => {}
                Some(COMMIT) => continue,
                _ => break,
            }
            let offset = offset.max(0) + records.len() as i64;
            match cursor.record(&self.topic, partition, offset) {
                Some(r) => records.push(r),
                None => break,
            }
        }
        if records.len() != count {
            return Err(LogError::Task(format!(
                "partition file {partition} changed under its index: {} of {count} records readable from byte {begin}",
                records.len()
            )));
        }
        Ok(records)
    }

    /// Where the next record of `partition` will go.
    pub fn end_offset(&self, partition: i32) -> Result<i64, LogError> {
        let file = self.partition(partition)?;
        let file = file.lock().unwrap_or_else(PoisonError::into_inner);
        Ok(file.starts.len() as i64)
    }
}

/// Reads a partition file through once, cutting off anything after the last commit marker;
/// returns where each committed record starts and the committed length.
fn recover(path: &Path) -> Result<(Vec<u64>, u64), LogError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((Vec::new(), 0)),
        Err(e) => return Err(io("opening a partition file", e)),
    };
    let length = file
        .metadata()
        .map_err(|e| io("reading a partition file's length", e))?
        .len();
    let mut scan = Scan {
        reader: BufReader::with_capacity(1 << 20, file),
        at: 0,
    };
    let mut starts: Vec<u64> = Vec::new();
    let mut pending = 0usize;
    let mut committed = 0u64;
    loop {
        let start = scan.at;
        match scan.u8() {
            Some(RECORD) => {
                if scan.skip_record().is_none() {
                    break;
                }
                starts.push(start);
                pending += 1;
            }
            Some(COMMIT) => {
                pending = 0;
                committed = scan.at;
            }
            _ => break,
        }
    }
    starts.truncate(starts.len() - pending);
    if committed < length {
        tracing::warn!(path = %path.display(), cut = length - committed, "cutting an uncommitted tail off the partition file");
        let f = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| io("opening a partition file", e))?;
        f.set_len(committed)
            .map_err(|e| io("truncating a torn tail", e))?;
    }
    Ok((starts, committed))
}

/// A pass over a partition file that reads lengths and skips what they cover.
struct Scan {
    reader: BufReader<File>,
    at: u64,
}

impl Scan {
    fn exact<const N: usize>(&mut self) -> Option<[u8; N]> {
        let mut b = [0u8; N];
        self.reader.read_exact(&mut b).ok()?;
        self.at += N as u64;
        Some(b)
    }
    fn u8(&mut self) -> Option<u8> {
        self.exact::<1>().map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.exact::<4>().map(u32::from_le_bytes)
    }
    fn skip(&mut self, n: u64) -> Option<()> {
        let skipped = std::io::copy(&mut (&mut self.reader).take(n), &mut std::io::sink()).ok()?;
        self.at += skipped;
        (skipped == n).then_some(())
    }
    fn skip_blob(&mut self) -> Option<()> {
        let n = self.u32()?;
        self.skip(u64::from(n))
    }
    /// Skips a record's fields (after its kind byte), as [`Cursor::record`] reads them.
    fn skip_record(&mut self) -> Option<()> {
        self.skip(8)?; // timestamp
        self.skip_blob()?; // key
        let headers = self.u32()?;
        for _ in 0..headers {
            self.skip_blob()?;
            self.skip_blob()?;
        }
        self.skip_blob() // value
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let end = self.at.checked_add(n)?;
        let s = self.bytes.get(self.at..end)?;
        self.at = end;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(i64::from_le_bytes)
    }
    fn blob(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        self.take(n).map(<[u8]>::to_vec)
    }
    fn record(&mut self, topic: &str, partition: i32, offset: i64) -> Option<StoredRecord> {
        let millis = self.i64()?;
        let key = self.blob()?;
        let n = self.u32()?;
        let mut headers = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let name = String::from_utf8(self.blob()?).ok()?;
            headers.push((name, Some(self.blob()?)));
        }
        let value = self.blob()?;
        Some(StoredRecord {
            position: Position {
                topic: topic.to_owned(),
                partition,
                offset,
            },
            key: Some(key),
            headers,
            value: Some(value),
            timestamp: chrono::DateTime::from_timestamp_millis(millis),
        })
    }
}

fn put_blob(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// The one writer of one embedded partition.
struct EmbeddedWriter {
    file: Arc<Mutex<PartitionFile>>,
    topic: String,
    partition: i32,
    partitions: i32,
    generation: u64,
    appended: Arc<watch::Sender<u64>>,
}

/// Appends `records` and a commit marker to the partition's file, syncs it, then makes them
/// visible (and wakes readers). Called with the partition locked.
fn write_committed(
    f: &mut PartitionFile,
    topic: &str,
    partition: i32,
    records: &[OwnedRecord],
    appended: &watch::Sender<u64>,
) -> Result<Vec<Position>, LogError> {
    let now = Utc::now();
    let mut bytes = Vec::new();
    let mut starts = Vec::with_capacity(records.len());
    let first = f.starts.len() as i64;
    for r in records {
        starts.push(bytes.len() as u64);
        bytes.push(RECORD);
        bytes.extend_from_slice(&now.timestamp_millis().to_le_bytes());
        put_blob(&mut bytes, &r.key);
        bytes.extend_from_slice(&(r.headers.len() as u32).to_le_bytes());
        for (name, value) in &r.headers {
            put_blob(&mut bytes, name.as_bytes());
            put_blob(&mut bytes, value);
        }
        put_blob(&mut bytes, &r.value);
    }
    bytes.push(COMMIT);
    let before = f.committed;
    let mut out: &File = &f.file;
    if let Err(e) = out.write_all(&bytes).and_then(|()| out.sync_data()) {
        // leave no torn tail for the next append to follow
        let _ = out.set_len(before);
        return Err(io("appending", e));
    }
    f.starts.extend(starts.into_iter().map(|s| before + s));
    f.committed = before + bytes.len() as u64;
    appended.send_modify(|n| *n += 1);
    Ok((0..records.len())
        .map(|i| Position {
            topic: topic.to_owned(),
            partition,
            offset: first + i as i64,
        })
        .collect())
}

#[async_trait]
impl RecordAppender for EmbeddedWriter {
    async fn append(&self, records: &[KafkaRecord]) -> Result<Vec<Position>, LogError> {
        for r in records {
            let expected = partition_for(&r.key, self.partitions);
            if expected != self.partition {
                return Err(LogError::WrongPartition {
                    key: String::from_utf8_lossy(&r.key).into_owned(),
                    expected,
                    actual: self.partition,
                });
            }
        }
        let file = self.file.clone();
        let records: Vec<OwnedRecord> = records
            .iter()
            .map(|r| OwnedRecord {
                key: r.key.clone(),
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
                value: r.value.clone(),
            })
            .collect();
        let (topic, partition, generation) = (self.topic.clone(), self.partition, self.generation);
        let appended = self.appended.clone();
        tokio::task::spawn_blocking(move || {
            let mut f = file.lock().unwrap_or_else(PoisonError::into_inner);
            if f.generation.load(Ordering::Acquire) != generation {
                return Err(LogError::Fenced {
                    transactional_id: format!("embedded-{partition}"),
                });
            }
            write_committed(&mut f, &topic, partition, &records, &appended)
        })
        .await?
    }
}

#[async_trait]
impl CustomerLog for EmbeddedLog {
    fn partitions(&self) -> i32 {
        self.partitions
    }

    fn topic(&self) -> String {
        self.topic.clone()
    }

    async fn open_writer(&self, partition: i32) -> Result<Arc<dyn RecordAppender>, LogError> {
        let file = self.partition(partition)?;
        let generation = {
            let f = file.lock().unwrap_or_else(PoisonError::into_inner);
            f.generation.fetch_add(1, Ordering::AcqRel) + 1
        };
        Ok(Arc::new(EmbeddedWriter {
            file,
            topic: self.topic.clone(),
            partition,
            partitions: self.partitions,
            generation,
            appended: self.appended.clone(),
        }))
    }

    async fn history(&self, partition: i32) -> Result<Vec<StoredRecord>, LogError> {
        self.read(partition, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(key: &str, value: &str) -> KafkaRecord {
        KafkaRecord {
            key: key.as_bytes().to_vec(),
            headers: vec![("ce_type", b"t".to_vec())],
            value: value.as_bytes().to_vec(),
        }
    }

    fn key_for(partition: i32, partitions: i32) -> String {
        (0..)
            .map(|i| format!("customer-{i}"))
            .find(|k| partition_for(k.as_bytes(), partitions) == partition)
            .unwrap_or_default()
    }

    #[tokio::test]
    async fn appends_survive_reopening_and_torn_tails_are_cut() {
        let dir = std::env::temp_dir().join(format!("crm-embedded-{}", uuid::Uuid::now_v7()));
        let key = key_for(1, 4);
        {
            let log = EmbeddedLog::open(&dir, "events".into(), 4).unwrap();
            let w = log.open_writer(1).await.unwrap();
            let p = w
                .append(&[record(&key, "a"), record(&key, "b")])
                .await
                .unwrap();
            assert_eq!(p.iter().map(|p| p.offset).collect::<Vec<_>>(), [0, 1]);
            w.append(&[record(&key, "c")]).await.unwrap();
        }
        // a torn, uncommitted write at the end
        let path = dir.join("events-1.log");
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[RECORD, 1, 2, 3]).unwrap();
        drop(f);
        let log = EmbeddedLog::open(&dir, "events".into(), 4).unwrap();
        let h = log.history(1).await.unwrap();
        assert_eq!(
            h.iter()
                .map(|r| r.value.clone().unwrap())
                .collect::<Vec<_>>(),
            [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]
        );
        assert_eq!(h[2].position.offset, 2);
        assert_eq!(
            h[0].headers,
            vec![("ce_type".to_owned(), Some(b"t".to_vec()))]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn any_range_reads_back_what_was_appended_across_transactions_and_reopening() {
        let dir = std::env::temp_dir().join(format!("crm-embedded-{}", uuid::Uuid::now_v7()));
        let key = key_for(0, 2);
        let mut appended = Vec::new();
        {
            let log = EmbeddedLog::open(&dir, "events".into(), 2).unwrap();
            let w = log.open_writer(0).await.unwrap();
            // transactions of 1, 2, 3, ... records, values of growing length
            for size in 1..=6 {
                let batch: Vec<KafkaRecord> = (0..size)
                    .map(|i| {
                        let v = format!("{size}-{i}-{}", "x".repeat(appended.len() * 7));
                        appended.push(v.clone().into_bytes());
                        record(&key, &v)
                    })
                    .collect();
                w.append(&batch).await.unwrap();
            }
        }
        let log = EmbeddedLog::open(&dir, "events".into(), 2).unwrap();
        let total = appended.len() as i64;
        assert_eq!(log.end_offset(0).unwrap(), total);
        for from in 0..=total + 1 {
            for max in [0usize, 1, 2, 5, usize::MAX] {
                let got = log.read_at_most(0, from, max).unwrap();
                let want: Vec<&Vec<u8>> = appended.iter().skip(from as usize).take(max).collect();
                assert_eq!(
                    got.iter()
                        .map(|r| r.value.as_ref().unwrap())
                        .collect::<Vec<_>>(),
                    want,
                    "from {from}, at most {max}"
                );
                for (i, r) in got.iter().enumerate() {
                    assert_eq!(r.position.offset, from + i as i64);
                    assert_eq!(r.key.as_deref(), Some(key.as_bytes()));
                }
            }
        }
        // appending after reopening goes on from the recovered end
        let w = log.open_writer(0).await.unwrap();
        let p = w.append(&[record(&key, "last")]).await.unwrap();
        assert_eq!(p[0].offset, total);
        assert_eq!(
            log.read(0, total).unwrap()[0].value.as_deref(),
            Some(&b"last"[..])
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn readers_are_woken_by_appends_and_publish_keeps_any_headers() {
        let dir = std::env::temp_dir().join(format!("crm-embedded-{}", uuid::Uuid::now_v7()));
        let log = EmbeddedLog::open(&dir, "dead-letter".into(), 4).unwrap();
        let mut changes = log.subscribe();
        let key = key_for(3, 4);
        let at = log
            .publish(OwnedRecord {
                key: key.clone().into_bytes(),
                headers: vec![("dlq_reason".into(), b"bad".to_vec())],
                value: b"x".to_vec(),
            })
            .await
            .unwrap();
        assert_eq!((at.partition, at.offset), (3, 0));
        tokio::time::timeout(std::time::Duration::from_secs(1), changes.changed())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(log.read_at_most(3, 0, 10).unwrap().len(), 1);
        drop(log);
        let log = EmbeddedLog::open(&dir, "dead-letter".into(), 4).unwrap();
        let r = log.read(3, 0).unwrap();
        assert_eq!(r[0].header("dlq_reason"), Some(&b"bad"[..]));
        assert_eq!(log.end_offset(3).unwrap(), 1);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn a_new_writer_fences_the_old_one_and_keys_stay_in_their_partition() {
        let dir = std::env::temp_dir().join(format!("crm-embedded-{}", uuid::Uuid::now_v7()));
        let log = EmbeddedLog::open(&dir, "events".into(), 4).unwrap();
        let key = key_for(2, 4);
        let old = log.open_writer(2).await.unwrap();
        old.append(&[record(&key, "1")]).await.unwrap();
        let new = log.open_writer(2).await.unwrap();
        assert!(matches!(
            old.append(&[record(&key, "2")]).await,
            Err(LogError::Fenced { .. })
        ));
        new.append(&[record(&key, "3")]).await.unwrap();
        assert_eq!(log.history(2).await.unwrap().len(), 2);
        let other = key_for(3, 4);
        assert!(matches!(
            new.append(&[record(&other, "x")]).await,
            Err(LogError::WrongPartition { .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
