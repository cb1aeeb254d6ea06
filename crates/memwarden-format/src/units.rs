//! Byte sizes: parsing what users type and printing what they read.
//!
//! Binary units (`KiB`, `MiB`, `GiB`, `TiB`, and Kubernetes' `Ki`, `Mi`, `Gi`, `Ti`) are
//! powers of 1024; decimal units (`kB`, `MB`, `GB`, `TB`) are powers of 1000. A bare number
//! is bytes. A single-letter unit (`512M`, `2g`) is refused because tools disagree on
//! whether it means MiB or MB, and a budget off by 5% is worse than an error.

use std::fmt;

/// Why a size could not be parsed. The message names the input and says what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SizeError {
    /// Nothing was given.
    #[error("empty size: write a number of bytes or a number with a unit, e.g. 512MiB, 2GB")]
    Empty,
    /// The numeric part is missing or malformed.
    #[error("invalid size '{0}': expected a number followed by an optional unit, e.g. 512MiB, 2GB, 1.5GiB or 1048576")]
    BadNumber(String),
    /// The unit is not one memwarden knows.
    #[error("invalid size '{input}': unknown unit '{unit}' (use B, kB, MB, GB, TB for powers of 1000 or KiB, MiB, GiB, TiB for powers of 1024)")]
    UnknownUnit {
        /// The whole input.
        input: String,
        /// The unit as written.
        unit: String,
    },
    /// A one-letter unit such as `M`, which means MiB to some tools and MB to others.
    #[error("ambiguous size '{input}': '{unit}' could mean {unit}iB (powers of 1024) or {unit}B (powers of 1000); write one of those")]
    AmbiguousUnit {
        /// The whole input.
        input: String,
        /// The unit letter, upper-cased.
        unit: String,
    },
    /// The value does not fit in 64 bits, or is negative.
    #[error("size '{0}' is out of range (0 to 16 EiB)")]
    OutOfRange(String),
}

/// Parses a size such as `512MiB`, `2GB`, `1.5GiB`, `4 Gi` or `1048576` into bytes.
///
/// Units are case-insensitive except that nothing distinguishes bits from bytes: memwarden
/// only deals in bytes. Fractions are allowed with a unit and rounded to the nearest byte.
pub fn parse_size(input: &str) -> Result<u64, SizeError> {
    let trimmed = input.trim();
    if trimmed.is_empty() {
        return Err(SizeError::Empty);
    }
    let split = trimmed
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
        .unwrap_or(trimmed.len());
    let (number, unit) = trimmed.split_at(split);
    let number: String = number.chars().filter(|&c| c != '_').collect();
    let unit = unit.trim();
    if number.is_empty() || number.starts_with('.') && number.len() == 1 {
        return Err(if trimmed.starts_with('-') {
            SizeError::OutOfRange(input.to_owned())
        } else {
            SizeError::BadNumber(input.to_owned())
        });
    }
    let multiplier: u64 = match unit.to_ascii_lowercase().as_str() {
        "" | "b" | "byte" | "bytes" => 1,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        "tb" => 1_000_000_000_000,
        "kib" | "ki" => 1 << 10,
        "mib" | "mi" => 1 << 20,
        "gib" | "gi" => 1 << 30,
        "tib" | "ti" => 1 << 40,
        "k" | "m" | "g" | "t" => {
            return Err(SizeError::AmbiguousUnit {
                input: input.to_owned(),
                unit: unit.to_ascii_uppercase(),
            })
        }
        _ => {
            return Err(SizeError::UnknownUnit {
                input: input.to_owned(),
                unit: unit.to_owned(),
            })
        }
    };
    if let Ok(whole) = number.parse::<u64>() {
        return whole
            .checked_mul(multiplier)
            .ok_or_else(|| SizeError::OutOfRange(input.to_owned()));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| SizeError::BadNumber(input.to_owned()))?;
    let bytes = (value * multiplier as f64).round();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(SizeError::OutOfRange(input.to_owned()));
    }
    Ok(bytes as u64)
}

/// Formats bytes with a binary unit and two decimals (`1.50 GiB`), or plain bytes below 1 KiB.
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// Formats bytes with a decimal unit (`1.61 GB`), for readers who think in GB.
pub fn format_size_decimal(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["kB", "MB", "GB", "TB", "PB", "EB"];
    if bytes < 1000 {
        return format!("{bytes} B");
    }
    let mut value = bytes as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// A byte count that displays itself with [`format_size`]; handy in `format!` arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Bytes(pub u64);

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(&format_size(self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_binary_decimal_and_plain_sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2GB"), Ok(2_000_000_000));
        assert_eq!(parse_size("1.5GiB"), Ok(1_610_612_736));
        assert_eq!(parse_size("1048576"), Ok(1_048_576));
        assert_eq!(parse_size(" 4 gi "), Ok(4 << 30));
        assert_eq!(parse_size("300mib"), Ok(300 << 20));
        assert_eq!(parse_size("1_000kB"), Ok(1_000_000));
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("10 bytes"), Ok(10));
    }

    #[test]
    fn refuses_malformed_sizes_with_a_reason() {
        assert_eq!(parse_size(""), Err(SizeError::Empty));
        assert!(matches!(parse_size("lots"), Err(SizeError::BadNumber(_))));
        assert!(matches!(
            parse_size("1.2.3GiB"),
            Err(SizeError::BadNumber(_))
        ));
        assert!(matches!(parse_size("-5MiB"), Err(SizeError::OutOfRange(_))));
        assert!(matches!(
            parse_size("12parsecs"),
            Err(SizeError::UnknownUnit { .. })
        ));
        assert!(matches!(
            parse_size("99999999999TiB"),
            Err(SizeError::OutOfRange(_))
        ));
        let ambiguous = parse_size("512M").unwrap_err();
        assert!(ambiguous.to_string().contains("MiB"), "{ambiguous}");
        assert!(ambiguous.to_string().contains("MB"), "{ambiguous}");
    }

    #[test]
    fn formats_in_binary_and_decimal_units() {
        assert_eq!(format_size(0), "0 B");
        assert_eq!(format_size(1023), "1023 B");
        assert_eq!(format_size(1536), "1.50 KiB");
        assert_eq!(format_size(600 << 20), "600.00 MiB");
        assert_eq!(format_size_decimal(2_000_000_000), "2.00 GB");
        assert_eq!(Bytes(1 << 30).to_string(), "1.00 GiB");
    }

    #[test]
    fn formatted_sizes_parse_back() {
        for bytes in [1536_u64, 600 << 20, 3 << 30] {
            let text = format_size(bytes).replace(' ', "");
            let parsed = parse_size(&text).expect("round trip");
            let error = parsed.abs_diff(bytes) as f64 / bytes as f64;
            assert!(error < 0.005, "{text}: {parsed} vs {bytes}");
        }
    }
}
