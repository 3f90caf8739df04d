//! Nonin pulse oximeters: serial data formats #8, #7 and #2 (protocols.md §1).
//!
//! - **DF8**: one 4-byte packet per second, no checksum; sync = bit 7 set in byte 1 and
//!   clear in bytes 2–4. Status bits in bytes 1 and 4; HR-D and SpO2-D (display values).
//! - **DF7 / DF2**: 5-byte frames (DF2 starts with 0x01, DF7 has no start byte), checksum =
//!   sum of the first four bytes; 25 frames form a packet, frame 1 carries the SYNC bit. The
//!   "float" byte of each frame carries one value selected by the frame number.
//!
//! Decoding rules:
//! - heart rate = ((MSB & 0x03) << 7) | (LSB & 0x7F) — *or*, never a shift by 8 (rates of
//!   128 and above are where other implementations go wrong); 511 means missing. SpO2 =
//!   byte & 0x7F; 127 means missing. Missing values are not written.
//! - The rate is an oximeter's, so it is written as `pulse_rate`, not `heart_rate`.
//! - Display values are held for 10 s after the finger is removed, with SNSA set: while SNSA
//!   or SNSD is set, `sensor_off = true` is written and the numbers are not.
//! - Status fields on every reading: `sensor_off`, `artifact` (ARTF or OOT), `low_perfusion`
//!   (DF8 LPRF; DF2/DF7 red perfusion in any frame of the packet — worst colour wins),
//!   `low_battery`.
//! - DF2/DF7 packets arrive three times a second; at most one reading per second is written
//!   (the display values change every 1.5 s). A packet with a lost or damaged frame is
//!   dropped whole: HR MSB and LSB are only combined from the same packet.
//! - The device answers the set-format command with ACK (0x06) or NAK (0x15); those bytes
//!   are skipped like any other noise before the first frame.

use super::decoded::{Decoded, FieldSet, PortIdentity};
use super::framer::{Framer, Scan, report_noise};
use crate::decode::{RejectReason, Rejection};
use crate::fields;

/// A Nonin serial data format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Df8,
    Df7,
    Df2,
}

impl Format {
    fn code(self) -> u8 {
        match self {
            Self::Df8 => 0x08,
            Self::Df7 => 0x07,
            Self::Df2 => 0x02,
        }
    }
}

/// The set-format command: STX, opcode 0x70, size 2, data type 2, format, ETX.
pub fn set_format_command(f: Format) -> [u8; 6] {
    [0x02, 0x70, 0x02, 0x02, f.code(), 0x03]
}

/// HR value meaning "missing".
pub const HR_MISSING: u16 = 511;
/// SpO2 value meaning "missing".
pub const SPO2_MISSING: u8 = 127;
/// Frames per DF2/DF7 packet.
pub const FRAMES_PER_PACKET: usize = 25;
/// At most one DF2/DF7 reading per this many nanoseconds.
const MIN_PACKET_INTERVAL_NS: i64 = 1_000_000_000;
/// Unread bytes kept at most: a few frames' worth.
const BUFFER_CAP: usize = 256;

const SNSD: u8 = 0x40;
const ARTF_5B: u8 = 0x20;
const OOT_5B: u8 = 0x10;
const SNSA_5B: u8 = 0x08;
const SYNC: u8 = 0x01;

/// The assembled 9-bit heart rate.
pub fn heart_rate(msb: u8, lsb: u8) -> u16 {
    (u16::from(msb & 0x03) << 7) | u16::from(lsb & 0x7F)
}

/// A DF8 packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Df8([u8; 4]);

impl Df8 {
    pub fn pulse_rate(self) -> u16 {
        heart_rate(self.0[0], self.0[1])
    }
    pub fn spo2(self) -> u8 {
        self.0[2] & 0x7F
    }
    pub fn sensor_off(self) -> bool {
        self.0[0] & SNSD != 0 || self.0[3] & 0x08 != 0
    }
    pub fn artifact(self) -> bool {
        self.0[0] & 0x24 != 0
    }
    pub fn low_perfusion(self) -> bool {
        self.0[0] & 0x10 != 0
    }
    pub fn marginal_perfusion(self) -> bool {
        self.0[0] & 0x08 != 0
    }
    pub fn smartpoint(self) -> bool {
        self.0[3] & 0x20 != 0
    }
    pub fn low_battery(self) -> bool {
        self.0[3] & 0x03 != 0
    }
}

/// Finds a DF8 packet at the front of `b`.
pub fn scan_df8(b: &[u8]) -> Scan<Df8> {
    if b[0] & 0x80 == 0 {
        return Scan::Skip(1, RejectReason::Noise);
    }
    let rest = &b[1..b.len().min(4)];
    if rest.iter().any(|x| x & 0x80 != 0) {
        return Scan::Skip(1, RejectReason::Noise);
    }
    match b {
        [a, b1, c, d, ..] => Scan::Frame(Df8([*a, *b1, *c, *d]), 4),
        _ => Scan::Incomplete,
    }
}

/// One DF2/DF7 frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    pub status: u8,
    /// DF7: 16 bits; DF2: 0–255.
    pub pleth: u16,
    pub float: u8,
}

/// Finds a DF2/DF7 frame at the front of `b`. `in_sync`: the previous frame ended exactly
/// here, so a frame with the right shape and a wrong checksum is a damaged frame (skipped
/// whole, [`RejectReason::BadChecksum`]) rather than a misaligned window (skipped by one).
pub fn scan_5byte(format: Format, b: &[u8], in_sync: bool) -> Scan<Frame> {
    let shape_ok = |i: usize, x: u8| match (format, i) {
        (Format::Df2, 0) => x == 0x01,
        (Format::Df2, 1) | (Format::Df7, 0) => x & 0x80 != 0,
        (_, 3) => x & 0x80 == 0,
        _ => true,
    };
    if b.iter().take(4).enumerate().any(|(i, x)| !shape_ok(i, *x)) {
        return Scan::Skip(1, RejectReason::Noise);
    }
    let [b0, b1, b2, b3, chk, ..] = *b else {
        return Scan::Incomplete;
    };
    let sum = b0.wrapping_add(b1).wrapping_add(b2).wrapping_add(b3);
    if sum != chk {
        return if in_sync { Scan::Skip(5, RejectReason::BadChecksum) } else { Scan::Skip(1, RejectReason::Noise) };
    }
    let frame = match format {
        Format::Df2 => Frame { status: b1, pleth: u16::from(b2), float: b3 },
        _ => Frame { status: b0, pleth: u16::from_be_bytes([b1, b2]), float: b3 },
    };
    Scan::Frame(frame, 5)
}

/// A DF2/DF7 packet being assembled.
#[derive(Debug, Default)]
struct Packet {
    floats: Vec<u8>,
    statuses: Vec<u8>,
    /// A frame of this packet was damaged: drop the packet.
    damaged: bool,
}

impl Packet {
    /// The float byte of frame `n` (1-based).
    fn float(&self, n: usize) -> u8 {
        self.floats.get(n - 1).copied().unwrap_or(0)
    }

    fn fields(&self) -> FieldSet {
        let any = |mask: u8| self.statuses.iter().any(|s| s & mask != 0);
        let sensor_off = any(SNSD | SNSA_5B);
        let low_perfusion = self.statuses.iter().any(|s| (s >> 1) & 0x03 == 0b10);
        let mut f = FieldSet::default();
        f.flag(&fields::SENSOR_OFF, sensor_off);
        f.flag(&fields::ARTIFACT, any(ARTF_5B | OOT_5B));
        f.flag(&fields::LOW_PERFUSION, low_perfusion);
        let stat2 = self.float(8);
        f.flag(&fields::LOW_BATTERY, stat2 & 0x80 == 0 && stat2 & 0x01 != 0);
        if !sensor_off {
            // Display values: HR-D in frames 20–21, SpO2-D in frame 9.
            let hr = heart_rate(self.float(20), self.float(21));
            if hr != HR_MISSING {
                f.number(&fields::PULSE_RATE, f64::from(hr));
            }
            let spo2 = self.float(9) & 0x7F;
            if spo2 != SPO2_MISSING {
                f.number(&fields::SPO2, f64::from(spo2));
            }
        }
        f
    }
}

/// A Nonin stream decoder for one connection.
#[derive(Debug)]
pub struct Decoder {
    format: Format,
    framer: Framer,
    in_sync: bool,
    packet: Option<Packet>,
    last_emit_ns: Option<i64>,
}

impl Decoder {
    pub fn new(format: Format) -> Self {
        Self { format, framer: Framer::new(BUFFER_CAP), in_sync: false, packet: None, last_emit_ns: None }
    }

    pub fn feed(&mut self, bytes: &[u8], id: &PortIdentity, now_ns: i64, out: &mut Decoded) {
        self.framer.push(bytes);
        match self.format {
            Format::Df8 => {
                while let Some(r) = self.framer.next(scan_df8) {
                    match r {
                        Ok(p) => {
                            out.frames += 1;
                            df8_fields(p).into_reading(None, id, now_ns, out);
                        }
                        Err(rej) => out.rejected.push(rej),
                    }
                }
            }
            Format::Df7 | Format::Df2 => self.feed_5byte(id, now_ns, out),
        }
        report_noise(&mut self.framer, out);
    }

    fn feed_5byte(&mut self, id: &PortIdentity, now_ns: i64, out: &mut Decoded) {
        let format = self.format;
        loop {
            let in_sync = &mut self.in_sync;
            let next = self.framer.next(|b| {
                let s = scan_5byte(format, b, *in_sync);
                match s {
                    Scan::Incomplete => {}
                    Scan::Frame(..) | Scan::Skip(_, RejectReason::BadChecksum) => *in_sync = true,
                    Scan::Skip(..) => *in_sync = false,
                }
                s
            });
            let frame = match next {
                None => break,
                Some(Err(rej)) => {
                    if let Some(p) = &mut self.packet {
                        p.damaged = true;
                    }
                    out.rejected.push(rej);
                    continue;
                }
                Some(Ok(f)) => f,
            };
            out.frames += 1;
            if frame.status & SYNC != 0 {
                if self.packet.take().is_some() {
                    out.rejected.push(Rejection::new(RejectReason::BadFrame, "packet cut short by the next SYNC"));
                }
                self.packet = Some(Packet::default());
            }
            let Some(p) = &mut self.packet else {
                continue; // waiting for the first SYNC
            };
            p.floats.push(frame.float);
            p.statuses.push(frame.status);
            if p.floats.len() < FRAMES_PER_PACKET {
                continue;
            }
            let Some(p) = self.packet.take() else {
                continue;
            };
            if p.damaged {
                continue; // its damaged frame was reported already
            }
            let due = self.last_emit_ns.is_none_or(|t| now_ns.saturating_sub(t) >= MIN_PACKET_INTERVAL_NS);
            if due {
                self.last_emit_ns = Some(now_ns);
                p.fields().into_reading(None, id, now_ns, out);
            }
        }
    }
}

fn df8_fields(p: Df8) -> FieldSet {
    let mut f = FieldSet::default();
    let off = p.sensor_off();
    f.flag(&fields::SENSOR_OFF, off);
    f.flag(&fields::ARTIFACT, p.artifact());
    f.flag(&fields::LOW_PERFUSION, p.low_perfusion());
    f.flag(&fields::LOW_BATTERY, p.low_battery());
    if !off {
        if p.pulse_rate() != HR_MISSING {
            f.number(&fields::PULSE_RATE, f64::from(p.pulse_rate()));
        }
        if p.spo2() != SPO2_MISSING {
            f.number(&fields::SPO2, f64::from(p.spo2()));
        }
    }
    f
}

/// Builds a DF2 or DF7 packet from 25 (status, float) pairs with a pleth ramp; for the
/// simulator and tests. Frame 1 gets the SYNC bit.
pub fn build_packet(format: Format, status: u8, floats: &[u8; 25], pleth_base: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAMES_PER_PACKET * 5);
    for (i, float) in floats.iter().enumerate() {
        let st = (if i == 0 { status | SYNC } else { status & !SYNC }) | 0x80;
        let pleth = pleth_base.wrapping_add(3 * i as u16);
        let b = match format {
            Format::Df2 => [0x01, st, (pleth & 0xFF) as u8, float & 0x7F],
            _ => [st, (pleth >> 8) as u8, (pleth & 0xFF) as u8, float & 0x7F],
        };
        out.extend_from_slice(&b);
        out.push(b.iter().fold(0u8, |a, x| a.wrapping_add(*x)));
    }
    out
}

/// The 25 float bytes of a DF2/DF7 packet carrying these values (protocols.md §1.2 table).
pub fn packet_floats(hr: u16, spo2: u8, low_battery: bool) -> [u8; 25] {
    let (msb, lsb) = (((hr >> 7) & 0x03) as u8, (hr & 0x7F) as u8);
    let mut f = [0u8; 25];
    f[0] = msb;
    f[1] = lsb;
    f[2] = spo2;
    f[7] = u8::from(low_battery);
    f[8] = spo2;
    f[9] = spo2;
    f[10] = spo2;
    f[13] = msb;
    f[14] = lsb;
    f[15] = spo2;
    f[16] = spo2;
    f[19] = msb;
    f[20] = lsb;
    f[21] = msb;
    f[22] = lsb;
    f
}

/// A DF8 packet carrying these values; for the simulator and tests.
pub fn build_df8(hr: Option<u16>, spo2: Option<u8>, sensor_off: bool) -> [u8; 4] {
    let hr = hr.unwrap_or(HR_MISSING).min(HR_MISSING);
    let spo2 = spo2.unwrap_or(SPO2_MISSING).min(SPO2_MISSING);
    [0x80 | ((hr >> 7) & 0x03) as u8, (hr & 0x7F) as u8, spo2, if sensor_off { 0x08 } else { 0x00 }]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fields::FieldValue;
    use crate::model::Reading;
    use crate::protocols::Protocol;
    use crate::protocols::testutil::*;

    fn df8(bytes: &str) -> Reading {
        let d = Protocol::NoninDf8.decoder(port("N1")).feed(&hex(bytes), NOW);
        assert_eq!(d.readings.len(), 1, "{d:?}");
        d.readings[0].clone()
    }

    #[test]
    fn set_format_commands() {
        assert_eq!(set_format_command(Format::Df8), [0x02, 0x70, 0x02, 0x02, 0x08, 0x03]);
        assert_eq!(set_format_command(Format::Df7)[4], 0x07);
        assert_eq!(set_format_command(Format::Df2)[4], 0x02);
    }

    #[test]
    fn df8_worked_examples() {
        let r = df8("80 48 61 20");
        assert_eq!(r.serial, "N1");
        assert_eq!(r.ts_ns, NOW);
        assert_eq!(field(&r, "pulse_rate"), Some(FieldValue::Int(72)));
        assert_eq!(field(&r, "spo2"), Some(FieldValue::Int(97)));
        assert_eq!(field(&r, "sensor_off"), Some(FieldValue::Bool(false)));
        assert_eq!(field(&r, "low_perfusion"), Some(FieldValue::Bool(false)));
        assert!(Df8([0x80, 0x48, 0x61, 0x20]).smartpoint());

        // HR 130: bit 7 of the rate sits in byte 1 (0x89 & 0x03 = 01), LSB 0x02.
        let r = df8("89 02 5F 00");
        assert_eq!(field(&r, "pulse_rate"), Some(FieldValue::Int(130)));
        assert_eq!(field(&r, "spo2"), Some(FieldValue::Int(95)));
        assert!(Df8([0x89, 0x02, 0x5F, 0x00]).marginal_perfusion());

        // Finger out: HR 511 and SpO2 127 are missing markers, SNSA set.
        let r = df8("83 7F 7F 08");
        assert_eq!(Df8([0x83, 0x7F, 0x7F, 0x08]).pulse_rate(), 511);
        assert_eq!(field(&r, "pulse_rate"), None);
        assert_eq!(field(&r, "spo2"), None);
        assert_eq!(field(&r, "sensor_off"), Some(FieldValue::Bool(true)));
        assert_well_formed(&r);
    }

    #[test]
    fn df8_suppresses_values_held_after_finger_removal() {
        // SNSA set while the display still shows the last HR 72 / SpO2 97.
        let r = df8("80 48 61 08");
        assert_eq!(field(&r, "pulse_rate"), None);
        assert_eq!(field(&r, "spo2"), None);
        assert_eq!(field(&r, "sensor_off"), Some(FieldValue::Bool(true)));
    }

    #[test]
    fn df8_skips_noise_and_ack_before_sync() {
        let mut bytes = vec![0x06, 0x15, 0x80, 0xFF, 0x12];
        bytes.extend(hex("80 48 61 20 89 02 5F 00"));
        let d = Protocol::NoninDf8.decoder(port("N1")).feed(&bytes, NOW);
        assert_eq!(d.readings.len(), 2);
        assert_eq!(d.rejected.len(), 1);
        assert_eq!(d.rejected[0].reason, RejectReason::Noise);
        assert_split_invariant(Protocol::NoninDf8, &bytes);
    }

    #[test]
    fn df8_without_a_configured_serial_is_rejected() {
        let d = Protocol::NoninDf8.decoder(PortIdentity::default()).feed(&hex("80 48 61 20"), NOW);
        assert!(d.readings.is_empty());
        assert_eq!(d.rejected[0].reason, RejectReason::MissingSerial);
    }

    const DF2_EXAMPLE: &str = "
        01 83 40 01 C5  01 82 43 02 C8  01 82 46 61 2A  01 82 49 2A F6  01 82 4C 00 CF
        01 82 4F 02 D4  01 82 52 2C 01  01 82 55 20 F8  01 82 58 61 3C  01 82 5B 61 3F
        01 82 5E 60 41  01 82 61 00 E4  01 82 64 00 E7  01 82 67 01 EB  01 82 42 01 C6
        01 82 45 61 29  01 82 48 61 2C  01 82 4B 00 CE  01 82 4E 00 D1  01 82 51 01 D5
        01 82 54 02 D9  01 82 57 01 DB  01 82 5A 01 DE  01 82 5D 00 E0  01 82 60 00 E3";

    #[test]
    fn df2_worked_packet() {
        let bytes = hex(DF2_EXAMPLE);
        assert_eq!(bytes.len(), 125);
        let d = Protocol::NoninDf2.decoder(port("N2")).feed(&bytes, NOW);
        assert_eq!(d.frames, 25);
        assert!(d.rejected.is_empty(), "{:?}", d.rejected);
        let r = &d.readings[0];
        assert_eq!(field(r, "pulse_rate"), Some(FieldValue::Int(130)));
        assert_eq!(field(r, "spo2"), Some(FieldValue::Int(97)));
        assert_eq!(field(r, "low_perfusion"), Some(FieldValue::Bool(false)));
        assert_eq!(field(r, "sensor_off"), Some(FieldValue::Bool(false)));
        assert_eq!(field(r, "low_battery"), Some(FieldValue::Bool(false)));
        assert_well_formed(r);

        // The other values of the packet, assembled frame by frame.
        let floats: Vec<u8> = bytes.chunks(5).map(|f| f[3]).collect();
        assert_eq!(heart_rate(floats[0], floats[1]), 130);
        assert_eq!(heart_rate(floats[5], floats[6]), 300); // TMR
        assert_eq!(floats[7], 0x20); // STAT2: SPA
        assert_eq!(floats[10], 96); // SpO2 beat to beat
        assert_eq!(heart_rate(floats[13], floats[14]), 129); // E-HR
        assert_eq!(heart_rate(floats[21], floats[22]), 129); // E-HR-D
        assert_split_invariant(Protocol::NoninDf2, &bytes);
    }

    #[test]
    fn df2_missing_data_frames_with_snsa() {
        assert_eq!(
            scan_5byte(Format::Df2, &hex("01 89 80 03 0D"), false),
            Scan::Frame(Frame { status: 0x89, pleth: 0x80, float: 3 }, 5)
        );
        assert_eq!(
            scan_5byte(Format::Df2, &hex("01 88 80 7F 88"), false),
            Scan::Frame(Frame { status: 0x88, pleth: 0x80, float: 0x7F }, 5)
        );
        // A whole packet of missing values with SNSA: no numbers, sensor_off.
        let mut floats = [0u8; 25];
        floats[0] = 0x03;
        floats[1] = 0x7F;
        floats[2] = 0x7F;
        floats[8] = 0x7F;
        floats[19] = 0x03;
        floats[20] = 0x7F;
        let bytes = build_packet(Format::Df2, 0x88, &floats, 0x80);
        assert_eq!(&bytes[..5], hex("01 89 80 03 0D").as_slice());
        let d = Protocol::NoninDf2.decoder(port("N2")).feed(&bytes, NOW);
        let r = &d.readings[0];
        assert_eq!(field(r, "sensor_off"), Some(FieldValue::Bool(true)));
        assert_eq!(field(r, "pulse_rate"), None);
        assert_eq!(field(r, "spo2"), None);
    }

    #[test]
    fn df7_worked_frames() {
        let bytes = hex("83 12 34 00 C9  82 12 59 48 35  82 12 7E 62 74");
        let mut f = Framer::new(64);
        f.push(&bytes);
        let mut frames = Vec::new();
        while let Some(Ok(fr)) = f.next(|b| scan_5byte(Format::Df7, b, false)) {
            frames.push(fr);
        }
        assert_eq!(frames.iter().map(|f| f.pleth).collect::<Vec<_>>(), [0x1234, 0x1259, 0x127E]);
        assert_eq!(heart_rate(frames[0].float, frames[1].float), 72);
        assert_eq!(frames[2].float, 98);
        assert_eq!(frames[0].status & SYNC, 1);
    }

    #[test]
    fn df7_packet_with_hr_above_127() {
        let bytes = build_packet(Format::Df7, 0x82, &packet_floats(130, 97, false), 0x1234);
        assert_eq!(&bytes[..5], hex("83 12 34 01 CA").as_slice());
        let d = Protocol::NoninDf7.decoder(port("N7")).feed(&bytes, NOW);
        assert_eq!(field(&d.readings[0], "pulse_rate"), Some(FieldValue::Int(130)));
        assert_split_invariant(Protocol::NoninDf7, &bytes);
    }

    #[test]
    fn bad_checksum_drops_the_packet_and_resyncs() {
        let good = hex(DF2_EXAMPLE);
        let mut bad = good.clone();
        bad[5 * 10 + 4] ^= 0x01; // checksum of frame 11
        bad.extend(&good);
        let d = Protocol::NoninDf2.decoder(port("N2")).feed(&bad, NOW);
        assert_eq!(d.readings.len(), 1, "only the intact packet");
        assert!(d.rejected.iter().any(|r| r.reason == RejectReason::BadChecksum));
    }

    #[test]
    fn truncated_frame_drops_the_packet_and_resyncs() {
        let good = hex(DF2_EXAMPLE);
        let mut bytes = good.clone();
        bytes.remove(5 * 12 + 2); // a byte of frame 13 lost on the line
        bytes.extend(&good);
        let d = Protocol::NoninDf2.decoder(port("N2")).feed(&bytes, NOW + 2_000_000_000);
        assert_eq!(d.readings.len(), 1);
        assert!(d.rejected.iter().any(|r| r.reason == RejectReason::BadFrame));
    }

    #[test]
    fn noise_before_sync_and_half_packets_are_skipped() {
        let good = hex(DF2_EXAMPLE);
        let mut bytes = vec![0x55, 0x01, 0x82, 0xFF];
        bytes.extend(&good[60..]); // joined mid-packet: no SYNC yet
        bytes.extend(&good);
        let d = Protocol::NoninDf2.decoder(port("N2")).feed(&bytes, NOW);
        assert_eq!(d.readings.len(), 1);
        assert_eq!(field(&d.readings[0], "pulse_rate"), Some(FieldValue::Int(130)));
        assert_split_invariant(Protocol::NoninDf2, &bytes);
    }

    #[test]
    fn at_most_one_reading_per_second() {
        let packet = hex(DF2_EXAMPLE);
        let mut d = Protocol::NoninDf2.decoder(port("N2"));
        let mut n = 0;
        for i in 0..6 {
            n += d.feed(&packet, NOW + i * 333_333_333).readings.len();
        }
        assert_eq!(n, 2);
    }

    #[test]
    fn low_perfusion_and_battery_from_a_packet() {
        let bytes = build_packet(Format::Df2, 0x84, &packet_floats(72, 98, true), 0);
        let d = Protocol::NoninDf2.decoder(port("N2")).feed(&bytes, NOW);
        let r = &d.readings[0];
        assert_eq!(field(r, "low_perfusion"), Some(FieldValue::Bool(true)));
        assert_eq!(field(r, "low_battery"), Some(FieldValue::Bool(true)));
        assert_eq!(field(r, "pulse_rate"), Some(FieldValue::Int(72)));
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic_or_yield_out_of_range_values(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
            cut in 0usize..600,
        ) {
            for p in [Protocol::NoninDf8, Protocol::NoninDf7, Protocol::NoninDf2] {
                let mut d = p.decoder(port("N"));
                let cut = cut.min(bytes.len());
                let mut out = d.feed(&bytes[..cut], NOW).readings;
                out.extend(d.feed(&bytes[cut..], NOW + 5_000_000_000).readings);
                for r in &out {
                    assert_well_formed(r);
                }
            }
        }

        #[test]
        fn any_rate_and_saturation_round_trips(hr in 0u16..=321, spo2 in 0u8..=100) {
            let d = Protocol::NoninDf8.decoder(port("N")).feed(&build_df8(Some(hr), Some(spo2), false), NOW);
            proptest::prop_assert_eq!(field(&d.readings[0], "pulse_rate"), Some(FieldValue::Int(i64::from(hr))));
            let b = build_packet(Format::Df7, 0x82, &packet_floats(hr, spo2, false), 7);
            let d = Protocol::NoninDf7.decoder(port("N")).feed(&b, NOW);
            proptest::prop_assert_eq!(field(&d.readings[0], "pulse_rate"), Some(FieldValue::Int(i64::from(hr))));
            proptest::prop_assert_eq!(field(&d.readings[0], "spo2"), Some(FieldValue::Int(i64::from(spo2))));
        }
    }
}
