//! Money as partners' servers read it: ISO 4217 codes and locale-free decimal amounts.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::writer::Out;

/// An ISO 4217 currency code: three ASCII capital letters such as `USD`.
///
/// Symbols (`€`, `$`) are refused: receivers parse codes, and symbols are what broke postbacks in
/// the field.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Currency([u8; 3]);

/// A currency that is not an ISO 4217 code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "currency `{0}` is not an ISO 4217 code: send three capital letters such as USD or EUR, never a symbol"
)]
pub struct CurrencyError(pub String);

impl Currency {
    /// Parse a code; lower case is refused too, so that what is sent is exactly what was meant.
    pub fn new(code: &str) -> Result<Currency, CurrencyError> {
        match code.as_bytes() {
            [a, b, c] if [a, b, c].iter().all(|x| x.is_ascii_uppercase()) => {
                Ok(Currency([*a, *b, *c]))
            }
            _ => Err(CurrencyError(code.to_owned())),
        }
    }

    /// Append the code to `out`: three ASCII bytes.
    #[inline]
    pub(super) fn write_to<O: Out>(&self, out: &mut O) {
        out.ascii_run(&self.0);
    }

    /// The code as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII capitals are ever stored.
        std::str::from_utf8(&self.0).unwrap_or("XXX")
    }
}

impl FromStr for Currency {
    type Err = CurrencyError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Currency::new(s)
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Currency({})", self.as_str())
    }
}

impl Serialize for Currency {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Currency {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Currency::new(&s).map_err(serde::de::Error::custom)
    }
}

/// A decimal amount: `units / 10^scale`, written with `.` as the decimal mark, no grouping and no
/// exponent, whatever the locale (`12.50`, `0.12345`, `-3`).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "RawAmount")]
pub struct Amount {
    units: i64,
    scale: u8,
}

/// The serialized form, clamped through [`Amount::new`] so stored data cannot carry a scale the
/// formatter does not handle.
#[derive(Deserialize)]
struct RawAmount {
    units: i64,
    scale: u8,
}

impl From<RawAmount> for Amount {
    fn from(r: RawAmount) -> Self {
        Amount::new(r.units, r.scale)
    }
}

/// An amount that cannot be represented.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AmountError {
    /// Not a plain decimal number.
    #[error(
        "amount `{0}` is not a plain decimal: write digits with an optional `.` and fraction, such as 12.50 (no grouping, no comma, no exponent)"
    )]
    Syntax(String),
    /// Too many digits.
    #[error("amount `{0}` has too many digits: at most 18 digits and 12 decimals are kept")]
    Overflow(String),
    /// NaN or infinite.
    #[error("amount is not finite: pass a real number")]
    NotFinite,
}

/// Decimals kept at most; more than any payout needs, within i64.
const MAX_SCALE: u8 = 12;

impl Amount {
    /// `units / 10^scale`: `Amount::new(1250, 2)` is `12.50`. A scale over 12 is clamped by
    /// dropping the extra digits toward zero.
    pub const fn new(units: i64, scale: u8) -> Amount {
        let mut a = Amount { units, scale };
        while a.scale > MAX_SCALE {
            a.units /= 10;
            a.scale -= 1;
        }
        a
    }

    /// Round a float to `scale` decimals (half away from zero).
    pub fn from_f64(value: f64, scale: u8) -> Result<Amount, AmountError> {
        if !value.is_finite() {
            return Err(AmountError::NotFinite);
        }
        let scale = scale.min(MAX_SCALE);
        let scaled = (value * 10f64.powi(i32::from(scale))).round();
        if scaled.abs() >= 9.0e18 {
            return Err(AmountError::Overflow(value.to_string()));
        }
        Ok(Amount {
            units: scaled as i64,
            scale,
        })
    }

    /// The integer count of the smallest unit.
    pub const fn units(&self) -> i64 {
        self.units
    }

    /// The number of decimals.
    pub const fn scale(&self) -> u8 {
        self.scale
    }

    /// Write the amount into `out`, locale-free.
    #[inline]
    pub fn write_to(&self, out: &mut String) {
        self.write_out(out);
    }

    /// [`Amount::write_to`], into either of expansion's buffers.
    #[inline]
    pub(super) fn write_out<O: Out>(&self, out: &mut O) {
        // Digits are made two at a time from the least significant end into a buffer that starts
        // as all zeros, so the zeros a small amount needs before its decimals are already there.
        // 20 digits hold any u64; the scale is at most 12, so 24 always fits both.
        let mut buf = [b'0'; 24];
        let mut i = buf.len();
        let mut n = self.units.unsigned_abs();
        while n >= 100 {
            let d = (n % 100) as usize * 2;
            n /= 100;
            i -= 2;
            buf[i] = DIGIT_PAIRS[d];
            buf[i + 1] = DIGIT_PAIRS[d + 1];
        }
        if n >= 10 {
            let d = n as usize * 2;
            i -= 2;
            buf[i] = DIGIT_PAIRS[d];
            buf[i + 1] = DIGIT_PAIRS[d + 1];
        } else {
            i -= 1;
            buf[i] = b'0' + n as u8;
        }
        let scale = usize::from(self.scale.min(MAX_SCALE));
        let point = buf.len() - scale;
        // At least one digit before the mark.
        let i = i.min(point - 1);
        if self.units < 0 {
            out.ascii(b'-');
        }
        out.ascii_run(&buf[i..point]);
        if scale > 0 {
            out.ascii(b'.');
            out.ascii_run(&buf[point..]);
        }
    }
}

/// `00`, `01`, ... `99`: two digits per table read.
const DIGIT_PAIRS: &[u8; 200] = b"\
    0001020304050607080910111213141516171819\
    2021222324252627282930313233343536373839\
    4041424344454647484950515253545556575859\
    6061626364656667686970717273747576777879\
    8081828384858687888990919293949596979899";

impl FromStr for Amount {
    type Err = AmountError;

    /// Parse `12.50`, `-3`, `0.12345`. Commas, grouping, exponents and signs other than a leading
    /// `-` are refused rather than guessed.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let syntax = || AmountError::Syntax(s.to_owned());
        let (neg, body) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s),
        };
        let (int, frac) = match body.split_once('.') {
            Some((i, f)) => (i, f),
            None => (body, ""),
        };
        let digits_ok = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
        if int.is_empty()
            || !digits_ok(int)
            || !digits_ok(frac)
            || (body.contains('.') && frac.is_empty())
        {
            return Err(syntax());
        }
        if frac.len() > usize::from(MAX_SCALE) || int.len() + frac.len() > 18 {
            return Err(AmountError::Overflow(s.to_owned()));
        }
        let mut units: i64 = 0;
        for b in int.bytes().chain(frac.bytes()) {
            units = units * 10 + i64::from(b - b'0');
        }
        Ok(Amount {
            units: if neg { -units } else { units },
            scale: frac.len() as u8,
        })
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut s = String::with_capacity(24);
        self.write_to(&mut s);
        f.write_str(&s)
    }
}

impl fmt::Debug for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Amount({self})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_format_locale_free() {
        assert_eq!(Amount::new(1250, 2).to_string(), "12.50");
        assert_eq!(Amount::new(12345, 5).to_string(), "0.12345");
        assert_eq!(Amount::new(-5, 2).to_string(), "-0.05");
        assert_eq!(Amount::new(3, 0).to_string(), "3");
        assert_eq!(Amount::new(0, 2).to_string(), "0.00");
        assert_eq!(Amount::new(123_456_789, 2).to_string(), "1234567.89");
        assert_eq!(Amount::new(i64::MIN, 0).to_string(), "-9223372036854775808");
    }

    #[test]
    fn amounts_parse_and_round_trip() {
        for s in ["12.50", "0.12345", "-3", "0", "1234567.89"] {
            assert_eq!(s.parse::<Amount>().unwrap().to_string(), s);
        }
        for bad in [
            "12,50", "1,234.00", "1e5", "", ".5", "5.", "+1", "€5", "1 000",
        ] {
            assert!(bad.parse::<Amount>().is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn floats_round_to_the_scale() {
        assert_eq!(Amount::from_f64(0.1 + 0.2, 2).unwrap().to_string(), "0.30");
        assert_eq!(
            Amount::from_f64(1e20, 0).unwrap_err(),
            AmountError::Overflow("100000000000000000000".into())
        );
        assert_eq!(Amount::from_f64(f64::NAN, 2), Err(AmountError::NotFinite));
    }

    /// The plain way: decimal digits of the magnitude, zero-padded, the mark inserted.
    fn reference(units: i64, scale: u8) -> String {
        let digits = units.unsigned_abs().to_string();
        let scale = usize::from(scale);
        let digits = format!("{digits:0>width$}", width = scale + 1);
        let (int, frac) = digits.split_at(digits.len() - scale);
        let sign = if units < 0 { "-" } else { "" };
        if scale == 0 {
            format!("{sign}{int}")
        } else {
            format!("{sign}{int}.{frac}")
        }
    }

    #[test]
    fn the_fast_formatter_matches_the_plain_one() {
        let mut units = vec![0, 1, -1, 9, 10, 99, 100, 101, 999, 1000, 1250, 9999, 10_000];
        units.extend([i64::MAX, i64::MIN, i64::MIN + 1, 1_000_000_000_000_000_000]);
        // Every digit count, both signs, around each power of ten.
        let mut p: i64 = 1;
        while let Some(next) = p.checked_mul(10) {
            units.extend([p - 1, p, p + 1, -p, -(p - 1), next / 3]);
            p = next;
        }
        for &u in &units {
            for scale in 0..=MAX_SCALE {
                let a = Amount::new(u, scale);
                assert_eq!(a.to_string(), reference(u, scale), "{u} at scale {scale}");
            }
        }
    }

    #[test]
    fn a_stored_amount_with_a_huge_scale_is_clamped_not_a_panic() {
        let a: Amount = serde_json::from_str(r#"{"units":1,"scale":200}"#).unwrap();
        assert_eq!(a.scale(), 12);
        assert_eq!(a.to_string(), "0.000000000000");
    }

    #[test]
    fn currencies_are_codes_not_symbols() {
        assert_eq!(Currency::new("EUR").unwrap().as_str(), "EUR");
        for bad in ["€", "$", "eur", "EURO", "", "E1R"] {
            assert!(Currency::new(bad).is_err(), "{bad} should be refused");
        }
    }
}
