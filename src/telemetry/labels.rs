//! Label values that come from code, for the stages that count and the metrics that show
//! them. Telemetry imports no stage: the reasons a metric lists even at zero (so a dashboard
//! or an alert has a series before the first event) are spelled here, and the tests below
//! hold them equal to the stages' own names.

/// Source label of the MQTT transport.
pub const SOURCE_MQTT: &str = "mqtt";
/// Protocol label of the MQTT JSON payload format.
pub const PROTOCOL_JSON: &str = "json";
/// Source label of serial ports; their protocol label is the port's protocol.
pub const SOURCE_SERIAL: &str = "serial";
/// Source and protocol labels of HL7 v2 over MLLP.
pub const SOURCE_MLLP: &str = "mllp";
pub const PROTOCOL_HL7: &str = "hl7";

/// Why a reading found no stream (`resolve::Unbound::as_str`), in the order of
/// [`super::counters::Counters::unbound`]'s slots.
pub const UNBOUND_REASONS: [&str; 3] = ["unknown_serial", "no_stream_at_time", "ambiguous_signal_type"];

/// Why a reading waits parked (the queue's park reasons).
pub const PARKED_FRESH: &str = "fresh";
pub const PARKED_UNBOUND: &str = "unbound";

/// Why points became dead letters (the sink's reasons); others found in the queue are shown
/// after these.
pub const DEAD_LETTER_REASONS: [&str; 2] = ["rejected", "too_large"];

/// Why a pushed binding snapshot was refused (`bindings::push::Refused::label`).
pub const PUSH_REFUSED_REASONS: [&str; 8] =
    ["malformed", "untrusted_key", "bad_signature", "other_gateway", "not_newer", "too_old", "superseded", "invalid"];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resolve::Unbound;

    #[test]
    fn labels_are_the_stages_own_names() {
        // A new `Unbound` variant stops this match from compiling: give it a slot.
        let slot = |u: Unbound| match u {
            Unbound::UnknownSerial => 0,
            Unbound::NotCovered => 1,
            Unbound::Ambiguous => 2,
        };
        for u in [Unbound::UnknownSerial, Unbound::NotCovered, Unbound::Ambiguous] {
            assert_eq!(UNBOUND_REASONS[slot(u)], u.as_str());
        }
        use crate::queue::dead_letters::DeadLetterReason;
        use crate::queue::parked::ParkReason;
        assert_eq!([PARKED_FRESH, PARKED_UNBOUND], ParkReason::ALL.map(ParkReason::as_str));
        assert_eq!(DEAD_LETTER_REASONS, [DeadLetterReason::Rejected.as_str(), DeadLetterReason::TooLarge.as_str()]);
        assert_eq!(PUSH_REFUSED_REASONS, crate::bindings::push::refused::Refused::LABELS);
    }
}
