//! Sales teams, their directors and members, from the organisation stream: what
//! query-service's visibility of a sales director reads. Written event by event.

use async_trait::async_trait;
use domain::organisation::OrganisationEvent as O;
use sqlx::PgConnection;

use super::{to_i64, Batch, Effects, EventRef, ReadModel};
use crate::error::Result;

pub(crate) struct Teams;

#[async_trait]
impl ReadModel for Teams {
    fn name(&self) -> &'static str {
        "teams"
    }

    /// The organisation's events.
    fn consumes(&self, event: EventRef<'_>) -> bool {
        event.organisation_event().is_some()
    }

    fn tables(&self) -> &'static [&'static str] {
        &["teams", "team_members"]
    }

    async fn apply(
        &self,
        conn: &mut PgConnection,
        batch: &Batch<'_>,
        _: &mut Effects,
    ) -> Result<()> {
        for (_, r) in batch.organisation_events() {
            let seq = to_i64(r.metadata.sequence, "sequence")?;
            let at = r.metadata.occurred_at;
            let team = r.event.team_id().0;
            // Every event makes sure the team's row exists (as `evolve_organisation` does),
            // so a member or director event is never lost whatever came before it.
            sqlx::query(
                "INSERT INTO teams (team_id, last_sequence, updated_at) VALUES ($1, $2, $3)
                 ON CONFLICT (team_id) DO UPDATE SET
                     last_sequence = greatest(teams.last_sequence, EXCLUDED.last_sequence),
                     updated_at = greatest(teams.updated_at, EXCLUDED.updated_at)",
            )
            .bind(team)
            .bind(seq)
            .bind(at)
            .execute(&mut *conn)
            .await?;
            match &r.event {
                O::TeamCreated(e) => {
                    sqlx::query("UPDATE teams SET name = $2, created_at = $3 WHERE team_id = $1")
                        .bind(team)
                        .bind(&e.name)
                        .bind(at)
                        .execute(&mut *conn)
                        .await?;
                }
                O::TeamDirectorAssigned(e) => {
                    sqlx::query("UPDATE teams SET director = $2 WHERE team_id = $1")
                        .bind(team)
                        .bind(e.director.as_str())
                        .execute(&mut *conn)
                        .await?;
                }
                O::TeamMemberAdded(e) => {
                    sqlx::query(
                        "INSERT INTO team_members (team_id, member, added_at) VALUES ($1, $2, $3)
                         ON CONFLICT (team_id, member) DO NOTHING",
                    )
                    .bind(team)
                    .bind(e.member.as_str())
                    .bind(at)
                    .execute(&mut *conn)
                    .await?;
                }
                O::TeamMemberRemoved(e) => {
                    sqlx::query("DELETE FROM team_members WHERE team_id = $1 AND member = $2")
                        .bind(team)
                        .bind(e.member.as_str())
                        .execute(&mut *conn)
                        .await?;
                }
            }
        }
        Ok(())
    }
}
