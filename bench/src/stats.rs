//! Latency summaries, the machine, and peak memory of processes.

use std::time::Duration;

use serde::Serialize;

/// Percentiles of a set of latencies, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

impl Latency {
    pub fn of(samples: &[Duration]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let i = ((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1;
            ms.get(i).copied().unwrap_or(0.0)
        };
        Latency {
            count: ms.len(),
            p50_ms: round(at(0.50)),
            p90_ms: round(at(0.90)),
            p99_ms: round(at(0.99)),
            p999_ms: round(at(0.999)),
            max_ms: round(ms.last().copied().unwrap_or(0.0)),
            mean_ms: round(ms.iter().sum::<f64>() / ms.len() as f64),
        }
    }
}

/// Three decimals: enough for milliseconds, short in JSON.
pub fn round(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// A rate, rounded to one decimal.
pub fn rate(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64().max(1e-9);
    (count as f64 / secs * 10.0).round() / 10.0
}

/// `a / b`, rounded to three decimals (0 when `b` is 0).
pub fn ratio(a: f64, b: f64) -> f64 {
    if b == 0.0 {
        0.0
    } else {
        round(a / b)
    }
}

/// The machine the figures were measured on.
#[derive(Debug, Clone, Serialize)]
pub struct Machine {
    pub nproc: usize,
    pub cpu_model: String,
    pub mem_total: String,
    pub free_h: String,
    pub load_average_at_start: String,
    pub kernel: String,
    pub postgres: String,
}

impl Machine {
    pub fn probe(postgres: String) -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let mem_total = meminfo
            .lines()
            .find(|l| l.starts_with("MemTotal"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        let run = |cmd: &str, args: &[&str]| {
            std::process::Command::new(cmd)
                .args(args)
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
                .unwrap_or_default()
        };
        Machine {
            nproc: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            cpu_model,
            mem_total,
            free_h: run("free", &["-h"]),
            load_average_at_start: std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
                .to_owned(),
            kernel: run("uname", &["-r"]),
            postgres,
        }
    }
}

/// CPU time (user and system, every thread) a process has used so far, in seconds: `utime`
/// and `stime` of `/proc/PID/stat`, which count in USER_HZ (100 per second on Linux).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // the fields after the command name, which is in parentheses and may hold anything
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `state` is field 3 of the line; `utime` and `stime` are fields 14 and 15
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

/// The CPU time of some processes over one measurement, per 1,000 records.
pub struct CpuMeter {
    processes: Vec<(&'static str, u32)>,
    before: Vec<Option<f64>>,
}

impl CpuMeter {
    /// Starts measuring the processes (name, pid) from now.
    pub fn start(processes: &[(&'static str, u32)]) -> Self {
        CpuMeter {
            processes: processes.to_vec(),
            before: processes.iter().map(|(_, pid)| cpu_seconds(*pid)).collect(),
        }
    }

    /// Each process's CPU seconds per second of `elapsed` since the start (its share of a
    /// core).
    pub fn per_second(&self, elapsed: Duration) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for ((name, pid), before) in self.processes.iter().zip(&self.before) {
            let used = before.and_then(|b| cpu_seconds(*pid).map(|a| a - b));
            let share = used
                .filter(|_| !elapsed.is_zero())
                .map(|u| round(u / elapsed.as_secs_f64()));
            out.insert((*name).to_owned(), serde_json::json!(share));
        }
        serde_json::Value::Object(out)
    }

    /// Each process's CPU seconds since the start and per 1,000 of `records`.
    pub fn since_start(&self, records: u64) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for ((name, pid), before) in self.processes.iter().zip(&self.before) {
            let used = before.and_then(|b| cpu_seconds(*pid).map(|a| a - b));
            out.insert(
                (*name).to_owned(),
                serde_json::json!({
                    "cpu_seconds": used.map(round),
                    "cpu_ms_per_1000_records": used
                        .filter(|_| records > 0)
                        .map(|u| round(u * 1e6 / records as f64)),
                }),
            );
        }
        serde_json::Value::Object(out)
    }
}

/// Peak resident set size (VmHWM) of a process, in KiB.
pub fn vm_hwm_kib(pid: u32) -> Option<u64> {
    status_field(pid, "VmHWM:")
}

fn status_field(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_time_of_this_process_grows_with_work() {
        let pid = std::process::id();
        let before = cpu_seconds(pid).expect("this process's /proc/PID/stat");
        // busy until the count moves by 0.05 s (five ticks), however loaded the machine is
        let started = std::time::Instant::now();
        let mut x = 0u64;
        let mut after = before;
        while after - before < 0.05 && started.elapsed() < Duration::from_secs(30) {
            for _ in 0..1_000_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            after = cpu_seconds(pid).expect("this process's /proc/PID/stat");
        }
        assert!(after - before >= 0.05, "{before} -> {after}");
        assert!(cpu_seconds(u32::MAX).is_none());
    }

    #[test]
    fn percentiles_of_one_to_a_hundred() {
        let samples: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(&samples);
        assert_eq!(l.count, 100);
        assert_eq!(l.p50_ms, 50.0);
        assert_eq!(l.p99_ms, 99.0);
        assert_eq!(l.max_ms, 100.0);
        assert!(Latency::of(&[]).count == 0);
    }

    #[test]
    fn own_peak_memory_is_readable() {
        assert!(vm_hwm_kib(std::process::id()).is_some_and(|k| k > 0));
    }
}
