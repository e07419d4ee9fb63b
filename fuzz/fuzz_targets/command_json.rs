//! Command JSON: any bytes parse to a command or an error, and every command that parses is
//! decided (refused or accepted, with its limits checked) against a new and a registered
//! customer without a panic. Every accepted command's events fold into the state.
#![no_main]

use libfuzzer_sys::fuzz_target;

use domain::*;

fn registered() -> CustomerState {
    let state = CustomerState::new(CustomerId(uuid::Uuid::nil()));
    let register = Command::RegisterCustomer(RegisterCustomer {
        profile: CustomerProfile {
            kind: CustomerKind::Company,
            number: Some("C-1".into()),
            name: "杭州远景科技有限公司".into(),
            region: "华东".into(),
            industry: "software".into(),
            level: CustomerLevel::Key,
            credit: 4,
            satisfaction: 4,
            registration: Registration::default(),
        },
        owner: UserId::new("am-li"),
    });
    let mut s = state.clone();
    if let Ok(events) = decide(&state, &register) {
        for e in &events {
            s = evolve(s, e);
        }
    }
    s
}

fuzz_target!(|data: &[u8]| {
    let Ok(command) = serde_json::from_slice::<Command>(data) else {
        let _ = serde_json::from_slice::<OrganisationCommand>(data);
        return;
    };
    for state in [CustomerState::new(CustomerId(uuid::Uuid::nil())), registered()] {
        if let Ok(events) = decide(&state, &command) {
            let mut s = state.clone();
            for e in &events {
                s = evolve(s, e);
            }
            // what was accepted goes on the wire and comes back the same
            for e in &events {
                let bytes = e.to_json();
                assert!(bytes.is_ok(), "an accepted event does not serialize: {e:?}");
                if let Ok(bytes) = bytes {
                    let back = domain::upcast::decode::<domain::CustomerEvent>(e.event_type(), &bytes);
                    assert!(
                        matches!(&back, Ok(b) if b == e),
                        "an accepted event does not decode to itself: {e:?} {back:?}"
                    );
                }
            }
        }
    }
});
