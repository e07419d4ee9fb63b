//! PostgreSQL for tests: a fresh database per test on `CRM_TEST_DATABASE_URL` (default
//! `postgres://postgres@127.0.0.1:5432/test`), dropped when the test ends, also when it fails,
//! so tests run in parallel without seeing each other.
#![allow(clippy::expect_used)]

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, PgPool};
use uuid::Uuid;

/// Where test databases are created.
pub const DATABASE_URL_ENV: &str = "CRM_TEST_DATABASE_URL";

fn base_url() -> String {
    std::env::var(DATABASE_URL_ENV)
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned())
}

fn admin_options() -> PgConnectOptions {
    base_url()
        .parse::<PgConnectOptions>()
        .expect("database url")
        .disable_statement_logging()
}

/// A database of its own, dropped when the test ends (also when it fails).
pub struct TestDb {
    pub pool: PgPool,
    name: String,
}

impl TestDb {
    /// Creates the database `<prefix>_<uuid>` and connects to it. Panics with the reason when
    /// PostgreSQL cannot be reached.
    pub async fn new(prefix: &str) -> TestDb {
        let name = format!("{prefix}_{}", Uuid::now_v7().simple());
        let mut admin = admin_options()
            .connect()
            .await
            .expect("connect to the test database");
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut admin)
            .await
            .expect("create database");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect_with(admin_options().database(&name))
            .await
            .expect("connect to the new database");
        TestDb { pool, name }
    }

    /// The URL of this database, for a child process.
    pub fn url(&self) -> String {
        let base = base_url();
        let base = base.split('?').next().unwrap_or_default();
        let prefix = base.rsplit_once('/').map(|(p, _)| p).unwrap_or(base);
        format!("{prefix}/{}", self.name)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let pool = self.pool.clone();
        // a runtime of its own: Drop cannot await, and the test's runtime may be gone
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                drop(pool);
                if let Ok(mut admin) = admin_options().connect().await {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut admin)
                        .await;
                }
            });
        })
        .join();
    }
}
