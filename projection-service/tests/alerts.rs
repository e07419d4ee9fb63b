//! Stage-duration alerts under a controlled clock: a sweep opens an alert only once an open
//! opportunity has been in its stage longer than the threshold; a stage change, a win or a
//! loss closes it at the event's business time; every change lands in the outbox.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chrono::TimeDelta;
use common::*;
use domain::policy::StageThresholds;
use domain::*;
use projection_service::{ProjectionVersion, Projector};

fn secs(n: i64) -> TimeDelta {
    TimeDelta::seconds(n)
}

#[tokio::test]
async fn alerts_open_and_close_at_the_right_times() {
    let db = TestDb::new().await;
    let (projector, _) = Projector::open(db.pool.clone(), ProjectionVersion::new("rm", 1).unwrap())
        .await
        .unwrap();
    let thresholds = StageThresholds::default(); // qualification 14, proposal 21, evaluation 21, negotiation 30
    let mut world = World::new(2);
    let c = cid(1);
    world.exec(
        c,
        day(0),
        "am",
        register(CustomerLevel::Key, "Acme", "华东", 4, 4, "am"),
    );
    world.exec(
        c,
        day(0),
        "dir",
        open_opp(1, 100_000, 30, date(2025, 6, 30)),
    );
    world.exec(c, day(0), "dir", open_opp(2, 50_000, 30, date(2025, 6, 30)));
    world.exec(c, day(10), "am", stage(2, Stage::Proposal, None, None));
    world.exec(c, day(1), "dir", open_opp(3, 10_000, 30, date(2025, 6, 30)));
    projector.apply(&world.log).await.unwrap();
    let mut seen = world.log.len();

    // exactly at the threshold: not yet
    let none = projector.sweep_alerts(day(14), &thresholds).await.unwrap();
    assert!(none.is_empty(), "{none:?}");
    // one second past: opportunity 1 (qualification since day 0) is stuck; 3 (since day 1) not yet
    let opened = projector
        .sweep_alerts(day(14) + secs(1), &thresholds)
        .await
        .unwrap()
        .opened;
    assert_eq!(opened.len(), 1);
    let a1 = &opened[0];
    assert_eq!(
        (
            a1.opportunity_id,
            a1.stage.as_str(),
            a1.stage_since,
            a1.due_at,
            a1.opened_at
        ),
        (id(1), "qualification", day(0), day(14), day(14) + secs(1))
    );
    assert_eq!(a1.threshold_days, 14);
    // sweeping again opens nothing new
    assert!(projector
        .sweep_alerts(day(14) + secs(2), &thresholds)
        .await
        .unwrap()
        .is_empty());
    // opportunity 3 after its own threshold; 2 (proposal since day 10, 21 days) not yet
    let opened = projector
        .sweep_alerts(day(20), &thresholds)
        .await
        .unwrap()
        .opened;
    assert_eq!(
        opened.iter().map(|a| a.opportunity_id).collect::<Vec<_>>(),
        vec![id(3)]
    );

    // a stage change closes opportunity 1's alert at its business time
    world.exec(c, day(20), "am", stage(1, Stage::Proposal, None, None));
    let outcome = projector.apply(&world.log[seen..]).await.unwrap();
    seen = world.log.len();
    assert_eq!(outcome.alerts_closed.len(), 1);
    let closed = &outcome.alerts_closed[0];
    assert_eq!(
        (
            closed.alert_id,
            closed.closed_at,
            closed.closed_by.as_deref()
        ),
        (a1.alert_id, Some(day(20)), Some("stage_changed"))
    );

    // proposal since day 10 for 2 → due day 31; since day 20 for 1 → due day 41
    assert!(projector
        .sweep_alerts(day(31), &thresholds)
        .await
        .unwrap()
        .is_empty());
    let opened = projector
        .sweep_alerts(day(31) + secs(1), &thresholds)
        .await
        .unwrap()
        .opened;
    assert_eq!(
        opened
            .iter()
            .map(|a| (a.opportunity_id, a.due_at))
            .collect::<Vec<_>>(),
        vec![(id(2), day(31))]
    );
    let opened = projector
        .sweep_alerts(day(41) + secs(1), &thresholds)
        .await
        .unwrap()
        .opened;
    assert_eq!(
        opened
            .iter()
            .map(|a| (a.opportunity_id, a.stage.as_str(), a.due_at))
            .collect::<Vec<_>>(),
        vec![(id(1), "proposal", day(41))]
    );

    // ending an opportunity closes its alert: 2 lost, 3 moved on and later lost
    world.exec(c, day(42), "am", lose(2, "no budget"));
    world.exec(c, day(43), "am", stage(3, Stage::Proposal, None, None));
    world.exec(c, day(44), "am", lose(3, "went quiet"));
    let outcome = projector.apply(&world.log[seen..]).await.unwrap();
    seen = world.log.len();
    let mut closed: Vec<_> = outcome
        .alerts_closed
        .iter()
        .map(|a| (a.opportunity_id, a.closed_at, a.closed_by.clone()))
        .collect();
    closed.sort();
    assert_eq!(
        closed,
        vec![
            (id(2), Some(day(42)), Some("lost".to_owned())),
            (id(3), Some(day(43)), Some("stage_changed".to_owned()))
        ]
    );

    // a win closes too; redelivering the batch closes nothing twice
    world.exec(c, day(45), "am", stage(1, Stage::Evaluation, None, None));
    world.exec(c, day(46), "am", stage(1, Stage::Negotiation, None, None));
    let before_win = world.log.len();
    let outcome = projector.apply(&world.log[seen..]).await.unwrap();
    assert_eq!(
        outcome
            .alerts_closed
            .iter()
            .map(|a| a.opportunity_id)
            .collect::<Vec<_>>(),
        vec![id(1)]
    );
    let opened = projector
        .sweep_alerts(day(76) + secs(1), &thresholds)
        .await
        .unwrap()
        .opened;
    assert_eq!(
        opened
            .iter()
            .map(|a| (a.opportunity_id, a.stage.as_str()))
            .collect::<Vec<_>>(),
        vec![(id(1), "negotiation")]
    );
    world.exec(c, day(80), "am", win(1, None));
    let outcome = projector.apply(&world.log[before_win..]).await.unwrap();
    assert_eq!(
        outcome
            .alerts_closed
            .iter()
            .map(|a| (a.opportunity_id, a.closed_by.as_deref()))
            .collect::<Vec<_>>(),
        vec![(id(1), Some("won"))]
    );
    assert!(projector
        .apply(&world.log)
        .await
        .unwrap()
        .alerts_closed
        .is_empty());
    assert!(projector.open_alerts().await.unwrap().is_empty());
    assert!(
        projector
            .sweep_alerts(day(400), &thresholds)
            .await
            .unwrap()
            .is_empty(),
        "nothing open is left"
    );

    // every change is in the outbox, in order, until published
    let all = projector.all_alerts().await.unwrap();
    assert_eq!(all.len(), 5);
    let pending = projector.unpublished_alert_changes(100).await.unwrap();
    assert_eq!(pending.len(), 10, "5 opened and 5 closed");
    assert_eq!(pending.iter().filter(|p| p.change == "opened").count(), 5);
    assert!(pending
        .iter()
        .filter(|p| p.change == "closed")
        .all(|p| p.alert.closed_at == Some(p.at)));
    let ids: Vec<i64> = pending.iter().take(4).map(|p| p.id).collect();
    projector.mark_alert_changes_published(&ids).await.unwrap();
    assert_eq!(
        projector
            .unpublished_alert_changes(100)
            .await
            .unwrap()
            .len(),
        6
    );
}

#[tokio::test]
async fn thresholds_are_configurable() {
    let db = TestDb::new().await;
    let (projector, _) = Projector::open(db.pool.clone(), ProjectionVersion::new("rm", 1).unwrap())
        .await
        .unwrap();
    let mut world = World::new(1);
    let c = cid(1);
    world.exec(
        c,
        day(0),
        "am",
        register(CustomerLevel::Key, "Acme", "华东", 4, 4, "am"),
    );
    world.exec(
        c,
        day(0),
        "dir",
        open_opp(1, 100_000, 30, date(2025, 6, 30)),
    );
    projector.apply(&world.log).await.unwrap();
    let tight = StageThresholds {
        qualification_days: 2,
        ..StageThresholds::default()
    };
    assert!(projector
        .sweep_alerts(day(3), &StageThresholds::default())
        .await
        .unwrap()
        .is_empty());
    let opened = projector.sweep_alerts(day(3), &tight).await.unwrap().opened;
    assert_eq!(
        opened
            .iter()
            .map(|a| (a.threshold_days, a.due_at))
            .collect::<Vec<_>>(),
        vec![(2, day(2))]
    );
}
