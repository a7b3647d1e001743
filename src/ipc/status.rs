//! The status pipe between `rewind add` (or `rewind recover`) and the daemon it starts: the
//! daemon writes one line, `live /dev/ublkbN` once the device is live or `error WHY` if
//! serving failed, and the starter reads it.

/// One line the daemon sends `rewind add` on the status pipe.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// The device is live at this path.
    Live(String),
    /// Serving failed, for this reason.
    Failed(String),
}

impl Status {
    /// The line for the pipe, newline included.
    pub fn line(&self) -> String {
        match self {
            Status::Live(dev) => format!("live {dev}\n"),
            // One line: the reader stops at the first newline.
            Status::Failed(why) => format!("error {}\n", why.replace('\n', " ")),
        }
    }

    /// Reads a line written by [`Status::line`].
    pub fn parse(line: &str) -> Option<Status> {
        let line = line.strip_suffix('\n').unwrap_or(line);
        if let Some(dev) = line.strip_prefix("live ") {
            Some(Status::Live(dev.to_string()))
        } else {
            line.strip_prefix("error ")
                .map(|why| Status::Failed(why.to_string()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_round_trip() {
        for s in [
            Status::Live("/dev/ublkb3".into()),
            Status::Failed("opening x: no such file".into()),
        ] {
            assert_eq!(Status::parse(&s.line()), Some(s));
        }
        // A multi-line error stays one line.
        let s = Status::Failed("a\nb".into());
        assert_eq!(s.line(), "error a b\n");
        assert_eq!(Status::parse(""), None);
        assert_eq!(Status::parse("garbage\n"), None);
    }
}
