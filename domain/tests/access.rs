#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Roles, the permission table, record visibility and the organisation stream: the pure rules.

use std::collections::BTreeSet;

use chrono::{TimeZone, Utc};
use domain::access::*;
use domain::envelope::{is_organisation_key, ORGANISATION_KEY};
use domain::*;
use serde_json::Value;
use uuid::Uuid;

fn team(n: u128) -> TeamId {
    TeamId(Uuid::from_u128(n))
}

fn user(s: &str) -> UserId {
    UserId::new(s)
}

fn who(subject: &str, roles: &[Role]) -> Principal {
    Principal::new(subject, roles.iter().copied(), Credential::Token)
}

/// Folds commands through `decide_organisation` and `evolve_organisation`.
fn organisation(commands: Vec<OrganisationCommand>) -> OrganisationState {
    let mut state = OrganisationState::new();
    for c in commands {
        for e in decide_organisation(&state, &c).unwrap() {
            state = evolve_organisation(state, &e);
        }
    }
    state
}

/// Team 1 "east": director sd-wang, members am-li and am-zhao. Team 2 "north": director
/// sd-zhou, member am-qian.
fn org() -> OrganisationState {
    organisation(vec![
        CreateTeam {
            team_id: team(1),
            name: "east".into(),
        }
        .into(),
        AssignTeamDirector {
            team_id: team(1),
            director: user("sd-wang"),
        }
        .into(),
        AddTeamMember {
            team_id: team(1),
            member: user("am-li"),
        }
        .into(),
        AddTeamMember {
            team_id: team(1),
            member: user("am-zhao"),
        }
        .into(),
        CreateTeam {
            team_id: team(2),
            name: "north".into(),
        }
        .into(),
        AssignTeamDirector {
            team_id: team(2),
            director: user("sd-zhou"),
        }
        .into(),
        AddTeamMember {
            team_id: team(2),
            member: user("am-qian"),
        }
        .into(),
    ])
}

/// The `command` tags of a tagged enum, read from its JSON Schema: every variant, so that a new
/// one cannot be missing from the permission table.
fn variant_names(schema: schemars::Schema) -> BTreeSet<String> {
    let value = schema.to_value();
    let variants = value["oneOf"].as_array().expect("a tagged enum is a oneOf");
    variants
        .iter()
        .map(|v| {
            v["properties"]["command"]["const"]
                .as_str()
                .expect("each variant has its tag")
                .to_owned()
        })
        .collect()
}

#[test]
fn every_command_has_a_row_in_the_permission_table() {
    let commands = variant_names(schemars::schema_for!(Command));
    assert_eq!(commands.len(), 28);
    for name in &commands {
        let p = permission(name).unwrap_or_else(|| panic!("`{name}` has no permission row"));
        assert_eq!(p.kind, OperationKind::Command, "{name}");
    }
    let organisation = variant_names(schemars::schema_for!(OrganisationCommand));
    assert_eq!(organisation.len(), 4);
    for name in &organisation {
        let p = permission(name).unwrap_or_else(|| panic!("`{name}` has no permission row"));
        assert_eq!(p.kind, OperationKind::OrganisationCommand, "{name}");
    }
    // and the table names nothing else but these, the ingest channel and the queries
    let queries = [
        "customers.list",
        "customers.read",
        "timeline.read",
        "opportunities.list",
        "pipeline.read",
        "alerts.list",
        "segments.read",
        "churn.read",
        "reports.read",
        "audit.read",
    ];
    for p in PERMISSIONS {
        let known = commands.contains(p.operation)
            || organisation.contains(p.operation)
            || p.operation == INGEST_TOUCHPOINTS
            || queries.contains(&p.operation);
        assert!(known, "`{}` in the table is no operation", p.operation);
        assert!(!p.roles.is_empty(), "`{}`: nobody may use it", p.operation);
    }
    let names: BTreeSet<&str> = PERMISSIONS.iter().map(|p| p.operation).collect();
    assert_eq!(names.len(), PERMISSIONS.len(), "one row per operation");
    for q in queries {
        assert_eq!(permission(q).unwrap().kind, OperationKind::Query, "{q}");
    }
}

#[test]
fn what_each_role_may_do() {
    let commands = variant_names(schemars::schema_for!(Command));
    // executives and auditors change nothing; adapters only ingest touchpoints
    for role in [Role::Executive, Role::Auditor] {
        for c in &commands {
            assert!(!role_may(role, c), "{role} may {c}");
        }
        assert!(!role_may(role, INGEST_TOUCHPOINTS));
    }
    for c in &commands {
        assert!(!role_may(Role::ChannelAdapter, c), "adapter may {c}");
        assert!(
            role_may(Role::Administrator, c),
            "administrator may not {c}"
        );
    }
    assert!(role_may(Role::ChannelAdapter, INGEST_TOUCHPOINTS));
    let adapter_ops: Vec<&str> = PERMISSIONS
        .iter()
        .filter(|p| p.roles.contains(&Role::ChannelAdapter))
        .map(|p| p.operation)
        .collect();
    assert_eq!(adapter_ops, [INGEST_TOUCHPOINTS]);
    // executives read everything but the audit trail; auditors only the audit trail
    for p in PERMISSIONS
        .iter()
        .filter(|p| p.kind == OperationKind::Query)
    {
        assert_eq!(
            p.roles.contains(&Role::Executive),
            p.operation != "audit.read",
            "{}",
            p.operation
        );
        assert_eq!(
            p.roles.contains(&Role::Auditor),
            p.operation == "audit.read",
            "{}",
            p.operation
        );
    }
    // the documented duties
    assert!(role_may(Role::SalesDirector, "open_opportunity"));
    assert!(role_may(Role::SalesDirector, "assign_opportunity"));
    assert!(!role_may(Role::AccountManager, "assign_opportunity"));
    assert!(role_may(Role::AccountManager, "confirm_churn"));
    assert!(role_may(Role::AccountManager, "record_delay_measure"));
    assert!(role_may(Role::ServiceAgent, "handle_service_request"));
    assert!(!role_may(Role::ServiceAgent, "change_stage"));
    assert!(!role_may(Role::SalesDirector, "add_team_member"));
    assert!(role_may(Role::SalesDirector, "remove_team_member"));
    assert!(!role_may(Role::SalesDirector, "create_team"));
    assert!(!role_may(Role::AccountManager, "add_team_member"));
    // unknown operations are refused to everyone
    for r in Role::ALL {
        assert!(!role_may(r, "drop_database"));
    }
}

#[test]
fn roles_parse_and_print() {
    for r in Role::ALL {
        assert_eq!(r.as_str().parse::<Role>().unwrap(), r);
        assert_eq!(
            serde_json::to_value(r).unwrap(),
            Value::String(r.as_str().into())
        );
    }
    assert!("root".parse::<Role>().is_err());
    assert!("Administrator".parse::<Role>().is_err());
}

#[test]
fn an_account_manager_sees_and_changes_only_own_customers() {
    let org = org();
    let li = who("am-li", &[Role::AccountManager]);
    let change = Command::ChangeProfile(ChangeProfile {
        changes: ProfilePatch::default(),
    });
    assert_eq!(
        authorize_command(&li, &org, Some(&user("am-li")), &change),
        Ok(())
    );
    assert_eq!(
        authorize_command(&li, &org, Some(&user("am-zhao")), &change),
        Err(Denial::Hidden),
        "a teammate's customer"
    );
    assert_eq!(
        authorize_command(&li, &org, None, &change),
        Err(Denial::Hidden),
        "an unknown customer looks the same"
    );
    assert_eq!(
        li.visible_owners("customers.list", &org),
        Some(Visibility::Owners(BTreeSet::from([user("am-li")])))
    );
    // registers customers for themselves only
    let register = |owner: &str| {
        Command::RegisterCustomer(RegisterCustomer {
            profile: CustomerProfile {
                kind: CustomerKind::Person,
                number: None,
                name: "n".into(),
                region: "r".into(),
                industry: "i".into(),
                level: CustomerLevel::Ordinary,
                credit: 3,
                satisfaction: 3,
                registration: Registration::default(),
            },
            owner: user(owner),
        })
    };
    assert_eq!(
        authorize_command(&li, &org, None, &register("am-li")),
        Ok(())
    );
    assert!(matches!(
        authorize_command(&li, &org, None, &register("am-zhao")),
        Err(Denial::Forbidden {
            field: Some("owner"),
            ..
        })
    ));
    // and may not reassign
    let reassign = Command::ReassignOwner(ReassignOwner { to: user("am-li") });
    assert!(matches!(
        authorize_command(&li, &org, Some(&user("am-li")), &reassign),
        Err(Denial::Forbidden { field: None, .. })
    ));
}

#[test]
fn a_director_sees_the_team_and_assigns_within_it() {
    let org = org();
    let wang = who("sd-wang", &[Role::SalesDirector]);
    let stage = Command::ChangeStage(ChangeStage {
        opportunity_id: OpportunityId(Uuid::nil()),
        to: Stage::Proposal,
        reason: None,
        probability: None,
    });
    for owner in ["am-li", "am-zhao", "sd-wang"] {
        assert_eq!(
            authorize_command(&wang, &org, Some(&user(owner)), &stage),
            Ok(()),
            "{owner}"
        );
    }
    for owner in ["am-qian", "sd-zhou", "someone"] {
        assert_eq!(
            authorize_command(&wang, &org, Some(&user(owner)), &stage),
            Err(Denial::Hidden),
            "{owner}"
        );
    }
    let reassign = |to: &str| Command::ReassignOwner(ReassignOwner { to: user(to) });
    assert_eq!(
        authorize_command(&wang, &org, Some(&user("am-li")), &reassign("am-zhao")),
        Ok(())
    );
    assert!(matches!(
        authorize_command(&wang, &org, Some(&user("am-li")), &reassign("am-qian")),
        Err(Denial::Forbidden {
            field: Some("to"),
            ..
        })
    ));
    assert_eq!(
        authorize_command(&wang, &org, Some(&user("am-qian")), &reassign("am-li")),
        Err(Denial::Hidden),
        "another team's customer is not found before anything else"
    );
    let assign = |owner: &str| {
        Command::AssignOpportunity(AssignOpportunity {
            opportunity_id: OpportunityId(Uuid::nil()),
            owner: user(owner),
        })
    };
    assert_eq!(
        authorize_command(&wang, &org, Some(&user("am-li")), &assign("am-zhao")),
        Ok(())
    );
    assert!(matches!(
        authorize_command(&wang, &org, Some(&user("am-li")), &assign("am-qian")),
        Err(Denial::Forbidden { .. })
    ));
    assert_eq!(
        wang.visible_owners("pipeline.read", &org),
        Some(Visibility::Owners(BTreeSet::from([
            user("am-li"),
            user("am-zhao"),
            user("sd-wang")
        ])))
    );
    // leaving the team ends the director's view of that member's customers
    let mut later = org.clone();
    for e in decide_organisation(
        &later,
        &RemoveTeamMember {
            team_id: team(1),
            member: user("am-zhao"),
        }
        .into(),
    )
    .unwrap()
    {
        later = evolve_organisation(later, &e);
    }
    assert_eq!(
        authorize_command(&wang, &later, Some(&user("am-zhao")), &stage),
        Err(Denial::Hidden)
    );
}

#[test]
fn administrators_and_executives_see_all_executives_change_nothing() {
    let org = org();
    let admin = who("root", &[Role::Administrator]);
    let exec = who("ceo", &[Role::Executive]);
    let confirm = Command::ConfirmChurn(ConfirmChurn { reason: "x".into() });
    for owner in [Some(user("am-qian")), None] {
        assert_eq!(
            authorize_command(&admin, &org, owner.as_ref(), &confirm),
            Ok(())
        );
        assert!(matches!(
            authorize_command(&exec, &org, owner.as_ref(), &confirm),
            Err(Denial::Forbidden { .. })
        ));
    }
    assert_eq!(
        exec.visible_owners("customers.list", &org),
        Some(Visibility::All)
    );
    assert_eq!(exec.visible_owners("audit.read", &org), None);
    let auditor = who("audit-1", &[Role::Auditor]);
    assert_eq!(
        auditor.visible_owners("audit.read", &org),
        Some(Visibility::All)
    );
    assert_eq!(auditor.visible_owners("customers.read", &org), None);
}

#[test]
fn channel_adapters_only_ingest_touchpoints_for_any_customer() {
    let org = org();
    let adapter = Principal::new("channel-wechat", [Role::ChannelAdapter], Credential::ApiKey);
    assert_eq!(
        authorize_ingest(&adapter, &org, Some(&user("am-qian"))),
        Ok(())
    );
    let touch = Command::RecordTouchpoint(RecordTouchpoint {
        touchpoint_id: TouchpointId(Uuid::nil()),
        touchpoint: Touchpoint {
            channel: Channel::WebForm { form: None },
            summary: "s".into(),
            contact_id: None,
            opportunity_id: None,
        },
    });
    assert!(matches!(
        authorize_command(&adapter, &org, Some(&user("am-qian")), &touch),
        Err(Denial::Forbidden { .. })
    ));
    let am = who("am-li", &[Role::AccountManager]);
    assert!(matches!(
        authorize_ingest(&am, &org, Some(&user("am-li"))),
        Err(Denial::Forbidden { .. })
    ));
}

#[test]
fn several_roles_take_the_widest_reach_of_those_allowed() {
    let org = org();
    // a director who is also an account manager: team reach for what directors may do
    let both = who("sd-wang", &[Role::SalesDirector, Role::AccountManager]);
    let stage = Command::ChangeStage(ChangeStage {
        opportunity_id: OpportunityId(Uuid::nil()),
        to: Stage::Proposal,
        reason: None,
        probability: None,
    });
    assert_eq!(
        authorize_command(&both, &org, Some(&user("am-li")), &stage),
        Ok(())
    );
    // an executive who is also an auditor still changes nothing
    let exec = who("ceo", &[Role::Executive, Role::Auditor]);
    assert!(matches!(
        authorize_command(&exec, &org, Some(&user("am-li")), &stage),
        Err(Denial::Forbidden { .. })
    ));
    // no roles: nothing
    let nobody = who("x", &[]);
    assert!(!nobody.may("customers.list"));
    assert_eq!(nobody.visible_owners("customers.list", &org), None);
}

/// Who may manage which team, the whole matrix: every role × every organisation command ×
/// own team / another director's team / an unknown team. Only administrators set teams up,
/// name directors and add members; a director removes members of the teams they direct
/// (another's team is "not found"); nobody else manages teams. (The defect: a director
/// added another team's account manager, another director and an administrator to a team of
/// their own, and took over their customers.)
#[test]
fn team_management_cannot_escalate() {
    let org = org();
    let commands = |t: u128| -> Vec<(&'static str, OrganisationCommand)> {
        vec![
            (
                "create_team",
                CreateTeam {
                    team_id: team(t + 100),
                    name: format!("new {t}"),
                }
                .into(),
            ),
            (
                "assign_team_director",
                AssignTeamDirector {
                    team_id: team(t),
                    director: user("sd-new"),
                }
                .into(),
            ),
            (
                "add_team_member",
                AddTeamMember {
                    team_id: team(t),
                    member: user("am-new"),
                }
                .into(),
            ),
            (
                "remove_team_member",
                RemoveTeamMember {
                    team_id: team(t),
                    member: user("am-qian"),
                }
                .into(),
            ),
        ]
    };
    // team 1: sd-wang's own; team 2: sd-zhou's; team 9: unknown
    for role in Role::ALL {
        let p = who("sd-wang", &[role]);
        for (t, whose) in [(1u128, "own"), (2, "other"), (9, "unknown")] {
            for (name, command) in commands(t) {
                let got = authorize_organisation(&p, &org, &command);
                let expected = match (role, name, whose) {
                    (Role::Administrator, ..) => Ok(()),
                    (Role::SalesDirector, "remove_team_member", "own") => Ok(()),
                    (Role::SalesDirector, "remove_team_member", _) => Err("hidden"),
                    _ => Err("forbidden"),
                };
                let got = match got {
                    Ok(()) => Ok(()),
                    Err(Denial::Hidden) => Err("hidden"),
                    Err(Denial::Forbidden { .. }) => Err("forbidden"),
                };
                assert_eq!(got, expected, "{role:?} {name} on the {whose} team");
            }
        }
    }
    // and the rules of the organisation itself, whoever asks: one team per member, directors
    // are nobody's members, members nobody's directors
    let add = |t: u128, m: &str| -> OrganisationCommand {
        AddTeamMember {
            team_id: team(t),
            member: user(m),
        }
        .into()
    };
    for (command, field) in [
        (add(2, "am-li"), "member"),
        (add(2, "sd-wang"), "member"),
        (add(1, "sd-zhou"), "member"),
        (
            AssignTeamDirector {
                team_id: team(2),
                director: user("am-li"),
            }
            .into(),
            "director",
        ),
    ] {
        let refused = decide_organisation(&org, &command).unwrap_err();
        assert_eq!(refused.kind(), ErrorKind::Conflict, "{command:?}");
        assert_eq!(refused.field(), Some(field), "{command:?}");
    }
    // taken out of one team, a member may join another
    let mut state = org.clone();
    for e in decide_organisation(
        &state,
        &RemoveTeamMember {
            team_id: team(1),
            member: user("am-li"),
        }
        .into(),
    )
    .unwrap()
    {
        state = evolve_organisation(state, &e);
    }
    assert_eq!(
        decide_organisation(&state, &add(2, "am-li")).map(|e| e.len()),
        Ok(1)
    );
}

#[test]
fn organisation_events_travel_in_the_envelope_under_the_nil_key() {
    let at = Utc.with_ymd_and_hms(2026, 3, 1, 9, 0, 0).unwrap();
    let recorded = RecordedOrganisationEvent {
        metadata: EventMetadata {
            id: Uuid::now_v7(),
            source: "/command-service".into(),
            customer_id: organisation_stream(),
            sequence: 1,
            actor: "root".into(),
            command: Some("create_team".into()),
            command_id: None,
            command_fingerprint: None,
            correlation_id: Uuid::now_v7(),
            causation_id: None,
            occurred_at: at,
            recorded_at: at,
        },
        event: TeamCreated {
            team_id: team(1),
            name: "east".into(),
        }
        .into(),
    };
    let record = recorded.to_kafka().unwrap();
    assert_eq!(record.key, ORGANISATION_KEY.as_bytes());
    assert_eq!(ORGANISATION_KEY, ORGANISATION_STREAM_ID.to_string());
    assert!(is_organisation_key(Some(&record.key)));
    let headers: Vec<(&str, Option<&[u8]>)> = record
        .headers
        .iter()
        .map(|(k, v)| (*k, Some(v.as_slice())))
        .collect();
    let back =
        StreamEvent::from_kafka(Some(&record.key), headers.clone(), Some(&record.value)).unwrap();
    assert_eq!(back, StreamEvent::Organisation(recorded.clone()));
    // a customer's reader refuses it; an organisation event under a customer's key too
    assert!(RecordedEvent::from_kafka(Some(&record.key), headers, Some(&record.value)).is_err());
    let mut elsewhere = recorded.clone();
    elsewhere.metadata.customer_id = CustomerId(Uuid::now_v7());
    assert!(elsewhere.to_kafka().is_err());
}

/// The README's "Roles and permissions" section is the table above, rendered: regenerate with
/// `cargo test -p domain --test access -- --ignored print_permission_tables --nocapture`.
#[test]
fn the_readme_shows_the_permission_table() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    assert!(
        readme.contains(&permission_table_markdown()),
        "README.md's permission table differs from domain::access::PERMISSIONS; print it with \
         `cargo test -p domain --test access -- --ignored print_permission_tables --nocapture`"
    );
    assert!(
        readme.contains(&reach_table_markdown()),
        "README.md's reach table"
    );
}

#[test]
#[ignore = "prints the tables for the README"]
fn print_permission_tables() {
    println!(
        "{}\n{}",
        reach_table_markdown(),
        permission_table_markdown()
    );
}
