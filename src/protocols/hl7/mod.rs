//! HL7 v2 ORU^R01 (IHE PCD-01) messages over MLLP, and their ACKs (protocols.md §3).
//!
//! - **MLLP**: `0B` + message + `1C 0D`. Garbage before `0B` is skipped; a new `0B` before
//!   the end of a message means the message was cut short; messages are capped at the
//!   caller's limit ([`mllp::scan_mllp_within`]; the listener's is `hl7.max_message_bytes`).
//!   Segments end with CR, LF or CR LF.
//! - **Read**: MSH (delimiters from MSH-1/2, sending application MSH-3, message type
//!   MSH-9, control id MSH-10, processing id MSH-11), OBR-7 and OBX. **PID and PV1 are
//!   never read**: no name, no MRN, nothing about the patient is decoded, logged or
//!   written — the binding says which patient a device belongs to.
//! - **Identity**, per observation, since a central station's message carries several
//!   devices: the OBX's own OBX-18 (equipment instance, the device's EUI-64); else the
//!   nearest row above it in the OBX-4 containment tree that names a device in its OBX-18
//!   (`2.1.1.1` belongs to the MDS row `2.0.0.0`, or to a VMD row `2.1.0.0` naming its own);
//!   else the message's device when its OBX-18s name exactly one; without any OBX-18, the
//!   EUI-64 in MSH-3 (`APP^<EUI-64>^EUI-64`), else MSH-3's first component. An observation
//!   that cannot be tied to one device of a multi-device message is refused
//!   ([`crate::decode::RejectReason::AmbiguousDevice`]), never guessed.
//! - **Values**: numeric OBX (`NM`) whose OBX-3 carries an IEEE 11073 (MDC) code the
//!   canonical field table knows ([`crate::fields::by_mdc`]; code first, the `MDC_…` name
//!   second; LOINC-first rows use the MDC alternate). OBX-11 `X`, `D` or `W`, an empty
//!   OBX-5, a non-number, a vendor sentinel (`-999`, `-100`: negative, so out of every
//!   range) and a unit the field cannot be converted from are not written. °F is converted.
//! - **Time**: OBX-14, else OBR-7, else MSH-7, else the receipt. IHE PCD requires
//!   synchronized clocks and the zone offset; a time without offset is read in
//!   `hl7.time_zone` ([`time::Zone`]: the gateway's own by default). A local time that its zone
//!   skips (the change to daylight saving time) is refused; one it has twice (the repeated
//!   hour) is refused unless the later instant is still ahead of the gateway clock ([`time`]
//!   says why). A time further ahead of the gateway clock than `clock.future_tolerance_ms` is
//!   a device clock that is wrong: refused, and its device reported (`clock_ahead`).
//!   Observations are grouped into one reading per device and time, so NIBP measured earlier
//!   is written at its own time and a repeat of it in a later message overwrites the same
//!   point in InfluxDB.
//! - **Demo and test data**: MSH-11 `T` (training) or `D` (debugging), or `DEMO` in any
//!   OBX-8, drops the whole message ([`crate::decode::RejectReason::DemoData`]); it is still acknowledged
//!   (AA), so the sender does not retry.
//! - **ACK** (original mode): AA once the readings are committed; AR for what a retry
//!   cannot fix (not HL7, not ORU^R01, no control id, no device identity); AE for an ORU
//!   without any OBX. MSA-3 carries a fixed reason text, never message content.
//!
//! Files, in the order a message passes them: [`mllp`] cuts messages from the stream;
//! [`message`] reads delimiters, fields, escapes and the header; [`decode`] turns a message
//! into readings and its answer, with [`time`] (times and zones), `values` (OBX-3 codes and
//! OBX-6 units) and `identity` (which device an observation belongs to); [`retry`] tells a
//! resend from a new message; [`ack`] writes the answer. [`build`] writes ORU^R01 messages
//! for the simulator and the tests.

pub mod ack;
pub mod build;
pub mod decode;
mod identity;
pub mod message;
pub mod mllp;
pub mod retry;
#[cfg(test)]
mod testutil;
pub mod time;
mod values;
