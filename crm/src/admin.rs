//! The read-model store `crm` uses (a given PostgreSQL, or the private cluster of the data
//! directory), and the operations on it: `crm replay` and `crm migrate`.

use std::path::Path;

use anyhow::{bail, Context};
use infra::config::KafkaArgs;
use infra::kafka::provision_topics;
pub use projection_service::cli::DatabaseArgs;
use projection_service::cli::{replay_with_progress, ProjectionArgs, ReplayArgs};
use projection_service::{
    ensure_version, list_versions, migrate_control, EventSource, ProjectionVersion,
};
use sqlx::PgPool;

use crate::datadir::{self, DataDirArgs, DataDirLock};
use crate::postgres::PrivatePostgres;

/// The read-model database of one run.
pub struct Store {
    pub url: String,
    /// The private cluster, when this process started it (stopped by [`Store::close`]).
    private: Option<PrivatePostgres>,
}

impl Store {
    /// `--database-url`, else the data directory's private cluster: started here (the
    /// caller holds the data directory's lock), or, with `running_elsewhere`, the one a
    /// running `crm up` started.
    pub async fn open(
        args: &DatabaseArgs,
        data_dir: &Path,
        running_elsewhere: bool,
    ) -> anyhow::Result<Store> {
        if let Some(url) = &args.database_url {
            return Ok(Store {
                url: url.clone(),
                private: None,
            });
        }
        let dir = datadir::pg_dir(data_dir);
        if running_elsewhere {
            if !PrivatePostgres::is_running(&dir) {
                bail!(
                    "the data directory {} is locked by another crm process, but its PostgreSQL is not running",
                    data_dir.display()
                );
            }
            return Ok(Store {
                url: PrivatePostgres::url_for(&dir)?,
                private: None,
            });
        }
        let pg = PrivatePostgres::start(&dir)
            .await
            .context("starting the embedded PostgreSQL (or pass --database-url)")?;
        Ok(Store {
            url: pg.url().to_owned(),
            private: Some(pg),
        })
    }

    pub async fn pool(&self, connections: u32) -> anyhow::Result<PgPool> {
        projection_service::cli::pool(&self.url, connections)
            .await
            .context("connecting to the read-model database")
    }

    /// Stops the private cluster if this process started it.
    pub async fn close(self) {
        if let Some(pg) = self.private {
            pg.stop().await;
        }
    }
}

#[derive(Debug, clap::Args)]
pub struct ReplayCmd {
    #[command(flatten)]
    replay: ReplayArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    data: DataDirArgs,
}

impl ReplayCmd {
    pub async fn run(self) -> anyhow::Result<()> {
        if let Some(settings) = self.replay.kafka.settings("crm-replay") {
            let store = Store::open(&self.database, &self.data.dir, false).await?;
            let result = async {
                provision_topics(&settings)
                    .await
                    .context("provisioning topics")?;
                let pool = store.pool(self.database.database_max_connections).await?;
                replay_with_progress(pool, EventSource::Kafka(settings), &self.replay)
                    .await
                    .context("replay")
            }
            .await;
            store.close().await;
            return result;
        }
        // the embedded log belongs to one process at a time
        let Some(_lock) = DataDirLock::try_acquire(&self.data.dir)? else {
            bail!(
                "`crm up` is running on {}: the embedded log belongs to it. Stop it, run the replay, and start it again (it serves the new version once the replay switched over). Replays beside a running platform need Kafka (--kafka-brokers)",
                self.data.dir.display()
            );
        };
        let topics = datadir::open_topics(&self.data.dir, self.replay.kafka.partitions)?;
        let store = Store::open(&self.database, &self.data.dir, false).await?;
        let result = async {
            let pool = store.pool(self.database.database_max_connections).await?;
            replay_with_progress(pool, EventSource::Embedded(topics), &self.replay)
                .await
                .context("replay")
        }
        .await;
        store.close().await;
        result
    }
}

#[derive(Debug, clap::Args)]
pub struct MigrateCmd {
    #[command(flatten)]
    projection: ProjectionArgs,
    /// Accepted as `crm up` takes them (migrating needs only the database).
    #[command(flatten)]
    _kafka: KafkaArgs,
    #[command(flatten)]
    database: DatabaseArgs,
    #[command(flatten)]
    data: DataDirArgs,
}

impl MigrateCmd {
    pub async fn run(self) -> anyhow::Result<()> {
        // with the embedded database: beside a running `crm up` (its cluster), or alone
        let lock = match &self.database.database_url {
            Some(_) => None,
            None => DataDirLock::try_acquire(&self.data.dir)?,
        };
        let running_elsewhere = self.database.database_url.is_none() && lock.is_none();
        let store = Store::open(&self.database, &self.data.dir, running_elsewhere).await?;
        let result = async {
            let pool = store.pool(2).await?;
            migrate(&pool, &self.projection.projection).await
        }
        .await;
        store.close().await;
        drop(lock);
        result
    }
}

/// Migrates the control tables and every registered version of `name` (version 1 when
/// there is none yet).
async fn migrate(pool: &PgPool, name: &str) -> anyhow::Result<()> {
    migrate_control(pool)
        .await
        .context("migrating the control tables")?;
    let mut versions: Vec<ProjectionVersion> = list_versions(pool, Some(name))
        .await?
        .into_iter()
        .map(|v| v.version)
        .collect();
    if versions.is_empty() {
        versions.push(ProjectionVersion::new(name.to_owned(), 1)?);
    }
    for pv in versions {
        let status = ensure_version(pool, &pv)
            .await
            .with_context(|| format!("migrating {}", pv.schema()))?;
        println!("{} migrated ({})", pv.schema(), status.as_str());
    }
    Ok(())
}
