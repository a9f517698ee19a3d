//! Corrections: a conversion's status changed after it fired (pending to approved, approved to
//! rejected or reversed, an adjusted amount), and the postbacks that opted in hear of it.
//!
//! A correction is a [`Trigger`](crate::registry::Trigger) carrying a [`Correction`]: the same
//! conversion id, a revision above zero and the new status. Each postback it reaches gets a
//! delivery of its own, keyed `{trigger}.{postback}.{purpose}.{revision}`; the original delivery
//! (revision 0) is never changed. A postback opts in per status with [`Corrections`] (off by
//! default, as in the field) and says how its tracker spells each status ([`StatusWords`]).
//!
//! Order: a correction is sent only once every earlier revision of the same conversion to the
//! same postback was delivered or gave up
//! ([`DeliveryKey::waits_behind`](super::DeliveryKey::waits_behind)); while one is pending or
//! held, the correction waits behind it, so the partner never reads "reversed" before the
//! conversion it reverses.

use std::fmt;
use std::num::NonZeroU32;

use serde::{Deserialize, Serialize};

/// A conversion's status, as a correction announces it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ConversionStatus {
    /// Recorded, not yet confirmed (Keitaro's `lead`).
    Pending,
    /// Confirmed: the payout stands (Keitaro's `sale`). Also the status of an amount adjusted
    /// after approval.
    Approved,
    /// Refused by the advertiser (fraud, a duplicate, out of terms).
    Rejected,
    /// Taken back after approval (a refund, a chargeback).
    Reversed,
}

impl ConversionStatus {
    /// Every status, in declaration order.
    pub const ALL: [ConversionStatus; 4] = [
        ConversionStatus::Pending,
        ConversionStatus::Approved,
        ConversionStatus::Rejected,
        ConversionStatus::Reversed,
    ];

    /// The network's word for it: `pending`, `approved`, `rejected`, `reversed`.
    pub const fn as_str(self) -> &'static str {
        match self {
            ConversionStatus::Pending => "pending",
            ConversionStatus::Approved => "approved",
            ConversionStatus::Rejected => "rejected",
            ConversionStatus::Reversed => "reversed",
        }
    }

    const fn bit(self) -> u8 {
        1 << self as u8
    }
}

impl fmt::Display for ConversionStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What makes a trigger a correction: which revision of the conversion it is, and the status it
/// announces. Revision 0 is the original firing, so a correction's is never zero; the caller
/// numbers a conversion's changes 1, 2, 3, ... (its own change counter), which makes a correction
/// handled twice create nothing new and gives the order in which they are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Correction {
    /// The revision: 1 for the first change, increasing with each one.
    pub revision: NonZeroU32,
    /// The new status.
    pub status: ConversionStatus,
}

/// Which status changes a postback is told of, and the words its tracker takes for them. Off by
/// default. Only a server-to-server postback that sends `{conversion_status}` may opt in
/// (otherwise a rejection would read as the conversion sent twice).
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Corrections {
    #[serde(with = "status_set")]
    statuses: u8,
    #[serde(skip_serializing_if = "StatusWords::is_default")]
    words: StatusWords,
}

impl fmt::Debug for Corrections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Corrections")
            .field("statuses", &self.statuses().collect::<Vec<_>>())
            .field("words", &self.words)
            .finish()
    }
}

impl Corrections {
    /// None (the default): the postback hears only of the original conversion.
    pub const fn none() -> Corrections {
        Corrections {
            statuses: 0,
            words: StatusWords::network(),
        }
    }

    /// Every status change.
    pub fn all() -> Corrections {
        ConversionStatus::ALL
            .into_iter()
            .fold(Corrections::none(), Corrections::with)
    }

    /// Also changes to `status`.
    #[must_use]
    pub fn with(mut self, status: ConversionStatus) -> Corrections {
        self.statuses |= status.bit();
        self
    }

    /// The words sent for each status (default: the network's, [`ConversionStatus::as_str`]).
    #[must_use]
    pub fn words(mut self, words: StatusWords) -> Corrections {
        self.words = words;
        self
    }

    /// Whether a change to `status` is sent.
    pub const fn covers(&self, status: ConversionStatus) -> bool {
        self.statuses & status.bit() != 0
    }

    /// Whether any change is sent.
    pub const fn is_on(&self) -> bool {
        self.statuses != 0
    }

    /// The statuses that are sent.
    pub fn statuses(&self) -> impl Iterator<Item = ConversionStatus> + '_ {
        ConversionStatus::ALL
            .into_iter()
            .filter(|s| self.covers(*s))
    }

    /// The word sent as `{conversion_status}` for `status`.
    pub fn word(&self, status: ConversionStatus) -> &str {
        self.words.word(status)
    }

    pub(crate) fn is_default(&self) -> bool {
        *self == Corrections::default()
    }
}

impl Default for StatusWords {
    fn default() -> Self {
        StatusWords::network()
    }
}

/// How a tracker spells each status, as `{conversion_status}` sends it in a correction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "WordsData", into = "WordsData")]
pub struct StatusWords {
    pending: Word,
    approved: Word,
    rejected: Word,
    reversed: Word,
}

/// A status word: built-in text, or a network's own.
#[derive(Debug, Clone)]
enum Word {
    Static(&'static str),
    Owned(Box<str>),
}

impl PartialEq for Word {
    fn eq(&self, other: &Word) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for Word {}

impl Word {
    fn as_str(&self) -> &str {
        match self {
            Word::Static(s) => s,
            Word::Owned(s) => s,
        }
    }
}

/// The longest status word, in bytes.
pub const MAX_STATUS_WORD: usize = 64;

/// A status word that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StatusWordError {
    /// Empty (or only spaces).
    #[error(
        "the word for the {0} status is empty: give the text the partner's tracker expects, or keep the network's word"
    )]
    Empty(ConversionStatus),
    /// Longer than [`MAX_STATUS_WORD`].
    #[error("the word for the {status} status is {len} bytes; the limit is 64: shorten it")]
    TooLong {
        /// Which status.
        status: ConversionStatus,
        /// Its length.
        len: usize,
    },
}

impl StatusWords {
    /// The network's words: `pending`, `approved`, `rejected`, `reversed`.
    pub const fn network() -> StatusWords {
        StatusWords {
            pending: Word::Static("pending"),
            approved: Word::Static("approved"),
            rejected: Word::Static("rejected"),
            reversed: Word::Static("reversed"),
        }
    }

    /// Keitaro's: `lead`, `sale`, `rejected`; a reversal is `rejected` too (Keitaro moves a sale
    /// to rejected; it has no status of its own for it).
    pub const fn keitaro() -> StatusWords {
        StatusWords {
            pending: Word::Static("lead"),
            approved: Word::Static("sale"),
            rejected: Word::Static("rejected"),
            reversed: Word::Static("rejected"),
        }
    }

    /// These words with `status` spelt `word` (sent encoded, like any value).
    pub fn set(
        mut self,
        status: ConversionStatus,
        word: impl Into<String>,
    ) -> Result<StatusWords, StatusWordError> {
        let word = word.into();
        if word.trim().is_empty() {
            return Err(StatusWordError::Empty(status));
        }
        if word.len() > MAX_STATUS_WORD {
            return Err(StatusWordError::TooLong {
                status,
                len: word.len(),
            });
        }
        *self.slot(status) = Word::Owned(word.into());
        Ok(self)
    }

    /// The word for `status`.
    pub fn word(&self, status: ConversionStatus) -> &str {
        match status {
            ConversionStatus::Pending => self.pending.as_str(),
            ConversionStatus::Approved => self.approved.as_str(),
            ConversionStatus::Rejected => self.rejected.as_str(),
            ConversionStatus::Reversed => self.reversed.as_str(),
        }
    }

    fn slot(&mut self, status: ConversionStatus) -> &mut Word {
        match status {
            ConversionStatus::Pending => &mut self.pending,
            ConversionStatus::Approved => &mut self.approved,
            ConversionStatus::Rejected => &mut self.rejected,
            ConversionStatus::Reversed => &mut self.reversed,
        }
    }

    fn is_default(&self) -> bool {
        ConversionStatus::ALL
            .into_iter()
            .all(|s| self.word(s) == s.as_str())
    }
}

/// The serialized shape of [`StatusWords`]: one text per status; reading checks each.
#[derive(Serialize, Deserialize)]
struct WordsData {
    pending: String,
    approved: String,
    rejected: String,
    reversed: String,
}

impl From<StatusWords> for WordsData {
    fn from(w: StatusWords) -> Self {
        WordsData {
            pending: w.pending.as_str().to_owned(),
            approved: w.approved.as_str().to_owned(),
            rejected: w.rejected.as_str().to_owned(),
            reversed: w.reversed.as_str().to_owned(),
        }
    }
}

impl TryFrom<WordsData> for StatusWords {
    type Error = StatusWordError;
    fn try_from(d: WordsData) -> Result<Self, Self::Error> {
        StatusWords::network()
            .set(ConversionStatus::Pending, d.pending)?
            .set(ConversionStatus::Approved, d.approved)?
            .set(ConversionStatus::Rejected, d.rejected)?
            .set(ConversionStatus::Reversed, d.reversed)
    }
}

/// The status set as a list of names, so the stored form reads and survives a new status.
mod status_set {
    use super::ConversionStatus;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(bits: &u8, s: S) -> Result<S::Ok, S::Error> {
        let list: Vec<ConversionStatus> = ConversionStatus::ALL
            .into_iter()
            .filter(|st| bits & st.bit() != 0)
            .collect();
        list.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u8, D::Error> {
        let list = Vec::<ConversionStatus>::deserialize(d)?;
        Ok(list.into_iter().fold(0, |bits, st| bits | st.bit()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrections_are_off_by_default_and_opt_in_per_status() {
        let c = Corrections::default();
        assert!(!c.is_on());
        let c = c.with(ConversionStatus::Reversed);
        assert!(c.covers(ConversionStatus::Reversed));
        assert!(!c.covers(ConversionStatus::Approved));
        assert_eq!(Corrections::all().statuses().count(), 4);
    }

    #[test]
    fn words_default_to_the_network_and_refuse_empty_or_long_text() {
        let w = StatusWords::network();
        assert_eq!(w.word(ConversionStatus::Reversed), "reversed");
        assert_eq!(
            StatusWords::keitaro().word(ConversionStatus::Approved),
            "sale"
        );
        assert_eq!(
            w.clone().set(ConversionStatus::Pending, " "),
            Err(StatusWordError::Empty(ConversionStatus::Pending))
        );
        assert!(matches!(
            w.clone().set(ConversionStatus::Pending, "x".repeat(65)),
            Err(StatusWordError::TooLong { len: 65, .. })
        ));
        let custom = w.set(ConversionStatus::Rejected, "declined").unwrap();
        assert_eq!(custom.word(ConversionStatus::Rejected), "declined");
    }

    #[test]
    fn corrections_read_back_as_written() {
        let c = Corrections::none()
            .with(ConversionStatus::Approved)
            .with(ConversionStatus::Reversed)
            .words(StatusWords::keitaro());
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(
            json,
            r#"{"statuses":["approved","reversed"],"words":{"pending":"lead","approved":"sale","rejected":"rejected","reversed":"rejected"}}"#
        );
        assert_eq!(serde_json::from_str::<Corrections>(&json).unwrap(), c);
        let plain = Corrections::all();
        assert_eq!(
            serde_json::to_string(&plain).unwrap(),
            r#"{"statuses":["pending","approved","rejected","reversed"]}"#
        );
        assert!(
            serde_json::from_str::<Corrections>(
                r#"{"words":{"pending":"","approved":"a","rejected":"r","reversed":"v"}}"#
            )
            .is_err()
        );
    }
}
