//! Durations and sizes as an operator reads them on the status screen.

/// A duration in ns, for people: `850 ms`, `42 s`, `3 min 20 s`, `2 h 5 min`, `3 d 4 h`.
pub fn age(ns: i64) -> String {
    let ns = ns.max(0);
    let s = ns / 1_000_000_000;
    match s {
        0 => format!("{} ms", ns / 1_000_000),
        1..60 => format!("{s} s"),
        60..3600 => format!("{} min {} s", s / 60, s % 60),
        3600..86_400 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A size in bytes, for people.
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} B");
    }
    let mut v = bytes as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn ages_and_sizes_read_as_people_write_them() {
        assert_eq!((age(850_000_000), age(3 * 86_400 * S + 4 * 3600 * S)), ("850 ms".into(), "3 d 4 h".into()));
        assert_eq!((size(1023), size(5 * 1024 * 1024 * 1024)), ("1023 B".into(), "5.0 GiB".into()));
    }
}
