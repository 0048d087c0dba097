//! Shots: frame ranges as render farms write them (`1001-1100`, `1001-1100x2`,
//! `1,5,10-20`) and numbered file patterns (`plate.####.exr`, `plate.%04d.exr`).

use std::fmt;

/// Most frames one range may name (a batch holds at most this many jobs anyway).
pub const MAX_FRAMES: usize = crate::limits::MAX_JOBS_PER_BATCH as usize;

/// Largest frame number.
pub const MAX_FRAME: u32 = 99_999_999;

/// What is wrong with a frame range or a pattern, in words.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError(pub String);

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FrameError {}

/// Parses a frame list: comma-separated parts, each `N`, `A-B` or `A-BxS` (every S-th
/// frame from A through B). Frames come out in the order written, each once.
pub fn parse_frames(text: &str) -> Result<Vec<u32>, FrameError> {
    let bad = |part: &str, why: &str| {
        FrameError(format!(
            "{part:?} {why} (write frames as 1001-1100, 1001-1100x2 or 1,5,10-20)"
        ))
    };
    let number = |part: &str, s: &str| -> Result<u32, FrameError> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(part, "is not a frame number or range"));
        }
        s.parse::<u32>()
            .ok()
            .filter(|n| *n <= MAX_FRAME)
            .ok_or_else(|| bad(part, &format!("names a frame above {MAX_FRAME}")))
    };
    let mut frames = Vec::new();
    let mut seen = std::collections::HashSet::new();
    if text.trim().is_empty() {
        return Err(FrameError("no frames given".into()));
    }
    for part in text.split(',') {
        let part = part.trim();
        let (range, step) = match part.split_once(['x', 'X']) {
            Some((r, s)) => (r, number(part, s)?),
            None => (part, 1),
        };
        if step == 0 {
            return Err(bad(part, "has a step of 0"));
        }
        let (first, last) = match range.split_once('-') {
            Some((a, b)) => (number(part, a)?, number(part, b)?),
            None if step == 1 => {
                let n = number(part, range)?;
                (n, n)
            }
            None => return Err(bad(part, "has a step but no range")),
        };
        if last < first {
            return Err(bad(part, "ends before it starts"));
        }
        let count = (last - first) / step + 1;
        if frames.len() + count as usize > MAX_FRAMES {
            return Err(FrameError(format!(
                "{text:?} names more than {MAX_FRAMES} frames"
            )));
        }
        let mut f = first;
        loop {
            if !seen.insert(f) {
                return Err(bad(part, &format!("names frame {f} a second time")));
            }
            frames.push(f);
            match f.checked_add(step) {
                Some(next) if next <= last => f = next,
                _ => break,
            }
        }
    }
    Ok(frames)
}

/// A numbered file name: the text around the frame number and its padding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramePattern {
    /// Before the number.
    pub prefix: String,
    /// Digits the number is padded to with zeros (1: not padded).
    pub padding: usize,
    /// After the number.
    pub suffix: String,
}

impl FramePattern {
    /// The pattern in `path`, if it has one: a run of `#` (one digit each), or `%d` /
    /// `%0Nd`. More than one is an error.
    pub fn find(path: &str) -> Result<Option<Self>, FrameError> {
        let hashes = path.find('#').map(|at| {
            let len = path[at..].bytes().take_while(|b| *b == b'#').count();
            (at, len, len)
        });
        let printf = find_printf(path);
        let found = match (hashes, printf) {
            (Some(_), Some(_)) => {
                return Err(FrameError(format!(
                    "{path:?} has both #### and %d; use one frame number"
                )))
            }
            (Some(h), None) => h,
            (None, Some(p)) => p,
            (None, None) => return Ok(None),
        };
        let (at, len, padding) = found;
        let rest = &path[at + len..];
        if rest.contains('#') || find_printf(rest).is_some() {
            return Err(FrameError(format!(
                "{path:?} has more than one frame number"
            )));
        }
        if padding > 10 {
            return Err(FrameError(format!(
                "{path:?} pads frame numbers to {padding} digits; at most 10"
            )));
        }
        Ok(Some(Self {
            prefix: path[..at].to_owned(),
            padding: padding.max(1),
            suffix: rest.to_owned(),
        }))
    }

    /// The number `frame` as the pattern writes it.
    pub fn number(&self, frame: u32) -> String {
        format!("{frame:0width$}", width = self.padding)
    }

    /// The file name of `frame`.
    pub fn frame(&self, frame: u32) -> String {
        format!("{}{}{}", self.prefix, self.number(frame), self.suffix)
    }
}

/// `%d` or `%0Nd` in `s`: (where, its length, the padding).
fn find_printf(s: &str) -> Option<(usize, usize, usize)> {
    let bytes = s.as_bytes();
    let mut i = 0;
    while let Some(off) = s[i..].find('%') {
        let at = i + off;
        let digits = bytes[at + 1..]
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if bytes.get(at + 1 + digits) == Some(&b'd') {
            let padding = s[at + 1..at + 1 + digits].parse().unwrap_or(1);
            return Some((at, digits + 2, padding));
        }
        i = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_steps_and_lists_read_as_farms_write_them() {
        assert_eq!(
            parse_frames("1001-1004").expect("ok"),
            [1001, 1002, 1003, 1004]
        );
        assert_eq!(parse_frames("1-10x3").expect("ok"), [1, 4, 7, 10]);
        assert_eq!(parse_frames("1-9x4").expect("ok"), [1, 5, 9]);
        assert_eq!(parse_frames("7").expect("ok"), [7]);
        assert_eq!(parse_frames("1, 5,10-12").expect("ok"), [1, 5, 10, 11, 12]);
        assert_eq!(parse_frames("0-0").expect("ok"), [0]);
        for (bad, says) in [
            ("", "no frames"),
            ("10-1", "ends before it starts"),
            ("1-10x0", "step of 0"),
            ("5x2", "step but no range"),
            ("a-b", "not a frame number"),
            ("-5", "not a frame number"),
            ("1-3,2", "second time"),
            ("1-100000000", "above"),
            ("0-99999999", "more than"),
            ("1.5", "not a frame number"),
        ] {
            let e = parse_frames(bad).expect_err(bad);
            assert!(e.0.contains(says), "{bad:?}: {e}");
        }
    }

    #[test]
    fn patterns_keep_their_padding() {
        let p = FramePattern::find("plates/sh042.####.exr")
            .expect("ok")
            .expect("ok");
        assert_eq!(
            (p.prefix.as_str(), p.padding, p.suffix.as_str()),
            ("plates/sh042.", 4, ".exr")
        );
        assert_eq!(p.frame(1001), "plates/sh042.1001.exr");
        assert_eq!(p.frame(7), "plates/sh042.0007.exr");
        assert_eq!(p.frame(123_456), "plates/sh042.123456.exr", "never cut");
        let q = FramePattern::find("s3://b/sh.%04d.png")
            .expect("parses")
            .expect("a pattern");
        assert_eq!(q.frame(12), "s3://b/sh.0012.png");
        assert_eq!(
            FramePattern::find("a.%d.png")
                .expect("parses")
                .expect("a pattern")
                .frame(12),
            "a.12.png"
        );
        assert_eq!(FramePattern::find("plain.jpg").expect("ok"), None);
        assert_eq!(FramePattern::find("100%.jpg").expect("ok"), None);
        for bad in [
            "a.##.#.exr",
            "a.##.%02d.exr",
            "a.%02d.%02d.exr",
            "a.###########.exr",
        ] {
            assert!(FramePattern::find(bad).is_err(), "{bad}");
        }
    }
}
