//! What `readlink(/proc/PID/fd/N)` says an fd is.

/// The kinds of `anon_inode:` files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnonKind {
    /// `[eventfd]`
    Eventfd,
    /// `[eventpoll]`
    Epoll,
    /// `[timerfd]`
    Timerfd,
    /// `[signalfd]`
    Signalfd,
    /// `inotify`
    Inotify,
    /// `[fanotify]`
    Fanotify,
    /// `[io_uring]`
    IoUring,
    /// `[pidfd]`
    Pidfd,
    /// `[userfaultfd]`
    Userfaultfd,
    /// `bpf-map`, `bpf-prog`, `bpf_link`, …
    Bpf(String),
    /// `[perf_event]`
    PerfEvent,
    /// Anything else, as printed after `anon_inode:`.
    Other(String),
}

/// A parsed fd link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Link {
    /// A path, as the kernel printed it (relative to the reader's root).
    Path(String),
    /// A path the kernel marked ` (deleted)` (suffix removed).
    Deleted(String),
    /// `/memfd:NAME (deleted)`: the name.
    Memfd(String),
    /// `pipe:[INO]`
    Pipe(u64),
    /// `socket:[INO]`
    Socket(u64),
    /// `anon_inode:…`
    Anon(AnonKind),
    /// A namespace file such as `net:[4026531833]`: the type.
    Namespace(String),
    /// `pidfd:[INO]` (pidfs with a pidfd name on some kernels).
    Pidfd,
    /// Something else, verbatim.
    Other(String),
}

const DELETED: &str = " (deleted)";

fn bracketed_ino(s: &str, prefix: &str) -> Option<u64> {
    s.strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')?
        .parse()
        .ok()
}

/// Classifies a `/proc/PID/fd/N` link target.
pub fn parse_link(s: &str) -> Link {
    if s.starts_with('/') {
        if let Some(p) = s.strip_suffix(DELETED) {
            if let Some(name) = p.strip_prefix("/memfd:") {
                return Link::Memfd(name.to_string());
            }
            return Link::Deleted(p.to_string());
        }
        return Link::Path(s.to_string());
    }
    if let Some(ino) = bracketed_ino(s, "pipe:") {
        return Link::Pipe(ino);
    }
    if let Some(ino) = bracketed_ino(s, "socket:") {
        return Link::Socket(ino);
    }
    if let Some(a) = s.strip_prefix("anon_inode:") {
        let k = match a {
            "[eventfd]" => AnonKind::Eventfd,
            "[eventpoll]" => AnonKind::Epoll,
            "[timerfd]" => AnonKind::Timerfd,
            "[signalfd]" => AnonKind::Signalfd,
            "inotify" | "[inotify]" => AnonKind::Inotify,
            "[fanotify]" | "fanotify" => AnonKind::Fanotify,
            "[io_uring]" => AnonKind::IoUring,
            "[pidfd]" => AnonKind::Pidfd,
            "[userfaultfd]" => AnonKind::Userfaultfd,
            "[perf_event]" => AnonKind::PerfEvent,
            b if b.trim_start_matches('[').starts_with("bpf") => AnonKind::Bpf(b.to_string()),
            other => AnonKind::Other(other.to_string()),
        };
        return Link::Anon(k);
    }
    if bracketed_ino(s, "pidfd:").is_some() {
        return Link::Pidfd;
    }
    for ns in [
        "net",
        "mnt",
        "pid",
        "user",
        "uts",
        "ipc",
        "cgroup",
        "time",
        "pid_for_children",
        "time_for_children",
    ] {
        if bracketed_ino(s, &format!("{ns}:")).is_some() {
            return Link::Namespace(ns.to_string());
        }
    }
    Link::Other(s.to_string())
}

impl Link {
    /// A noun phrase for refusals ("an inotify instance").
    pub fn describe(&self) -> String {
        match self {
            Link::Path(p) => format!("the file {p}"),
            Link::Deleted(p) => format!("a deleted file ({p})"),
            Link::Memfd(n) => format!("a memfd ({n:?})"),
            Link::Pipe(i) => format!("a pipe (pipe:[{i}])"),
            Link::Socket(i) => format!("a socket (socket:[{i}])"),
            Link::Anon(k) => match k {
                AnonKind::Eventfd => "an eventfd".into(),
                AnonKind::Epoll => "an epoll instance".into(),
                AnonKind::Timerfd => "a timerfd".into(),
                AnonKind::Signalfd => "a signalfd".into(),
                AnonKind::Inotify => "an inotify instance".into(),
                AnonKind::Fanotify => "a fanotify instance".into(),
                AnonKind::IoUring => "an io_uring instance".into(),
                AnonKind::Pidfd => "a pidfd".into(),
                AnonKind::Userfaultfd => "a userfaultfd".into(),
                AnonKind::Bpf(b) => format!("a bpf object (anon_inode:{b})"),
                AnonKind::PerfEvent => "a perf event".into(),
                AnonKind::Other(o) => {
                    format!("an anonymous inode of an unknown kind (anon_inode:{o})")
                }
            },
            Link::Namespace(ns) => format!("a {ns} namespace file"),
            Link::Pidfd => "a pidfd".into(),
            Link::Other(o) => format!("an unknown kind of file ({o})"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_readlink_strings() {
        let cases: &[(&str, Link)] = &[
            ("/etc/passwd", Link::Path("/etc/passwd".into())),
            ("/dev/pts/3", Link::Path("/dev/pts/3".into())),
            ("/", Link::Path("/".into())),
            ("/tmp/x (deleted)", Link::Deleted("/tmp/x".into())),
            ("/memfd:hello (deleted)", Link::Memfd("hello".into())),
            ("/memfd: (deleted)", Link::Memfd("".into())),
            ("pipe:[12345]", Link::Pipe(12345)),
            ("socket:[376380]", Link::Socket(376380)),
            ("anon_inode:[eventfd]", Link::Anon(AnonKind::Eventfd)),
            ("anon_inode:[eventpoll]", Link::Anon(AnonKind::Epoll)),
            ("anon_inode:[timerfd]", Link::Anon(AnonKind::Timerfd)),
            ("anon_inode:[signalfd]", Link::Anon(AnonKind::Signalfd)),
            ("anon_inode:inotify", Link::Anon(AnonKind::Inotify)),
            ("anon_inode:[fanotify]", Link::Anon(AnonKind::Fanotify)),
            ("anon_inode:[io_uring]", Link::Anon(AnonKind::IoUring)),
            ("anon_inode:[pidfd]", Link::Anon(AnonKind::Pidfd)),
            (
                "anon_inode:[userfaultfd]",
                Link::Anon(AnonKind::Userfaultfd),
            ),
            ("anon_inode:[perf_event]", Link::Anon(AnonKind::PerfEvent)),
            (
                "anon_inode:bpf-map",
                Link::Anon(AnonKind::Bpf("bpf-map".into())),
            ),
            (
                "anon_inode:bpf_link",
                Link::Anon(AnonKind::Bpf("bpf_link".into())),
            ),
            (
                "anon_inode:[kvm-vcpu]",
                Link::Anon(AnonKind::Other("[kvm-vcpu]".into())),
            ),
            ("pidfd:[4242]", Link::Pidfd),
            ("net:[4026531833]", Link::Namespace("net".into())),
            (
                "pid_for_children:[4026531836]",
                Link::Namespace("pid_for_children".into()),
            ),
            ("pipe:[x]", Link::Other("pipe:[x]".into())),
            ("socket:[12", Link::Other("socket:[12".into())),
            ("weird", Link::Other("weird".into())),
        ];
        for (s, want) in cases {
            assert_eq!(&parse_link(s), want, "{s}");
        }
        assert_eq!(
            parse_link("anon_inode:inotify").describe(),
            "an inotify instance"
        );
        assert_eq!(
            parse_link("anon_inode:[io_uring]").describe(),
            "an io_uring instance"
        );
        assert!(
            parse_link("/memfd:x (deleted)")
                .describe()
                .starts_with("a memfd")
        );
        assert!(
            parse_link("/a (deleted)")
                .describe()
                .starts_with("a deleted file")
        );
    }
}
