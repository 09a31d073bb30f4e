//! Kubernetes resource quantities ("100m", "1.5", "64Mi", "1G", "2e3") as numbers.

/// Parses a Kubernetes quantity ("100m", "1.5", "64Mi", "1G", "2e3") into base units.
pub fn parse_quantity(s: &str) -> Option<f64> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(split);
    let mult = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024.0 * 1024.0,
        "Gi" => 1024.0 * 1024.0 * 1024.0,
        "Ti" => 1024.0_f64.powi(4),
        "Pi" => 1024.0_f64.powi(5),
        "Ei" => 1024.0_f64.powi(6),
        e if e.len() > 1 && (e.starts_with('e') || e.starts_with('E')) => {
            10f64.powi(e[1..].parse::<i32>().ok()?)
        }
        _ => return None,
    };
    if num.is_empty() {
        return None;
    }
    let n: f64 = num.parse().ok()?;
    n.is_finite().then_some(n * mult)
}

/// CPU in millicores (rounded up, as Kubernetes does for sub-milli values).
pub fn milli_cpu(s: &str) -> i64 {
    parse_quantity(s).map_or(0, |v| (v * 1000.0).ceil() as i64)
}

/// Memory (or any integer quantity) in base units, rounded up.
pub fn int_quantity(s: &str) -> i64 {
    parse_quantity(s).map_or(0, |v| v.ceil() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities_parse_with_every_suffix_kind() {
        assert_eq!(milli_cpu("100m"), 100);
        assert_eq!(milli_cpu("0.0001"), 1);
        assert_eq!(int_quantity("64Mi"), 64 * 1024 * 1024);
        assert_eq!(int_quantity("1G"), 1_000_000_000);
        assert_eq!(int_quantity("2e3"), 2000);
        assert_eq!(parse_quantity("Mi"), None);
        assert_eq!(parse_quantity("12x"), None);
    }
}
