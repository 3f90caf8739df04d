//! Domain types shared by the stages. No I/O here: a [`Reading`] as decoders produce it, and
//! a [`Binding`] as binding sources deliver it.

mod binding;
mod reading;

pub use binding::{Binding, CORE_TAGS, Destination, PERSONAL_TAGS, is_personal_tag, parse_rfc3339};
pub use reading::{MAX_SERIAL_LEN, Reading, loggable, valid_serial, valid_signal_type};
