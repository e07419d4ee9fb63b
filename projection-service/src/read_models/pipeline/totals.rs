//! The pipeline's totals (`read-store/migrations/read_model/0005_pipeline_totals.sql`): per
//! customer owner, what the funnel, time in stage, win rate, sales cycle and forecast add up,
//! so a request reads a few rows instead of every opportunity. A batch moves them by what its
//! opportunities counted for before it ([`Totals::before`]) and after it ([`Totals::after`]):
//! one statement per table, its rows locked in key order, so batches of different partitions
//! applied at once queue on a shared row at worst, never deadlock.

use sqlx::{PgConnection, Row};
use uuid::Uuid;

use crate::error::Result;

/// A table of totals: its key and value columns (with their SQL types), and the function
/// (of a set of opportunities) that gives what they count for in it.
pub(super) struct Totals {
    table: &'static str,
    of: &'static str,
    keys: &'static [(&'static str, &'static str)],
    values: &'static [(&'static str, &'static str)],
    /// True of a row that counts nothing any more (it is removed, as a rebuild would not
    /// have it).
    empty: &'static str,
}

pub(super) const STAGES: Totals = Totals {
    table: "pipeline_stage_totals",
    of: "pipeline_stage_totals_of",
    keys: &[("customer_owner", "text"), ("stage", "text")],
    values: &[
        ("reached", "bigint"),
        ("visits", "bigint"),
        ("ended_seconds", "numeric"),
        ("open_count", "bigint"),
        ("open_amount", "bigint"),
        ("open_since_seconds", "numeric"),
    ],
    empty: "reached = 0",
};

pub(super) const OWNERS: Totals = Totals {
    table: "pipeline_owner_totals",
    of: "pipeline_owner_totals_of",
    keys: &[("customer_owner", "text")],
    values: &[
        ("open_count", "bigint"),
        ("won_count", "bigint"),
        ("lost_count", "bigint"),
        ("won_cycle_seconds", "numeric"),
    ],
    empty: "open_count + won_count + lost_count = 0",
};

pub(super) const FORECAST: Totals = Totals {
    table: "pipeline_forecast",
    of: "pipeline_forecast_of",
    keys: &[
        ("customer_owner", "text"),
        ("month", "date"),
        ("owner", "text"),
    ],
    values: &[
        ("opportunities", "bigint"),
        ("amount", "bigint"),
        ("weighted_amount", "numeric"),
    ],
    empty: "opportunities = 0",
};

/// Every table of totals, in the order a batch moves them.
pub(super) const ALL: [&Totals; 3] = [&STAGES, &OWNERS, &FORECAST];

/// What some opportunities counted for in one table of totals: its rows, column by column
/// (every column as text, exact: numeric seconds keep their microseconds).
pub(super) struct Before {
    columns: Vec<Vec<Option<String>>>,
}

impl Totals {
    fn columns(&self) -> impl Iterator<Item = &(&'static str, &'static str)> {
        self.keys.iter().chain(self.values)
    }

    /// What `ids` count for now (before the batch changes them).
    pub(super) async fn before(&self, conn: &mut PgConnection, ids: &[Uuid]) -> Result<Before> {
        let select: Vec<String> = self
            .columns()
            .map(|(c, _)| format!("c.{c}::text"))
            .collect();
        let rows = sqlx::query(&format!(
            "SELECT {} FROM {}($1) c",
            select.join(", "),
            self.of
        ))
        .bind(ids)
        .fetch_all(&mut *conn)
        .await?;
        let mut columns = vec![Vec::with_capacity(rows.len()); select.len()];
        for row in &rows {
            for (i, column) in columns.iter_mut().enumerate() {
                column.push(row.try_get::<Option<String>, _>(i)?);
            }
        }
        Ok(Before { columns })
    }

    /// Moves the totals by what `ids` count for now less what they counted for `before`:
    /// one upsert in key order; rows left counting nothing are removed.
    pub(super) async fn after(
        &self,
        conn: &mut PgConnection,
        ids: &[Uuid],
        before: Before,
    ) -> Result<()> {
        let keys: Vec<&str> = self.keys.iter().map(|(k, _)| *k).collect();
        let all: Vec<&str> = self.columns().map(|(c, _)| *c).collect();
        let sums: Vec<String> = self
            .values
            .iter()
            .map(|(v, ty)| format!("sum(c.{v})::{ty}"))
            .collect();
        let params: Vec<String> = (0..all.len())
            .map(|i| format!("${}::text[]", i + 2))
            .collect();
        let earlier: Vec<String> = self
            .keys
            .iter()
            .map(|(k, ty)| format!("x.{k}::{ty}"))
            .chain(self.values.iter().map(|(v, ty)| format!("-(x.{v}::{ty})")))
            .collect();
        let moved: Vec<String> = self
            .values
            .iter()
            .map(|(v, _)| format!("{v} = t.{v} + excluded.{v}"))
            .collect();
        let key_list = keys.join(", ");
        let returned: Vec<String> = keys.iter().map(|k| format!("{k}::text")).collect();
        let c_keys: Vec<String> = keys.iter().map(|k| format!("c.{k}")).collect();
        let sql = format!(
            "INSERT INTO {table} AS t ({all})
             SELECT {c_keys}, {sums}
               FROM (SELECT {all} FROM {of}($1)
                     UNION ALL
                     SELECT {earlier} FROM unnest({params}) AS x({all})) c
              GROUP BY {c_keys}
              ORDER BY {c_keys}
             ON CONFLICT ({key_list}) DO UPDATE SET {moved}
             RETURNING {returned}, {empty} AS empty",
            table = self.table,
            all = all.join(", "),
            c_keys = c_keys.join(", "),
            sums = sums.join(", "),
            of = self.of,
            earlier = earlier.join(", "),
            params = params.join(", "),
            moved = moved.join(", "),
            empty = self.empty,
            returned = returned.join(", "),
        );
        let mut q = sqlx::query(&sql).bind(ids);
        for column in &before.columns {
            q = q.bind(column);
        }
        let rows = q.fetch_all(&mut *conn).await?;
        // the keys of the rows that count nothing now, column by column, as text
        let mut gone = vec![Vec::new(); keys.len()];
        for row in &rows {
            if row.try_get::<bool, _>(keys.len())? {
                for (i, column) in gone.iter_mut().enumerate() {
                    column.push(row.try_get::<String, _>(i)?);
                }
            }
        }
        if gone.first().is_some_and(|g| !g.is_empty()) {
            let matched: Vec<String> = self
                .keys
                .iter()
                .enumerate()
                .map(|(i, (k, ty))| format!("t.{k} = g.c{i}::{ty}"))
                .collect();
            let names: Vec<String> = (0..keys.len()).map(|i| format!("c{i}")).collect();
            let params: Vec<String> = (0..keys.len())
                .map(|i| format!("${}::text[]", i + 1))
                .collect();
            let sql = format!(
                "DELETE FROM {} t USING unnest({}) AS g({}) WHERE {} AND ({})",
                self.table,
                params.join(", "),
                names.join(", "),
                matched.join(" AND "),
                self.empty,
            );
            let mut q = sqlx::query(&sql);
            for column in &gone {
                q = q.bind(column);
            }
            q.execute(&mut *conn).await?;
        }
        Ok(())
    }
}
