//! What the SQL stores share: statements kept in `sql/<table>.sql` files of named sections
//! (`-- name: claim`), and how rows spell times, counts and statuses.

use chrono::{DateTime, Utc};

use postback::delivery::{Delivery, State};
use postback::model::Status;

use crate::apply;
use crate::store::StoreError;

const MARKER: &str = "-- name: ";

/// The sections of a file: (name, statement).
pub(crate) fn sections(file: &'static str) -> impl Iterator<Item = (&'static str, &'static str)> {
    let mut rest = file;
    std::iter::from_fn(move || {
        let at = rest.find(MARKER)?;
        let after = &rest[at + MARKER.len()..];
        let (title, body) = after.split_once('\n').unwrap_or((after, ""));
        let end = body.find(MARKER).unwrap_or(body.len());
        rest = &body[end..];
        Some((title.trim(), body[..end].trim()))
    })
}

/// The statement `name` of `file`.
pub(crate) fn q(file: &'static str, name: &str) -> Result<&'static str, StoreError> {
    sections(file)
        .find(|(n, _)| *n == name)
        .map(|(_, sql)| sql)
        .ok_or_else(|| {
            StoreError::Database(format!(
                "this build of postback-store has no SQL statement named {name}: report it as a bug"
            ))
        })
}

/// The `purpose` column of a delivery whose key text is `key`: the part between the postback and
/// the revision (`conversion`, `event-3`, `cpc`, `test`), as `{trigger}.{postback}.{purpose}.{revision}`
/// writes it (a trigger id may hold dots, a purpose not). Borrowed from the text the caller
/// already wrote, so an insert writes the key once.
pub(crate) fn purpose_of(key: &str) -> &str {
    key.rsplit('.').nth(1).unwrap_or_default()
}

/// A time as stored (microseconds), rounded down.
pub(crate) fn floor(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// A due time as stored, rounded up to the microsecond: never claimed early.
pub(crate) fn ceil(t: DateTime<Utc>) -> i64 {
    let f = t.timestamp_micros();
    if t.timestamp_subsec_nanos() % 1000 == 0 {
        f
    } else {
        f.saturating_add(1)
    }
}

/// A stored time read back.
pub(crate) fn time(what: &str, micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| StoreError::Corrupt {
        what: what.to_owned(),
        detail: format!("{micros} is not a time"),
    })
}

/// A stored count read back.
pub(crate) fn count(n: i64) -> usize {
    usize::try_from(n).unwrap_or(0)
}

/// A postback's status as its column holds it.
pub(crate) fn status_text(s: &Status) -> &'static str {
    match s {
        Status::Active => "active",
        Status::Paused => "paused",
        Status::Disabled { .. } => "disabled",
        _ => "other",
    }
}

/// The due time a delivery's row holds: only a scheduled delivery is due.
pub(crate) fn due_column(d: &Delivery, due: Option<DateTime<Utc>>) -> Option<i64> {
    match d.state() {
        State::Scheduled { .. } => due.map(ceil),
        _ => None,
    }
}

/// A delivery's state column read back.
pub(crate) fn delivery_from(id: i64, state: &str) -> Result<Delivery, StoreError> {
    apply::from_json(&format!("delivery {id}"), state)
}
