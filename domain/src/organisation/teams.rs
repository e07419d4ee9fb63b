//! The sales teams: set up, given a director, members added and removed.

use super::{
    OrganisationCommand, OrganisationEvent, OrganisationState, TeamCreated, TeamDirectorAssigned,
    TeamMemberAdded, TeamMemberRemoved,
};
use crate::error::DomainError;
use crate::ids::UserId;
use crate::rules::{exists, non_empty, not_found};

/// Accepts or refuses an organisation command. An empty `Ok` means nothing changes (adding a
/// member who is already one, assigning the current director).
pub fn decide_organisation(
    state: &OrganisationState,
    command: &OrganisationCommand,
) -> Result<Vec<OrganisationEvent>, DomainError> {
    crate::limits::check_values(command)?;
    let team_id = command.team_id();
    if let OrganisationCommand::CreateTeam(c) = command {
        if state.teams.contains_key(&team_id) {
            return Err(exists("team", "team_id", team_id));
        }
        non_empty(&c.name, "name")?;
        let name = c.name.trim();
        if state.teams.values().any(|t| t.name == name) {
            // a conflict with the current state (409), not a malformed name
            return Err(DomainError::Conflicting {
                field: "name".into(),
                reason: "another team has this name".into(),
            });
        }
        return Ok(vec![TeamCreated {
            team_id,
            name: name.to_owned(),
        }
        .into()]);
    }
    let Some(team) = state.teams.get(&team_id) else {
        return Err(not_found("team", "team_id", team_id));
    };
    match command {
        OrganisationCommand::CreateTeam(_) => Ok(vec![]),
        OrganisationCommand::AssignTeamDirector(c) => {
            user(&c.director, "director")?;
            if team.director.as_ref() == Some(&c.director) {
                return Ok(vec![]);
            }
            if let Some((_, member_of)) = state.team_of_member(&c.director) {
                return Err(DomainError::Conflicting {
                    field: "director".into(),
                    reason: format!(
                        "`{}` is a member of team `{}`; a director directs teams and is no team's member",
                        c.director, member_of.name
                    ),
                });
            }
            Ok(vec![TeamDirectorAssigned {
                team_id,
                director: c.director.clone(),
                previous: team.director.clone(),
            }
            .into()])
        }
        OrganisationCommand::AddTeamMember(c) => {
            user(&c.member, "member")?;
            if team.members.contains(&c.member) {
                return Ok(vec![]);
            }
            // One team per member, and directors are nobody's members: otherwise a director
            // could take over another team's account managers (and their customers), or a
            // director, into their own team.
            if let Some((_, other)) = state.team_of_member(&c.member) {
                return Err(DomainError::Conflicting {
                    field: "member".into(),
                    reason: format!(
                        "`{}` is a member of team `{}`; remove them there first",
                        c.member, other.name
                    ),
                });
            }
            if state
                .teams
                .values()
                .any(|t| t.director.as_ref() == Some(&c.member))
            {
                return Err(DomainError::Conflicting {
                    field: "member".into(),
                    reason: format!(
                        "`{}` directs a team and cannot be a member of one",
                        c.member
                    ),
                });
            }
            Ok(vec![TeamMemberAdded {
                team_id,
                member: c.member.clone(),
            }
            .into()])
        }
        OrganisationCommand::RemoveTeamMember(c) => {
            if !team.members.contains(&c.member) {
                return Err(not_found("team member", "member", &c.member));
            }
            Ok(vec![TeamMemberRemoved {
                team_id,
                member: c.member.clone(),
            }
            .into()])
        }
    }
}

fn user(id: &UserId, field: &str) -> Result<(), DomainError> {
    let s = id.as_str();
    if s.trim().is_empty() || s.len() > 200 || s.chars().any(char::is_control) {
        return Err(DomainError::invalid(
            field,
            "must be a user id of 1 to 200 visible characters",
        ));
    }
    Ok(())
}
