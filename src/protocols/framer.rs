//! Cutting frames from a byte stream: a capped buffer ([`Framer`]) and the answer a
//! protocol's scanner gives about its front ([`Scan`]). The shape every stream decoder
//! follows is described in [`crate::protocols`].

use super::decoded::Decoded;
use crate::decode::{RejectReason, Rejection};

/// What a protocol's scanner found at the front of the buffer.
#[derive(Debug, PartialEq)]
pub enum Scan<F> {
    /// Not enough bytes to decide yet.
    Incomplete,
    /// A whole frame; the second value is how many bytes it takes.
    Frame(F, usize),
    /// Drop this many bytes (at least one) and look again.
    Skip(usize, RejectReason),
}

/// A capped byte buffer that protocol scanners cut frames from.
#[derive(Debug)]
pub struct Framer {
    buf: Vec<u8>,
    /// Start of the unread bytes in `buf` (consumed bytes are compacted away lazily).
    start: usize,
    cap: usize,
    /// Noise bytes skipped since the last [`Framer::take_noise`], reported as one rejection.
    noise: usize,
}

impl Framer {
    pub fn new(cap: usize) -> Self {
        Self { buf: Vec::new(), start: 0, cap: cap.max(1), noise: 0 }
    }

    /// Appends bytes (the caller's read size bounds one push).
    pub fn push(&mut self, bytes: &[u8]) {
        if self.start > 0 && (self.start >= self.buf.len() / 2 || self.buf.len() > self.cap) {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next frame, or a rejection (bad checksum, broken frame), or `None` when more
    /// bytes are needed. Noise is counted, not returned (see [`Framer::take_noise`]).
    /// When more than `cap` bytes wait undecided, the oldest are dropped as noise: a scanner
    /// that cannot decide within `cap` bytes is looking at junk.
    pub fn next<F>(&mut self, mut scan: impl FnMut(&[u8]) -> Scan<F>) -> Option<Result<F, Rejection>> {
        loop {
            let unread = &self.buf[self.start..];
            if unread.is_empty() {
                return None;
            }
            match scan(unread) {
                Scan::Incomplete if unread.len() > self.cap => {
                    let drop = unread.len() - self.cap;
                    self.start += drop;
                    self.noise += drop;
                }
                Scan::Incomplete => return None,
                Scan::Frame(f, len) => {
                    self.start += len.clamp(1, unread.len());
                    return Some(Ok(f));
                }
                Scan::Skip(n, RejectReason::Noise) => {
                    let n = n.clamp(1, unread.len());
                    self.start += n;
                    self.noise += n;
                }
                Scan::Skip(n, reason) => {
                    self.start += n.clamp(1, unread.len());
                    return Some(Err(Rejection::new(reason, "frame dropped")));
                }
            }
        }
    }

    /// Noise bytes skipped since the last call.
    pub fn take_noise(&mut self) -> usize {
        std::mem::take(&mut self.noise)
    }

    /// Bytes waiting for a decision.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.start
    }
}

/// Reports skipped noise as one rejection per feed.
pub(super) fn report_noise(framer: &mut Framer, out: &mut Decoded) {
    let n = framer.take_noise();
    if n > 0 {
        out.rejected.push(Rejection::new(RejectReason::Noise, format!("{n} byte(s) skipped to resynchronize")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framer_skips_noise_and_caps_its_buffer() {
        let mut f = Framer::new(8);
        f.push(b"xxAByy");
        let scan = |b: &[u8]| match b {
            [b'A', b'B', ..] => Scan::Frame((), 2),
            [b'A'] => Scan::Incomplete,
            _ => Scan::Skip(1, RejectReason::Noise),
        };
        assert_eq!(f.next(scan), Some(Ok(())));
        assert_eq!(f.take_noise(), 2);
        assert_eq!(f.next(scan), None);
        assert_eq!(f.take_noise(), 2);
        f.push(&[b'A'; 20]);
        assert_eq!(f.next(scan), None);
        assert_eq!(f.pending(), 1);
        assert_eq!(f.take_noise(), 19);
        // Undecidable bytes beyond the cap are dropped as noise.
        let mut f = Framer::new(8);
        f.push(&[b'A'; 30]);
        assert_eq!(f.next(|_| Scan::<()>::Incomplete), None);
        assert_eq!((f.pending(), f.take_noise()), (8, 22));
    }
}
