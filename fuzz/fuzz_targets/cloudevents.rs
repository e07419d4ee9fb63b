//! The CloudEvents (Kafka binary mode) decoder: any key, headers and body a topic can carry
//! decode to an event or an error, never a panic. The input is split into a key, up to eight
//! headers (a name among the envelope's, or any bytes) and a body.
#![no_main]

use libfuzzer_sys::fuzz_target;

const NAMES: &[&str] = &[
    "ce_id",
    "ce_source",
    "ce_type",
    "ce_specversion",
    "ce_time",
    "ce_subject",
    "content-type",
    "ce_sequence",
    "ce_actor",
    "ce_command",
    "ce_commandid",
    "ce_commandfingerprint",
    "ce_correlationid",
    "ce_causationid",
    "ce_occurredat",
    "ce_recordedat",
];

/// Takes a length-prefixed slice off the front.
fn take<'a>(data: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (&n, rest) = data.split_first()?;
    let n = (n as usize).min(rest.len());
    let (head, tail) = rest.split_at(n);
    *data = tail;
    Some(head)
}

fuzz_target!(|data: &[u8]| {
    let mut data = data;
    let key = take(&mut data);
    let count = data.first().map(|n| n % 9).unwrap_or(0);
    data = data.get(1..).unwrap_or(&[]);
    let mut headers: Vec<(String, Option<Vec<u8>>)> = Vec::new();
    for _ in 0..count {
        let Some(&which) = data.first() else { break };
        data = &data[1..];
        let name = match NAMES.get(which as usize % (NAMES.len() + 1)) {
            Some(n) => (*n).to_owned(),
            None => String::from_utf8_lossy(take(&mut data).unwrap_or(&[])).into_owned(),
        };
        let value = take(&mut data).map(<[u8]>::to_vec);
        headers.push((name, value));
    }
    let value = if data.is_empty() { None } else { Some(data) };
    let _ = domain::StreamEvent::from_kafka(
        key,
        headers.iter().map(|(k, v)| (k.as_str(), v.as_deref())),
        value,
    );
    if let Some(body) = value {
        for t in domain::EVENT_TYPES {
            let _ = domain::upcast::decode::<domain::CustomerEvent>(t, body);
        }
    }
});
