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

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use crate::scenario::Scenario;
    use crate::*;

    fn team(n: u128) -> TeamId {
        TeamId(Uuid::from_u128(n))
    }

    fn who(s: &str) -> UserId {
        UserId::new(s)
    }

    /// Team `n`, `name`, directed by `director`, with `members`.
    fn team_of(n: u128, name: &str, director: &str, members: &[&str]) -> Vec<OrganisationCommand> {
        let created = CreateTeam {
            team_id: team(n),
            name: name.into(),
        };
        let directed = AssignTeamDirector {
            team_id: team(n),
            director: who(director),
        };
        let joined = members.iter().map(|m| {
            OrganisationCommand::from(AddTeamMember {
                team_id: team(n),
                member: who(m),
            })
        });
        [created.into(), directed.into()]
            .into_iter()
            .chain(joined)
            .collect()
    }

    /// Team 1 "east": director sd-wang, members am-li and am-zhao. Team 2 "north": director
    /// sd-zhou, member am-qian.
    fn org() -> Scenario<Organisation> {
        Scenario::new(organisation_stream())
            .given_commands(team_of(1, "east", "sd-wang", &["am-li", "am-zhao"]))
            .given_commands(team_of(2, "north", "sd-zhou", &["am-qian"]))
    }

    #[test]
    fn organisation_rules() {
        let mut org = org();
        assert_eq!(org.state().version, 7);
        assert!(org.state().directs(&who("sd-wang"), &who("am-li")));
        assert!(!org.state().directs(&who("sd-wang"), &who("am-qian")));
        assert!(!org.state().directs(&who("am-li"), &who("am-li")));
        // a team id and a team name are unique
        let again = org.refuse(
            CreateTeam {
                team_id: team(1),
                name: "other".into(),
            }
            .into(),
        );
        assert!(matches!(
            again,
            DomainError::AlreadyExists {
                field: "team_id",
                ..
            }
        ));
        let same_name = org.refuse(
            CreateTeam {
                team_id: team(5),
                name: "east".into(),
            }
            .into(),
        );
        assert_eq!(same_name.field(), Some("name"));
        let blank = org.refuse(
            CreateTeam {
                team_id: team(5),
                name: "  ".into(),
            }
            .into(),
        );
        assert_eq!(blank.field(), Some("name"));
        // unknown team
        let unknown = org.refuse(
            AddTeamMember {
                team_id: team(9),
                member: who("x"),
            }
            .into(),
        );
        assert_eq!(unknown.kind(), ErrorKind::NotFound);
        // adding a member twice, or the same director again, changes nothing
        let org = org
            .when(
                AddTeamMember {
                    team_id: team(1),
                    member: who("am-li"),
                }
                .into(),
            )
            .then([])
            .when(
                AssignTeamDirector {
                    team_id: team(1),
                    director: who("sd-wang"),
                }
                .into(),
            )
            .then([]);
        // a new director replaces the old one, and says so
        let after = org
            .clone()
            .when(
                AssignTeamDirector {
                    team_id: team(1),
                    director: who("sd-zhou"),
                }
                .into(),
            )
            .then([OrganisationEvent::TeamDirectorAssigned(
                TeamDirectorAssigned {
                    team_id: team(1),
                    director: who("sd-zhou"),
                    previous: Some(who("sd-wang")),
                },
            )]);
        assert!(after.state().directs(&who("sd-zhou"), &who("am-li")));
        assert!(!after.state().directs(&who("sd-wang"), &who("am-li")));
        let mut org = org;
        // removing someone who is not a member
        let missing = org.refuse(
            RemoveTeamMember {
                team_id: team(1),
                member: who("am-qian"),
            }
            .into(),
        );
        assert_eq!(missing.field(), Some("member"));
        // empty user ids are refused
        let empty = org.refuse(
            AddTeamMember {
                team_id: team(1),
                member: who(""),
            }
            .into(),
        );
        assert_eq!(empty.field(), Some("member"));
        // recorded events must come in sequence
        let e = OrganisationEvent::TeamMemberAdded(TeamMemberAdded {
            team_id: team(1),
            member: who("am-x"),
        });
        assert!(Organisation::apply_recorded(org.state().clone(), 9, &e).is_err());
        assert_eq!(
            Organisation::apply_recorded(org.state().clone(), 8, &e)
                .unwrap()
                .version,
            8
        );
    }
}
