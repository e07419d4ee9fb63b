//! The NDJSON batch parser: any body splits into items with consistent indexes and lines, and
//! every item that is JSON is tried as a touchpoint, without a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let items = domain::ndjson::items(data);
    let lines = data.split(|b| *b == b'\n').count();
    let mut last_line = 0;
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item.index, i);
        assert!(item.line > last_line && item.line <= lines);
        last_line = item.line;
        if let Ok(v) = &item.value() {
            if let Some(t) = v.get("touchpoint") {
                let _ = serde_json::from_value::<domain::Touchpoint>(t.clone());
            }
        }
    }
});
