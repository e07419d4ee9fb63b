//! Who may read what: the permission table decides whether a caller may use a route's query
//! operation at all (403), and the caller's reach which customers they see. A sales director's
//! reach comes from the `teams` read model (the organisation stream, projected like every
//! other stream), read per request from the live version.

use std::collections::{BTreeMap, BTreeSet};

use domain::access::{role_may, Principal, Reach, Visibility};
use domain::organisation::{OrganisationState, Team, TeamId};
use domain::UserId;
use infra::auth::forbidden;
use infra::problem::Problem;
use uuid::Uuid;

use crate::error::Result;
use crate::list::{Bind, ListQuery};
use crate::App;

/// `Ok` when one of the caller's roles may use `operation`, else the 403 naming it.
pub fn permit(caller: &Principal, operation: &str) -> std::result::Result<(), Problem> {
    caller
        .require(operation)
        .map_err(|d| forbidden(d.to_string()).with("operation", operation))
}

/// The customers the caller sees for `operation` (which they may use: see [`permit`]). Reads
/// the teams the caller directs only when one of their roles reaches a team.
pub async fn visibility(
    app: &App,
    schema: &str,
    caller: &Principal,
    operation: &str,
) -> Result<Visibility> {
    let directs = caller
        .roles
        .iter()
        .any(|r| role_may(*r, operation) && r.reach() == Reach::Team);
    let organisation = if directs {
        teams_directed_by(app, schema, &caller.subject).await?
    } else {
        OrganisationState::new()
    };
    Ok(caller
        .visible_owners(operation, &organisation)
        .unwrap_or_else(|| Visibility::Owners(BTreeSet::new())))
}

/// The teams `director` leads, with their members, from the read model: all of the
/// organisation a director's reach depends on.
async fn teams_directed_by(
    app: &App,
    schema: &str,
    director: &UserId,
) -> Result<OrganisationState> {
    let rows: Vec<(Uuid, String, Vec<String>)> = sqlx::query_as(&format!(
        "SELECT t.team_id, t.name,
                coalesce((SELECT array_agg(m.member) FROM {schema}.team_members m
                           WHERE m.team_id = t.team_id), '{{}}')
           FROM {schema}.teams t WHERE t.director = $1"
    ))
    .bind(director.as_str())
    .fetch_all(&app.pool)
    .await?;
    let teams: BTreeMap<TeamId, Team> = rows
        .into_iter()
        .map(|(id, name, members)| {
            (
                TeamId(id),
                Team {
                    name,
                    director: Some(director.clone()),
                    members: members.into_iter().map(UserId::new).collect(),
                },
            )
        })
        .collect();
    Ok(OrganisationState { version: 0, teams })
}

/// The owners a caller sees as a bound `text[]`; `None` (SQL NULL) when they see everyone.
pub fn owners(visibility: &Visibility) -> Option<Vec<String>> {
    match visibility {
        Visibility::All => None,
        Visibility::Owners(owners) => Some(owners.iter().map(|o| o.as_str().to_owned()).collect()),
    }
}

/// Leaves the rows of customers the caller does not see out of a list. `owner` is the
/// expression of the row's customer's owner, when the list has it; otherwise the row's
/// `customer_id` is looked up in `schema`'s customers (rows without a customer, such as the
/// organisation stream's audit entries, are then seen only by those who see everything).
pub fn only_visible(q: &mut ListQuery, visibility: &Visibility, schema: &str, owner: Option<&str>) {
    let Some(owners) = owners(visibility) else {
        return;
    };
    let p = q.bind(Bind::Texts(owners));
    match owner {
        Some(expr) => q.filter(format!("{expr} = ANY({p}::text[])")),
        None => q.filter(format!(
            "EXISTS (SELECT 1 FROM {schema}.customers v
                      WHERE v.customer_id = t.customer_id AND v.owner = ANY({p}::text[]))"
        )),
    };
}

/// Whether the caller sees a customer whose owner is `owner` (`None`: no such customer).
pub fn sees(visibility: &Visibility, owner: Option<&str>) -> bool {
    match owner {
        None => false,
        Some(o) => visibility.includes(Some(&UserId::new(o))),
    }
}
