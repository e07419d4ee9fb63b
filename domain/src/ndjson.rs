//! Newline-delimited JSON (the body of a batch from a channel adapter): one JSON value per
//! line. Blank lines are no items: an item's `index` counts items, its `line` is the line of
//! the body it came from (1-based), so that answers and error texts agree on both.

use serde_json::Value;

/// One item of an NDJSON body.
#[derive(Debug, Clone, PartialEq)]
pub struct Item<'a> {
    /// Position among the items (blank lines skipped), from 0.
    pub index: usize,
    /// The line of the body, from 1.
    pub line: usize,
    /// The line's text, not yet parsed: a reader may parse it straight into its own type.
    pub text: &'a [u8],
}

impl Item<'_> {
    /// The line as a JSON value, or why it is not JSON.
    pub fn value(&self) -> Result<Value, String> {
        serde_json::from_slice(self.text).map_err(|e| e.to_string())
    }
}

/// Splits an NDJSON body into its items. Never fails as a whole: a malformed line is an item
/// whose [`Item::value`] says why.
pub fn items(body: &[u8]) -> Vec<Item<'_>> {
    body.split(|b| *b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .enumerate()
        .map(|(index, (n, text))| Item {
            index,
            line: n + 1,
            text,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blank_lines_are_no_items_and_lines_are_counted() {
        let got = items(b"\n{\"a\": 1}\r\n\n  \n{bad\n[2]");
        let at: Vec<(usize, usize, bool)> = got
            .iter()
            .map(|i| (i.index, i.line, i.value().is_ok()))
            .collect();
        assert_eq!(at, vec![(0, 2, true), (1, 5, false), (2, 6, true)]);
    }
}
