//! Who may do what, and see which customers. Pure: the services authenticate a caller into a
//! [`Principal`] and ask these functions.
//!
//! - [`PERMISSIONS`] is the one permission table: for every command (by its name,
//!   [`CommandName::NAME`]), ingest channel and query, the roles that may use it. Anything not
//!   in it is refused (closed by default).
//! - [`Reach`] says which customers a role sees: an account manager their own, a sales director
//!   those owned by the members of the teams they direct (and their own), everyone else all.
//! - [`authorize_command`] and [`authorize_organisation`] combine both for one command;
//!   [`Principal::visible_owners`] is what a read model filters by.
//!
//! A refusal is [`Denial::Forbidden`] (the role may not use the operation: 403) or
//! [`Denial::Hidden`] (the record is outside the caller's reach: answered as "not found", so
//! that its existence does not leak).

use std::collections::BTreeSet;
use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::command::*;
use crate::ids::UserId;
use crate::organisation::{
    AddTeamMember, AssignTeamDirector, CreateTeam, OrganisationCommand, OrganisationState,
    RemoveTeamMember,
};
use crate::stream::CommandName;

/// The roles of DOMAIN.md.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// 系统管理员: manages users, teams and rights; may do everything.
    Administrator,
    /// 销售主管: opportunities, assignments, plans, reports; sees the team's customers.
    SalesDirector,
    /// 客户经理: maintains the customers they own.
    AccountManager,
    /// 高管: reads everything, changes nothing.
    Executive,
    /// Customer service, field engineers, call-centre agents: touchpoints, service, complaints.
    ServiceAgent,
    /// Traces every state change through the audit trail.
    Auditor,
    /// A program publishing contacts from a channel: only appends touchpoints.
    ChannelAdapter,
}

impl Role {
    pub const ALL: [Role; 7] = [
        Role::Administrator,
        Role::SalesDirector,
        Role::AccountManager,
        Role::Executive,
        Role::ServiceAgent,
        Role::Auditor,
        Role::ChannelAdapter,
    ];

    /// The role's name in tokens (`roles` claim), API-key settings and the permission table.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Administrator => "administrator",
            Role::SalesDirector => "sales_director",
            Role::AccountManager => "account_manager",
            Role::Executive => "executive",
            Role::ServiceAgent => "service_agent",
            Role::Auditor => "auditor",
            Role::ChannelAdapter => "channel_adapter",
        }
    }

    /// Which customers the role reaches, for the operations the table grants it.
    pub fn reach(self) -> Reach {
        match self {
            Role::AccountManager => Reach::Own,
            Role::SalesDirector => Reach::Team,
            Role::Administrator
            | Role::Executive
            | Role::ServiceAgent
            | Role::Auditor
            | Role::ChannelAdapter => Reach::All,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown role `{0}` (known: administrator, sales_director, account_manager, executive, service_agent, auditor, channel_adapter)")]
pub struct UnknownRole(pub String);

impl std::str::FromStr for Role {
    type Err = UnknownRole;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| UnknownRole(s.to_owned()))
    }
}

/// Which customers a role sees and changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reach {
    /// Only the customers they own.
    Own,
    /// Their own, and those owned by members of the teams they direct.
    Team,
    /// Every customer.
    All,
}

impl Reach {
    pub fn as_str(self) -> &'static str {
        match self {
            Reach::Own => "own customers",
            Reach::Team => "own and team members' customers",
            Reach::All => "all customers",
        }
    }
}

/// What an operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OperationKind {
    /// A command on one customer's stream (command-service).
    Command,
    /// A command on the organisation stream (command-service).
    OrganisationCommand,
    /// Touchpoints in bulk from channels: the batch endpoint and the inbound topic.
    Ingest,
    /// A read (query-service).
    Query,
}

impl OperationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationKind::Command => "command",
            OperationKind::OrganisationCommand => "organisation command",
            OperationKind::Ingest => "ingest",
            OperationKind::Query => "query",
        }
    }
}

/// What the caller's [`Reach`] is checked against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One existing customer: its owner must be within reach (else "not found").
    Customer,
    /// A customer being registered: its new owner must be within reach.
    NewCustomer,
    /// Every customer the caller reaches (lists: the others are left out).
    Customers,
    /// A team: directors only change the teams they direct (else "not found").
    Team,
    /// The whole organisation (administrators).
    Organisation,
    /// Figures over all customers (reports), not filtered per customer.
    Aggregate,
}

/// One row of the permission table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permission {
    /// The command's name (`Command::name()`), the ingest channel, or the query.
    pub operation: &'static str,
    pub kind: OperationKind,
    pub scope: Scope,
    pub roles: &'static [Role],
}

use Role::{
    AccountManager as AM, Administrator as ADMIN, Auditor as AUDITOR, ChannelAdapter as ADAPTER,
    Executive as EXEC, SalesDirector as DIRECTOR, ServiceAgent as AGENT,
};

const CUSTOMER_STAFF: &[Role] = &[ADMIN, DIRECTOR, AM];
const DIRECTORS: &[Role] = &[ADMIN, DIRECTOR];
const SERVICE: &[Role] = &[ADMIN, DIRECTOR, AM, AGENT];
const READERS: &[Role] = &[ADMIN, DIRECTOR, AM, EXEC];
const DESK_READERS: &[Role] = &[ADMIN, DIRECTOR, AM, EXEC, AGENT];

const fn command<C: CommandName>(roles: &'static [Role]) -> Permission {
    Permission {
        operation: C::NAME,
        kind: OperationKind::Command,
        scope: Scope::Customer,
        roles,
    }
}

const fn query(operation: &'static str, scope: Scope, roles: &'static [Role]) -> Permission {
    Permission {
        operation,
        kind: OperationKind::Query,
        scope,
        roles,
    }
}

const fn organisation<C: CommandName>(scope: Scope, roles: &'static [Role]) -> Permission {
    Permission {
        operation: C::NAME,
        kind: OperationKind::OrganisationCommand,
        scope,
        roles,
    }
}

/// The ingest channel: `POST /v1/touchpoints:batch` and the inbound topic.
pub const INGEST_TOUCHPOINTS: &str = "ingest_touchpoints";

/// The one permission table. Closed by default: an operation not listed is refused to all.
pub const PERMISSIONS: &[Permission] = &[
    // ---- customer stream
    Permission {
        operation: RegisterCustomer::NAME,
        kind: OperationKind::Command,
        scope: Scope::NewCustomer,
        roles: CUSTOMER_STAFF,
    },
    command::<ChangeProfile>(CUSTOMER_STAFF),
    command::<ReassignOwner>(DIRECTORS),
    command::<AddContact>(CUSTOMER_STAFF),
    command::<ChangeContact>(CUSTOMER_STAFF),
    command::<RemoveContact>(CUSTOMER_STAFF),
    command::<RecordTouchpoint>(SERVICE),
    command::<LodgeComplaint>(SERVICE),
    command::<HandleComplaint>(SERVICE),
    command::<CloseComplaint>(SERVICE),
    command::<OpenOpportunity>(DIRECTORS),
    command::<AssignOpportunity>(DIRECTORS),
    command::<ChangeStage>(CUSTOMER_STAFF),
    command::<AddPlanItem>(DIRECTORS),
    command::<RecordPlanResult>(CUSTOMER_STAFF),
    command::<WinOpportunity>(CUSTOMER_STAFF),
    command::<LoseOpportunity>(CUSTOMER_STAFF),
    command::<ReopenOpportunity>(DIRECTORS),
    command::<PlaceOrder>(CUSTOMER_STAFF),
    command::<CreateServiceRequest>(SERVICE),
    command::<AssignServiceRequest>(DIRECTORS),
    command::<HandleServiceRequest>(SERVICE),
    command::<GiveServiceFeedback>(SERVICE),
    command::<ArchiveServiceRequest>(SERVICE),
    command::<RaiseChurnWarning>(CUSTOMER_STAFF),
    command::<RecordDelayMeasure>(CUSTOMER_STAFF),
    command::<ConfirmChurn>(CUSTOMER_STAFF),
    command::<ReactivateCustomer>(CUSTOMER_STAFF),
    // ---- channels
    Permission {
        operation: INGEST_TOUCHPOINTS,
        kind: OperationKind::Ingest,
        scope: Scope::Customer,
        roles: &[ADMIN, ADAPTER],
    },
    // ---- organisation stream
    organisation::<CreateTeam>(Scope::Organisation, &[ADMIN]),
    organisation::<AssignTeamDirector>(Scope::Organisation, &[ADMIN]),
    // only administrators add members (a director adding others' account managers, or
    // directors and administrators, to their team would take over their customers);
    // a director removes members of the teams they direct
    organisation::<AddTeamMember>(Scope::Team, &[ADMIN]),
    organisation::<RemoveTeamMember>(Scope::Team, DIRECTORS),
    // ---- queries
    query("customers.list", Scope::Customers, DESK_READERS),
    query("customers.read", Scope::Customer, DESK_READERS),
    query("timeline.read", Scope::Customer, DESK_READERS),
    query("opportunities.list", Scope::Customers, READERS),
    query("pipeline.read", Scope::Customers, READERS),
    query("alerts.list", Scope::Customers, READERS),
    query("segments.read", Scope::Customers, READERS),
    query("churn.read", Scope::Customers, READERS),
    query("reports.read", Scope::Aggregate, &[ADMIN, DIRECTOR, EXEC]),
    query("audit.read", Scope::Customers, &[ADMIN, AUDITOR]),
];

/// The table's row for an operation, if it has one.
pub fn permission(operation: &str) -> Option<&'static Permission> {
    PERMISSIONS.iter().find(|p| p.operation == operation)
}

/// Whether `role` may use `operation` at all.
pub fn role_may(role: Role, operation: &str) -> bool {
    permission(operation).is_some_and(|p| p.roles.contains(&role))
}

/// How a command came in: what the permission table is asked about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    /// Its own route: the command's row of the permission table.
    Command,
    /// A channel (batch endpoint, inbound topic): the [`INGEST_TOUCHPOINTS`] row.
    Ingest,
}

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential {
    /// A bearer JWT.
    Token,
    /// A configured API key (channel adapters).
    ApiKey,
    /// A record on the inbound topic whose `ce_source` maps to a configured adapter.
    ChannelSource,
    /// `--auth-disabled`: local development only.
    Development,
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The identity provider's subject (`sub`), the API key's subject, or the adapter's id. It
    /// becomes the `actor` of every event the caller causes.
    pub subject: UserId,
    pub roles: BTreeSet<Role>,
    pub credential: Credential,
}

/// The customers a caller may see for an operation, by owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Visibility {
    All,
    /// Only customers owned by one of these users.
    Owners(BTreeSet<UserId>),
}

impl Visibility {
    pub fn includes(&self, owner: Option<&UserId>) -> bool {
        match self {
            Visibility::All => true,
            Visibility::Owners(owners) => owner.is_some_and(|o| owners.contains(o)),
        }
    }
}

/// Why an operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denial {
    /// No role of the caller may use the operation, or may assign to that user: 403.
    #[error("{reason}")]
    Forbidden {
        operation: String,
        /// The request field at fault (an assignment target), when there is one.
        field: Option<&'static str>,
        reason: String,
    },
    /// The record is outside the caller's reach: answer exactly as if it did not exist.
    #[error("not found")]
    Hidden,
}

impl Principal {
    pub fn new(
        subject: impl Into<String>,
        roles: impl IntoIterator<Item = Role>,
        credential: Credential,
    ) -> Self {
        Principal {
            subject: UserId::new(subject),
            roles: roles.into_iter().collect(),
            credential,
        }
    }

    pub fn has_role(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Whether any of the caller's roles may use `operation` (the permission table alone).
    pub fn may(&self, operation: &str) -> bool {
        self.roles.iter().any(|r| role_may(*r, operation))
    }

    /// The widest reach among the caller's roles that may use `operation`.
    pub fn reach(&self, operation: &str) -> Option<Reach> {
        self.roles
            .iter()
            .filter(|r| role_may(**r, operation))
            .map(|r| r.reach())
            .max()
    }

    /// The owners whose customers the caller sees for `operation`; `None` when the caller
    /// may not use it at all. Query-service filters lists by this and answers 404 for a single
    /// customer outside it.
    pub fn visible_owners(
        &self,
        operation: &str,
        organisation: &OrganisationState,
    ) -> Option<Visibility> {
        let mut owners = BTreeSet::new();
        let mut any = false;
        for role in self.roles.iter().filter(|r| role_may(**r, operation)) {
            any = true;
            match role.reach() {
                Reach::All => return Some(Visibility::All),
                Reach::Team => owners.extend(organisation.reach_of(&self.subject)),
                Reach::Own => {
                    owners.insert(self.subject.clone());
                }
            }
        }
        any.then_some(Visibility::Owners(owners))
    }

    /// `Ok` when the caller may use `operation`, else the 403.
    pub fn require(&self, operation: &str) -> Result<(), Denial> {
        if self.may(operation) {
            Ok(())
        } else {
            Err(Denial::Forbidden {
                operation: operation.to_owned(),
                field: None,
                reason: format!(
                    "{} may not use `{operation}`",
                    if self.roles.is_empty() {
                        "a caller without a role".to_owned()
                    } else {
                        format!(
                            "role {}",
                            self.roles
                                .iter()
                                .map(|r| r.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )
                    }
                ),
            })
        }
    }

    /// `Ok` when a customer owned by `owner` (None: no such customer) is within reach for
    /// `operation`, else [`Denial::Hidden`].
    pub fn require_customer(
        &self,
        operation: &str,
        organisation: &OrganisationState,
        owner: Option<&UserId>,
    ) -> Result<(), Denial> {
        self.require(operation)?;
        match self.visible_owners(operation, organisation) {
            Some(v) if v.includes(owner) => Ok(()),
            _ => Err(Denial::Hidden),
        }
    }

    /// `Ok` when the caller may make `user` the owner or assignee of something.
    fn require_assignable(
        &self,
        operation: &str,
        organisation: &OrganisationState,
        user: &UserId,
        field: &'static str,
    ) -> Result<(), Denial> {
        match self.visible_owners(operation, organisation) {
            Some(v) if v.includes(Some(user)) => Ok(()),
            _ => Err(Denial::Forbidden {
                operation: operation.to_owned(),
                field: Some(field),
                reason: format!("{field}: `{user}` is not within your reach (yourself or a member of a team you direct)"),
            }),
        }
    }
}

/// May `principal` run `command` on a customer whose current owner is `owner` (`None`: not
/// registered)? Checks the table, the customer's owner, and for assignments the new owner.
pub fn authorize_command(
    principal: &Principal,
    organisation: &OrganisationState,
    owner: Option<&UserId>,
    command: &Command,
) -> Result<(), Denial> {
    let operation = command.name();
    principal.require(operation)?;
    match command {
        Command::RegisterCustomer(c) => {
            if owner.is_some() {
                // The id is taken: by someone out of reach, it is "not found", never "exists".
                principal.require_customer(operation, organisation, owner)?;
            }
            principal.require_assignable(operation, organisation, &c.owner, "owner")
        }
        Command::ReassignOwner(c) => {
            principal.require_customer(operation, organisation, owner)?;
            principal.require_assignable(operation, organisation, &c.to, "to")
        }
        Command::AssignOpportunity(c) => {
            principal.require_customer(operation, organisation, owner)?;
            principal.require_assignable(operation, organisation, &c.owner, "owner")
        }
        _ => principal.require_customer(operation, organisation, owner),
    }
}

/// May `principal` append a touchpoint through a channel (batch or inbound topic) to a
/// customer owned by `owner`?
pub fn authorize_ingest(
    principal: &Principal,
    organisation: &OrganisationState,
    owner: Option<&UserId>,
) -> Result<(), Denial> {
    principal.require_customer(INGEST_TOUCHPOINTS, organisation, owner)
}

/// May `principal` run an organisation command? Administrators change everything; a director
/// changes the members of the teams they direct (other teams are "not found").
pub fn authorize_organisation(
    principal: &Principal,
    organisation: &OrganisationState,
    command: &OrganisationCommand,
) -> Result<(), Denial> {
    let operation = command.name();
    principal.require(operation)?;
    if principal.reach(operation) == Some(Reach::All) {
        return Ok(());
    }
    let team = command.team_id();
    let directs = organisation
        .teams
        .get(&team)
        .is_some_and(|t| t.director.as_ref() == Some(&principal.subject));
    if directs {
        Ok(())
    } else {
        Err(Denial::Hidden)
    }
}

/// The permission table as Markdown: one row per operation, one column per role. The README's
/// "Roles and permissions" section contains exactly this (a test keeps them equal).
pub fn permission_table_markdown() -> String {
    let mut out = String::from("| operation | kind |");
    for r in Role::ALL {
        out.push_str(&format!(" {} |", r.as_str()));
    }
    out.push_str("\n| --- | --- |");
    for _ in Role::ALL {
        out.push_str(" :-: |");
    }
    out.push('\n');
    for p in PERMISSIONS {
        out.push_str(&format!("| `{}` | {} |", p.operation, p.kind.as_str()));
        for r in Role::ALL {
            out.push_str(if p.roles.contains(&r) { " ✓ |" } else { " |" });
        }
        out.push('\n');
    }
    out
}

/// Each role's reach as Markdown, for the README.
pub fn reach_table_markdown() -> String {
    let mut out = String::from(
        "| role | reach: whose customers, for what the table below allows |\n| --- | --- |\n",
    );
    for r in Role::ALL {
        out.push_str(&format!("| `{}` | {} |\n", r.as_str(), r.reach().as_str()));
    }
    out
}
