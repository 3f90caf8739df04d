//! MLLP framing (module docs of [`super`], "MLLP"): `0B` + message + `1C 0D`.

use crate::decode::RejectReason;
use crate::protocols::framer::Scan;

pub const START_BLOCK: u8 = 0x0B;
pub const END_BLOCK: [u8; 2] = [0x1C, 0x0D];
/// Largest message [`scan_mllp`] accepts (the simulator's and the tests' limit; the listener
/// takes `hl7.max_message_bytes`).
pub const MAX_MESSAGE: usize = 1024 * 1024;

/// Finds an MLLP-framed message of at most [`MAX_MESSAGE`] bytes at the front of `b`.
pub fn scan_mllp(b: &[u8]) -> Scan<Vec<u8>> {
    scan_mllp_within(b, MAX_MESSAGE)
}

/// Finds an MLLP-framed message of at most `max` bytes at the front of `b`; a longer one is
/// skipped as [`RejectReason::Oversized`] once more than `max` bytes of it are in.
pub fn scan_mllp_within(b: &[u8], max: usize) -> Scan<Vec<u8>> {
    if b[0] != START_BLOCK {
        let skip = b.iter().position(|&c| c == START_BLOCK).unwrap_or(b.len());
        return Scan::Skip(skip, RejectReason::Noise);
    }
    let window = &b[1..b.len().min(max.saturating_add(3))];
    let mut from = 0;
    while let Some(i) = window[from..].iter().position(|&c| c == END_BLOCK[0]) {
        let i = from + i;
        if window.get(i + 1) == Some(&END_BLOCK[1]) {
            return Scan::Frame(window[..i].to_vec(), i + 3);
        }
        from = i + 1;
    }
    // A new start block before the end: this message was cut short.
    if let Some(next) = window.iter().position(|&c| c == START_BLOCK) {
        return Scan::Skip(next + 1, RejectReason::BadFrame);
    }
    let most = max.saturating_add(2);
    if b.len() > most { Scan::Skip(most, RejectReason::Oversized) } else { Scan::Incomplete }
}

/// Wraps a message in MLLP framing.
pub fn frame_mllp(msg: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg.len() + 3);
    out.push(START_BLOCK);
    out.extend_from_slice(msg);
    out.extend_from_slice(&END_BLOCK);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocols::framer::Framer;
    use crate::protocols::hl7::testutil::example;

    #[test]
    fn mllp_framing_resyncs() {
        let msg = example();
        let good = frame_mllp(&msg);
        let mut cut = good[..300].to_vec(); // connection reset mid-message, sender resends
        cut.extend(&good);
        let mut bytes = b"\r\nnoise".to_vec();
        bytes.extend(&cut);
        bytes.extend(&good);
        let mut f = Framer::new(4 * MAX_MESSAGE);
        let mut frames = Vec::new();
        let mut rejected = Vec::new();
        for chunk in bytes.chunks(7) {
            f.push(chunk);
            while let Some(r) = f.next(scan_mllp) {
                match r {
                    Ok(m) => frames.push(m),
                    Err(e) => rejected.push(e.reason),
                }
            }
        }
        assert_eq!(frames, [msg.clone(), msg]);
        assert_eq!(rejected, [RejectReason::BadFrame]);
        assert_eq!(f.take_noise(), 7);
    }

    #[test]
    fn the_message_limit_is_the_callers() {
        let mut msg = example();
        msg.resize(2 * MAX_MESSAGE, b'x');
        let wire = frame_mllp(&msg);
        assert_eq!(scan_mllp_within(&wire, 4 * MAX_MESSAGE), Scan::Frame(msg.clone(), wire.len()));
        assert_eq!(scan_mllp(&wire), Scan::Skip(MAX_MESSAGE + 2, RejectReason::Oversized));
        assert_eq!(scan_mllp_within(&wire[..wire.len() - 1], 4 * MAX_MESSAGE), Scan::Incomplete);
        assert_eq!(scan_mllp_within(&wire, msg.len()), Scan::Frame(msg.clone(), wire.len()));
        assert_eq!(scan_mllp_within(&wire, msg.len() - 1), Scan::Skip(msg.len() + 1, RejectReason::Oversized));
    }
}
