//! The organisation stream: sales teams (销售团队), their directors and their members. It is
//! event-sourced like every customer: administrators and directors change it through
//! [`OrganisationCommand`]s, [`decide_organisation`] accepts or refuses them against the
//! [`OrganisationState`], and [`evolve_organisation`] folds the facts in.
//!
//! Record visibility needs it: a sales director sees the customers owned by the members of the
//! teams they direct (see [`crate::access`]). Customer ownership itself lives in each
//! customer's stream (`CustomerRegistered.owner`, `OwnerReassigned`).
//!
//! There is one organisation, so one stream. On the log it travels in the customer-events
//! topic under the fixed key [`ORGANISATION_STREAM_ID`] (the nil UUID, which no customer can
//! have: customer ids are UUIDv7), so it goes through the same single-writer machinery: the
//! owner of that key's partition decides its commands and appends with that partition's
//! transactional writer.

use std::collections::{BTreeMap, BTreeSet};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

mod teams;

pub use teams::decide_organisation;

use crate::access::{authorize_organisation, Denial, Principal, Via};
use crate::error::DomainError;
use crate::ids::{CustomerId, UserId};
use crate::rules::not_found;
use crate::stream::{Aggregate, Events, StreamKey};

/// The key (and CloudEvents subject) of the organisation stream: the nil UUID.
pub const ORGANISATION_STREAM_ID: Uuid = Uuid::nil();

/// The organisation stream's id as the stream subject the envelope carries.
pub fn organisation_stream() -> CustomerId {
    CustomerId(ORGANISATION_STREAM_ID)
}

/// A sales team (销售团队).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct TeamId(pub Uuid);

impl std::fmt::Display for TeamId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for TeamId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

// ---------------------------------------------------------------- events

/// A sales team was set up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TeamCreated {
    pub team_id: TeamId,
    pub name: String,
}

/// A sales director (销售主管) now leads the team, replacing any previous one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TeamDirectorAssigned {
    pub team_id: TeamId,
    pub director: UserId,
    /// The director it replaced, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<UserId>,
}

/// An account manager (or other staff) joined the team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TeamMemberAdded {
    pub team_id: TeamId,
    pub member: UserId,
}

/// A member left the team.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TeamMemberRemoved {
    pub team_id: TeamId,
    pub member: UserId,
}

crate::stream_events! {
    /// Every fact of the organisation stream.
    pub enum OrganisationEvent;
    stream = fixed organisation_stream();
    TeamCreated(TeamCreated) = "crm.organisation.team_created.v1";
    TeamDirectorAssigned(TeamDirectorAssigned) = "crm.organisation.team_director_assigned.v1";
    TeamMemberAdded(TeamMemberAdded) = "crm.organisation.team_member_added.v1";
    TeamMemberRemoved(TeamMemberRemoved) = "crm.organisation.team_member_removed.v1";
}

impl OrganisationEvent {
    /// The team the event is about.
    pub fn team_id(&self) -> TeamId {
        match self {
            Self::TeamCreated(e) => e.team_id,
            Self::TeamDirectorAssigned(e) => e.team_id,
            Self::TeamMemberAdded(e) => e.team_id,
            Self::TeamMemberRemoved(e) => e.team_id,
        }
    }
}

/// Every current organisation event type.
pub const ORGANISATION_EVENT_TYPES: &[&str] = <OrganisationEvent as Events>::TYPES;

/// The JSON Schema (draft 2020-12) of each current organisation event type.
pub fn organisation_event_schemas() -> Vec<(&'static str, schemars::Schema)> {
    <OrganisationEvent as Events>::schemas()
}

// ---------------------------------------------------------------- commands

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTeam {
    pub team_id: TeamId,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignTeamDirector {
    pub team_id: TeamId,
    pub director: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AddTeamMember {
    pub team_id: TeamId,
    pub member: UserId,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RemoveTeamMember {
    pub team_id: TeamId,
    pub member: UserId,
}

crate::stream_commands! {
    /// Every command the organisation stream accepts.
    pub enum OrganisationCommand for Organisation {
        CreateTeam = "create_team",
        AssignTeamDirector = "assign_team_director",
        AddTeamMember = "add_team_member",
        RemoveTeamMember = "remove_team_member",
    }
}

impl OrganisationCommand {
    /// The team the command is about.
    pub fn team_id(&self) -> TeamId {
        match self {
            OrganisationCommand::CreateTeam(c) => c.team_id,
            OrganisationCommand::AssignTeamDirector(c) => c.team_id,
            OrganisationCommand::AddTeamMember(c) => c.team_id,
            OrganisationCommand::RemoveTeamMember(c) => c.team_id,
        }
    }
}

// ---------------------------------------------------------------- state

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Team {
    pub name: String,
    pub director: Option<UserId>,
    pub members: BTreeSet<UserId>,
}

/// The organisation stream, folded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OrganisationState {
    /// Sequence number of the last event applied; 0 for an empty stream.
    pub version: u64,
    pub teams: BTreeMap<TeamId, Team>,
}

impl OrganisationState {
    pub fn new() -> Self {
        Self::default()
    }

    /// The team `user` is a member of, if any (a user is a member of at most one).
    pub fn team_of_member(&self, user: &UserId) -> Option<(&TeamId, &Team)> {
        self.teams.iter().find(|(_, t)| t.members.contains(user))
    }

    pub fn next_sequence(&self) -> u64 {
        self.version + 1
    }

    /// The teams `director` leads.
    pub fn teams_directed_by<'a>(
        &'a self,
        director: &'a UserId,
    ) -> impl Iterator<Item = (&'a TeamId, &'a Team)> + 'a {
        self.teams
            .iter()
            .filter(move |(_, t)| t.director.as_ref() == Some(director))
    }

    /// Whether `director` leads a team `user` is a member of.
    pub fn directs(&self, director: &UserId, user: &UserId) -> bool {
        self.teams_directed_by(director)
            .any(|(_, t)| t.members.contains(user))
    }

    /// Everyone whose customers `director` sees: the director and the members of their teams.
    pub fn reach_of(&self, director: &UserId) -> BTreeSet<UserId> {
        let mut users: BTreeSet<UserId> = self
            .teams_directed_by(director)
            .flat_map(|(_, t)| t.members.iter().cloned())
            .collect();
        users.insert(director.clone());
        users
    }
}

/// Applies one organisation event. Total, like [`crate::evolve`].
pub fn evolve_organisation(
    mut state: OrganisationState,
    event: &OrganisationEvent,
) -> OrganisationState {
    state.version += 1;
    match event {
        OrganisationEvent::TeamCreated(e) => {
            state.teams.insert(
                e.team_id,
                Team {
                    name: e.name.clone(),
                    ..Team::default()
                },
            );
        }
        OrganisationEvent::TeamDirectorAssigned(e) => {
            state.teams.entry(e.team_id).or_default().director = Some(e.director.clone());
        }
        OrganisationEvent::TeamMemberAdded(e) => {
            state
                .teams
                .entry(e.team_id)
                .or_default()
                .members
                .insert(e.member.clone());
        }
        OrganisationEvent::TeamMemberRemoved(e) => {
            if let Some(t) = state.teams.get_mut(&e.team_id) {
                t.members.remove(&e.member);
            }
        }
    }
    state
}

/// The organisation as an [`Aggregate`]: one stream under [`ORGANISATION_STREAM_ID`].
pub struct Organisation;

impl Aggregate for Organisation {
    const NAME: &'static str = "organisation";
    const KEY: StreamKey = StreamKey::Single(ORGANISATION_STREAM_ID);
    type Event = OrganisationEvent;
    type Command = OrganisationCommand;
    type State = OrganisationState;

    fn initial(_stream: CustomerId) -> OrganisationState {
        OrganisationState::new()
    }

    fn stream(_state: &OrganisationState) -> CustomerId {
        organisation_stream()
    }

    fn version(state: &OrganisationState) -> u64 {
        state.version
    }

    fn decide(
        state: &OrganisationState,
        command: &OrganisationCommand,
    ) -> Result<Vec<OrganisationEvent>, DomainError> {
        decide_organisation(state, command)
    }

    fn evolve(state: OrganisationState, event: &OrganisationEvent) -> OrganisationState {
        evolve_organisation(state, event)
    }

    fn authorize(
        principal: &Principal,
        via: Via,
        _organisation: &OrganisationState,
        state: &OrganisationState,
        command: &OrganisationCommand,
    ) -> Result<(), Denial> {
        match via {
            Via::Command => authorize_organisation(principal, state, command),
            // no channel carries organisation commands
            Via::Ingest => Err(Denial::Forbidden {
                operation: command.name().to_owned(),
                field: None,
                reason: "organisation commands come only through their own routes".into(),
            }),
        }
    }

    fn hidden(command: &OrganisationCommand) -> DomainError {
        not_found("team", "team_id", command.team_id())
    }
}
