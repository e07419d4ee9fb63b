//! `crm-bench`: the platform's figures, each beside its physical limit measured in the same
//! run (see docs/benchmarks.md).
//!
//! ```sh
//! cargo run --release -p crm-bench -- run --preset small --out bench/results/small.json
//! ```
//!
//! `run` starts a private broker (nisshi with its memory engine, unless `--brokers`), a fresh
//! PostgreSQL database, and the services as separate processes (this binary in its `serve-*`
//! and `replay` roles), generates the data set into files and loads it for real, then
//! measures: ingest through the HTTP batch endpoint vs. a bare producer, command latency at a
//! fixed rate, a full replay vs. a bare `COPY` of the same rows, the embedded default,
//! freshness (append to visible in the 360 view) on the Kafka-backed services and on the real
//! `crm up` binary (the embedded default as a user runs it: build `-p crm` too), query latency
//! and throughput, the peak memory of each process, and the wall time of each phase.

mod gen;
mod procs;
mod run;
mod serve;
mod soak;
mod spool;
mod stats;
mod up;
mod up_path;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "crm-bench", version, about = "Measures the CRM platform")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run a preset and print (and optionally write) its figures as JSON.
    Run(run::RunArgs),
    /// The services at a steady load for minutes, sampled for memory, descriptors and
    /// PostgreSQL connections (what must stay flat).
    Soak(soak::SoakArgs),
    /// A preset through the real `crm up` (command API -> embedded log -> projection), then
    /// `crm replay` of the whole log: the large preset's real path on one machine.
    EmbeddedPath(up_path::EmbeddedPathArgs),
    /// (role) command-service on the given broker, every partition owned.
    ServeCommand(serve::ServeCommandArgs),
    /// (role) projection-service following the live version.
    ServeProjection(serve::ProjectionArgs),
    /// (role) query-service.
    ServeQuery(serve::ServeQueryArgs),
    /// (role) a full replay into a new version; prints one JSON line.
    Replay(serve::ReplayArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        match cli.command {
            Cmd::Run(a) => run::run(a).await,
            Cmd::Soak(a) => soak::soak(a).await,
            Cmd::EmbeddedPath(a) => up_path::embedded_path(a).await,
            Cmd::ServeCommand(a) => {
                init_logs();
                serve::command(a).await
            }
            Cmd::ServeProjection(a) => {
                init_logs();
                serve::projection(a).await
            }
            Cmd::ServeQuery(a) => {
                init_logs();
                serve::query(a).await
            }
            Cmd::Replay(a) => {
                init_logs();
                serve::replay(a).await
            }
        }
    })
}

/// The services' logs go to files under the run's work directory; the harness starts them
/// with `RUST_LOG=warn` unless told otherwise.
fn init_logs() {
    infra::config::init_tracing(infra::config::LogFormat::Text);
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// The services' settings flattened into the roles make one consistent command line.
    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}
