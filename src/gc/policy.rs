//! What retention keeps (SPEC §6): the TTL and size cap, their defaults, and
//! how they are read from `--ttl-days`, `--max-size`, `DATABUILD_LOG_TTL_DAYS`
//! and `DATABUILD_LOG_MAX_SIZE_GB`.

use anyhow::{anyhow, bail, Result};
use std::time::Duration;

/// Time-to-live of a finished job when neither `--ttl-days` nor
/// `DATABUILD_LOG_TTL_DAYS` says otherwise (SPEC §6).
pub const DEFAULT_TTL_DAYS: f64 = 7.0;
/// Size cap of the root in GiB when neither `--max-size` nor
/// `DATABUILD_LOG_MAX_SIZE_GB` says otherwise (SPEC §6).
pub const DEFAULT_MAX_SIZE_GB: f64 = 10.0;

const TTL_ENV: &str = "DATABUILD_LOG_TTL_DAYS";
const MAX_SIZE_ENV: &str = "DATABUILD_LOG_MAX_SIZE_GB";

/// Largest TTL accepted, in days (about 2,700 years): keeps the millisecond
/// arithmetic far from overflow while meaning "never" to any user.
const MAX_TTL_DAYS: f64 = 1_000_000.0;
/// Largest size accepted (1 EiB): beyond any disk, and exactly representable
/// when converted from the f64 the fractional units parse into.
const MAX_SIZE_BYTES: f64 = (1u64 << 60) as f64;

pub(super) const GIB: f64 = (1u64 << 30) as f64;

/// What to keep: finished jobs younger than `ttl`, and no more than `max_size`
/// bytes in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub ttl: Duration,
    pub max_size: u64,
}

impl Default for Policy {
    /// 7 days and 10 GiB (SPEC §6).
    fn default() -> Policy {
        Policy {
            ttl: Duration::from_secs_f64(DEFAULT_TTL_DAYS * 86_400.0),
            max_size: (DEFAULT_MAX_SIZE_GB * GIB) as u64,
        }
    }
}

impl Policy {
    /// The policy from `DATABUILD_LOG_TTL_DAYS` and `DATABUILD_LOG_MAX_SIZE_GB`,
    /// each falling back to its default when unset or empty.
    pub fn from_env() -> Result<Policy> {
        Policy::with_overrides(None, None)
    }

    /// As [`Policy::from_env`], but a value given on the command line wins.
    pub(super) fn with_overrides(ttl: Option<Duration>, max_size: Option<u64>) -> Result<Policy> {
        let default = Policy::default();
        let ttl = match ttl {
            Some(t) => t,
            None => env_setting(TTL_ENV, parse_ttl_days)?.unwrap_or(default.ttl),
        };
        let max_size = match max_size {
            Some(m) => m,
            None => env_setting(MAX_SIZE_ENV, parse_size_gb)?.unwrap_or(default.max_size),
        };
        Ok(Policy { ttl, max_size })
    }

    /// The TTL in milliseconds, saturating.
    pub(super) fn ttl_ms(&self) -> i64 {
        i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX)
    }
}

fn env_setting<T>(name: &str, parse: fn(&str) -> Result<T, String>) -> Result<Option<T>> {
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => parse(&v).map(Some).map_err(|e| anyhow!("{name}: {e}")),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => bail!("{name} is not valid UTF-8"),
    }
}

/// A plain non-negative decimal (`7`, `0.5`, `.5`): no sign, exponent, inf or NaN.
fn parse_number(s: &str) -> Option<f64> {
    let t = s.trim();
    if !t.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
        return None;
    }
    t.parse().ok()
}

fn to_bytes(v: f64) -> Option<u64> {
    (v <= MAX_SIZE_BYTES).then_some(v as u64)
}

/// Parses a TTL in days (`--ttl-days`, `DATABUILD_LOG_TTL_DAYS`); fractions
/// allowed, 0 means every finished job has expired.
pub fn parse_ttl_days(s: &str) -> Result<Duration, String> {
    let days = parse_number(s)
        .ok_or_else(|| format!("invalid number of days '{s}': expected e.g. 7, 0.5 or 30"))?;
    if days > MAX_TTL_DAYS {
        return Err(format!("'{s}' days is too many (at most {MAX_TTL_DAYS})"));
    }
    Ok(Duration::from_secs_f64(days * 86_400.0))
}

/// Parses `--max-size`: bytes, or a number (fractions allowed) with `K`, `M`, `G`
/// or `T`, powers of 1024 as with `du` and journald; a trailing `B` or `iB` and
/// any case are accepted (`500M`, `10G`, `0.5g`, `2GiB`, `1048576`).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value = parse_number(num).ok_or_else(|| {
        format!("invalid size '{s}': expected bytes or a number with K, M, G or T, e.g. 500M, 10G, 0.5G")
    })?;
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => {
            return Err(format!(
                "invalid size unit in '{s}': use K, M, G or T (powers of 1024), or none for bytes"
            ))
        }
    };
    to_bytes(value * (1u64 << shift) as f64).ok_or_else(|| format!("size '{s}' is too large"))
}

/// Parses `DATABUILD_LOG_MAX_SIZE_GB`: a number of GiB, fractions allowed.
pub fn parse_size_gb(s: &str) -> Result<u64, String> {
    let gb = parse_number(s)
        .ok_or_else(|| format!("invalid size '{s}': expected a number of GiB, e.g. 10 or 0.5"))?;
    to_bytes(gb * GIB).ok_or_else(|| format!("size '{s}' GiB is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_binary_units_fractions_and_plain_bytes() {
        assert_eq!(parse_size("500M"), Ok(500 << 20));
        assert_eq!(parse_size("10G"), Ok(10 << 30));
        assert_eq!(parse_size("0.5G"), Ok(512 << 20));
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("2gib"), Ok(2 << 30));
        assert_eq!(parse_size(" 3 KB "), Ok(3 << 10));
        assert_eq!(parse_size("1T"), Ok(1 << 40));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("12b"), Ok(12));
        for bad in [
            "",
            "M",
            "-1G",
            "1.2.3M",
            "10X",
            "1e3",
            "inf",
            "nan",
            "99999999999T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ttl_days_and_the_gb_variable_take_fractions() {
        assert_eq!(parse_ttl_days("7"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_ttl_days("0.5"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_ttl_days("0"), Ok(Duration::ZERO));
        assert_eq!(parse_size_gb("0.5"), Ok(512 << 20));
        assert_eq!(parse_size_gb("10"), Ok(10 << 30));
        for bad in ["", "-1", "7d", "abc", "1e9", "2000000"] {
            assert!(parse_ttl_days(bad).is_err(), "{bad:?}");
        }
        assert!(parse_size_gb("10G").is_err());
    }

    #[test]
    fn the_default_policy_is_seven_days_and_ten_gib() {
        let p = Policy::default();
        assert_eq!(p.ttl, Duration::from_secs(7 * 86_400));
        assert_eq!(p.max_size, 10 << 30);
    }
}
