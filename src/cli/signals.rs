//! Signal names as runc takes them: `KILL`, `SIGKILL`, `kill`, `9`,
//! `RTMIN+3`.

use std::str::FromStr;

use nix::sys::signal::Signal;

pub fn parse(s: &str) -> Option<i32> {
    if let Ok(n) = s.parse::<i32>() {
        return (1..=64).contains(&n).then_some(n);
    }
    let up = s.to_ascii_uppercase();
    let name = up.strip_prefix("SIG").unwrap_or(&up);
    let rtmin = libc::SIGRTMIN();
    let rtmax = libc::SIGRTMAX();
    if let Some(rest) = name.strip_prefix("RTMIN") {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix('+')?.parse().ok()?
        };
        return (rtmin + off <= rtmax).then_some(rtmin + off);
    }
    if let Some(rest) = name.strip_prefix("RTMAX") {
        let off: i32 = if rest.is_empty() {
            0
        } else {
            rest.strip_prefix('-')?.parse().ok()?
        };
        return (rtmax - off >= rtmin).then_some(rtmax - off);
    }
    Signal::from_str(&format!("SIG{name}"))
        .ok()
        .map(|s| s as i32)
}

#[cfg(test)]
mod tests {
    #[test]
    fn names_and_numbers() {
        assert_eq!(super::parse("KILL"), Some(9));
        assert_eq!(super::parse("sigterm"), Some(15));
        assert_eq!(super::parse("15"), Some(15));
        assert_eq!(super::parse("RTMIN+1"), Some(libc::SIGRTMIN() + 1));
        assert_eq!(super::parse("BOGUS"), None);
        assert_eq!(super::parse("0"), None);
    }
}
