//! The organisation stream (sales teams, key = the nil UUID, on the customer-events topic)
//! projected into the `teams` / `team_members` read model and the audit trail, interleaved with
//! customer events as a consumer delivers them (decoded as `StreamEvent`s), exactly once
//! under redelivery, and equal when rebuilt.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;

use common::*;
use domain::*;
use infra::Position;
use projection_service::read::TeamRow;
use projection_service::{ProjectionVersion, Projector, ReadModels};
use uuid::Uuid;

fn user(s: &str) -> UserId {
    UserId::new(s)
}

/// Customers and teams, and the merged log in a plausible delivery order (each stream's
/// records stay in offset order).
fn scenario() -> (World, Org, Vec<(Position, StreamEvent)>) {
    let mut w = World::new(3);
    let mut org = Org::new();
    let admin = "admin-ma";
    org.exec(
        day(0),
        admin,
        CreateTeam {
            team_id: team(1),
            name: "华东销售".into(),
        }
        .into(),
    );
    org.exec(
        day(0),
        admin,
        AssignTeamDirector {
            team_id: team(1),
            director: user("dir-zhou"),
        }
        .into(),
    );
    for (n, owner) in [(1, "am-li"), (2, "am-wang"), (3, "am-zhao")] {
        w.exec(
            cid(n),
            day(1),
            owner,
            register(CustomerLevel::Key, &format!("c{n}"), "华东", 3, 4, owner),
        );
    }
    for member in ["am-li", "am-wang", "am-zhao"] {
        org.exec(
            day(2),
            "dir-zhou",
            AddTeamMember {
                team_id: team(1),
                member: user(member),
            }
            .into(),
        );
    }
    org.exec(
        day(3),
        "dir-zhou",
        RemoveTeamMember {
            team_id: team(1),
            member: user("am-zhao"),
        }
        .into(),
    );
    org.exec(
        day(3),
        admin,
        CreateTeam {
            team_id: team(2),
            name: "华北销售".into(),
        }
        .into(),
    );
    org.exec(
        day(4),
        admin,
        AssignTeamDirector {
            team_id: team(2),
            director: user("dir-qian"),
        }
        .into(),
    );
    org.exec(
        day(5),
        admin,
        AddTeamMember {
            team_id: team(2),
            member: user("am-zhao"),
        }
        .into(),
    );
    // a new director replaces the old one
    org.exec(
        day(6),
        admin,
        AssignTeamDirector {
            team_id: team(2),
            director: user("dir-sun"),
        }
        .into(),
    );
    w.exec(cid(1), day(7), "am-li", touch(1, email("hello"), "hi"));

    // interleave: alternate between the streams, each in its own order
    let mut merged: Vec<(Position, StreamEvent)> = Vec::new();
    let mut customers = w.log.iter().peekable();
    let mut teams = org.log.iter().peekable();
    loop {
        let take_team = match (customers.peek(), teams.peek()) {
            (None, None) => break,
            (Some(_), None) => false,
            (None, Some(_)) => true,
            (Some((_, c)), Some((_, t))) => t.metadata.occurred_at <= c.metadata.occurred_at,
        };
        if take_team {
            let (p, e) = teams.next().unwrap();
            merged.push((p.clone(), StreamEvent::Organisation(e.clone())));
        } else {
            let (p, e) = customers.next().unwrap();
            merged.push((p.clone(), StreamEvent::Customer(e.clone())));
        }
    }
    (w, org, merged)
}

/// What the read model must hold: the domain's own fold of the organisation stream.
fn expected(org: &Org) -> BTreeMap<Uuid, (String, Option<String>, Vec<String>)> {
    org.state
        .teams
        .iter()
        .map(|(id, t)| {
            (
                id.0,
                (
                    t.name.clone(),
                    t.director.as_ref().map(|d| d.as_str().to_owned()),
                    t.members.iter().map(|m| m.as_str().to_owned()).collect(),
                ),
            )
        })
        .collect()
}

fn actual(rows: &[TeamRow]) -> BTreeMap<Uuid, (String, Option<String>, Vec<String>)> {
    rows.iter()
        .map(|t| {
            (
                t.team_id,
                (t.name.clone(), t.director.clone(), t.members.clone()),
            )
        })
        .collect()
}

#[tokio::test]
async fn team_events_are_projected_with_the_customer_events_and_survive_redelivery() {
    let db = TestDb::new().await;
    let (world, org, log) = scenario();
    let (projector, _) = Projector::open(db.pool.clone(), ProjectionVersion::new("rm", 1).unwrap())
        .await
        .unwrap();
    let reads = ReadModels::new(db.pool.clone(), projector.version());

    // overlapping batches mixing both streams, as a consumer redelivers after a crash
    let sizes = [1usize, 4, 2, 5, 3];
    let (mut start, mut k, mut applied) = (0usize, 0usize, 0usize);
    while start < log.len() {
        let end = (start + sizes[k % sizes.len()]).min(log.len());
        applied += projector
            .apply(&log[start.saturating_sub(2)..end])
            .await
            .unwrap()
            .applied;
        start = end;
        k += 1;
    }
    assert_eq!(applied, log.len(), "every record applied exactly once");

    let teams = reads.teams().await.unwrap();
    assert_eq!(actual(&teams), expected(&org));
    let east = teams.iter().find(|t| t.team_id == team(1).0).unwrap();
    assert_eq!(east.name, "华东销售");
    assert_eq!(east.director.as_deref(), Some("dir-zhou"));
    assert_eq!(east.members, ["am-li", "am-wang"]);
    assert_eq!(east.created_at, Some(day(0)));
    let north = teams.iter().find(|t| t.team_id == team(2).0).unwrap();
    assert_eq!(north.director.as_deref(), Some("dir-sun"));
    assert_eq!(north.members, ["am-zhao"]);
    assert_eq!(north.last_sequence, org.state.version as i64);

    // the customers are there too, untouched by the organisation stream
    assert_eq!(
        reads.customers_360().await.unwrap().len(),
        world.states.len()
    );

    // the audit trail: every organisation event under the nil UUID, with its actor
    let trail = reads
        .audit_trail(Some(ORGANISATION_STREAM_ID))
        .await
        .unwrap();
    assert_eq!(trail.len(), org.log.len());
    for (entry, (pos, rec)) in trail.iter().zip(&org.log) {
        assert_eq!(entry.event_id, rec.metadata.id);
        assert_eq!(entry.sequence, rec.metadata.sequence as i64);
        assert_eq!(entry.event_type, rec.event.event_type());
        assert_eq!(entry.actor, rec.metadata.actor);
        assert_eq!((entry.partition, entry.offset), (pos.partition, pos.offset));
    }
    assert_eq!(
        reads.audit_trail(None).await.unwrap().len(),
        log.len(),
        "one audit row per record of either stream"
    );

    // redelivery of everything, in other batches: nothing applied, nothing changed
    for batch in log.chunks(3) {
        let outcome = projector.apply(batch).await.unwrap();
        assert_eq!((outcome.applied, outcome.skipped), (0, batch.len()));
    }
    assert_eq!(reads.teams().await.unwrap(), teams);

    // the organisation partition's checkpoint is the last team event's offset
    let positions = projector.positions().await.unwrap();
    let org_pos = positions
        .iter()
        .find(|p| p.partition == ORG_PARTITION)
        .unwrap();
    assert_eq!(org_pos.offset, org.offset - 1);

    // a rebuild in one batch equals the incremental one
    let (v2, _) = Projector::open(db.pool.clone(), ProjectionVersion::new("rm", 2).unwrap())
        .await
        .unwrap();
    assert_eq!(v2.apply(&log).await.unwrap().applied, log.len());
    let rebuilt = ReadModels::new(db.pool.clone(), v2.version());
    assert_eq!(rebuilt.teams().await.unwrap(), teams);
    assert_same(
        &snapshot(&db.pool, &v2.version().schema()).await,
        &snapshot(&db.pool, &projector.version().schema()).await,
        "rebuild equals the incrementally built version",
    );
}

#[tokio::test]
async fn organisation_records_decode_from_the_topic_as_stream_events() {
    // What a consumer does with a record of the topic: StreamEvent::from_kafka picks the
    // stream by key, so a team event is applied, not dead-lettered as an undecodable event.
    let db = TestDb::new().await;
    let (_, org, _) = scenario();
    let (projector, _) = Projector::open(db.pool.clone(), ProjectionVersion::new("rm", 1).unwrap())
        .await
        .unwrap();
    let mut decoded = Vec::new();
    for (pos, rec) in &org.log {
        let record = rec.to_kafka().unwrap();
        // a customer-event decoder refuses it: that is why it used to be dead-lettered
        assert!(RecordedEvent::from_kafka(
            Some(record.key.as_slice()),
            record.headers.iter().map(|(k, v)| (*k, Some(v.as_slice()))),
            Some(record.value.as_slice()),
        )
        .is_err());
        let event = StreamEvent::from_kafka(
            Some(record.key.as_slice()),
            record.headers.iter().map(|(k, v)| (*k, Some(v.as_slice()))),
            Some(record.value.as_slice()),
        )
        .unwrap();
        assert!(matches!(event, StreamEvent::Organisation(_)));
        decoded.push((pos.clone(), event));
    }
    assert_eq!(
        projector.apply(&decoded).await.unwrap().applied,
        org.log.len()
    );
    let reads = ReadModels::new(db.pool.clone(), projector.version());
    assert_eq!(actual(&reads.teams().await.unwrap()), expected(&org));
}
