//! How numbers are written in the Markdown and HTML reports (and so how tests find them there).

use crate::model::Unit;

/// 1234567 -> "1,234,567"
pub fn int(n: u64) -> String {
    let digits = n.to_string();
    let groups: Vec<&str> = digits
        .as_bytes()
        .rchunks(3)
        .rev()
        .map(|g| std::str::from_utf8(g).unwrap_or_default())
        .collect();
    groups.join(",")
}

/// 0.97222 -> "97.22%"
pub fn pct(fraction: f64) -> String {
    format!("{:.2}%", 100.0 * fraction)
}

/// A change of a fraction in percentage points: 0.0123 -> "+1.23 pt"
pub fn pt(change: f64) -> String {
    format!("{:+.2} pt", 100.0 * change)
}

/// "0.123 ms"
pub fn ms(v: f64) -> String {
    format!("{v:.3} ms")
}

/// after / before: "0.25×"
pub fn ratio(r: f64) -> String {
    if r != 0.0 && r.abs() < 0.01 {
        format!("{r:.4}×")
    } else {
        format!("{r:.2}×")
    }
}

/// 1234567 -> "1.23M" (axis labels, bar labels)
pub fn human(n: f64) -> String {
    let a = n.abs();
    if a >= 1e9 {
        format!("{:.2}G", n / 1e9)
    } else if a >= 1e6 {
        format!("{:.2}M", n / 1e6)
    } else if a >= 1e3 {
        format!("{:.1}k", n / 1e3)
    } else if a == a.round() {
        format!("{n:.0}")
    } else {
        format!("{n:.3}")
    }
}

/// "23,456 B (22.9 KiB)"
pub fn bytes(b: u64) -> String {
    format!("{} B ({:.1} KiB)", int(b), b as f64 / 1024.0)
}

/// "1,234 KiB (1.2 MiB)"
pub fn kib(k: u64) -> String {
    format!("{} KiB ({:.1} MiB)", int(k), k as f64 / 1024.0)
}

/// A plain number: 4 decimals.
pub fn plain(v: f64) -> String {
    format!("{v:.4}")
}

/// A value in its unit.
pub fn value(unit: Unit, v: f64) -> String {
    match unit {
        Unit::Fraction => pct(v),
        Unit::Count => int(v.round().max(0.0) as u64),
        Unit::Milliseconds => ms(v),
        Unit::Bytes => bytes(v.round().max(0.0) as u64),
        Unit::Kib => kib(v.round().max(0.0) as u64),
        Unit::Plain => plain(v),
    }
}

/// A change in its unit: points for fractions, a signed difference otherwise.
pub fn change(unit: Unit, c: f64) -> String {
    match unit {
        Unit::Fraction => pt(c),
        Unit::Count | Unit::Bytes | Unit::Kib => {
            let sign = if c < 0.0 { "-" } else { "+" };
            let suffix = match unit {
                Unit::Bytes => " B",
                Unit::Kib => " KiB",
                _ => "",
            };
            format!("{sign}{}{suffix}", int(c.abs().round() as u64))
        }
        Unit::Milliseconds => format!("{c:+.3} ms"),
        Unit::Plain => format!("{c:+.4}"),
    }
}

/// `None` as "-".
pub fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(int(0), "0");
        assert_eq!(int(999), "999");
        assert_eq!(int(1000), "1,000");
        assert_eq!(int(1_234_567), "1,234,567");
        assert_eq!(pct(0.97222), "97.22%");
        assert_eq!(pt(-0.0123), "-1.23 pt");
        assert_eq!(ratio(0.254), "0.25×");
        assert_eq!(ratio(0.0012), "0.0012×");
        assert_eq!(human(1_234_567.0), "1.23M");
        assert_eq!(bytes(2048), "2,048 B (2.0 KiB)");
        assert_eq!(change(Unit::Count, -1500.0), "-1,500");
        assert_eq!(change(Unit::Milliseconds, 0.5), "+0.500 ms");
        assert_eq!(opt(None, pct), "-");
    }
}
