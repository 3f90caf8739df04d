//! The queue's storage unit: the points one commit queued for one destination, in one row.
//!
//! A row per point cost a B-tree insert, an index entry and a statement on the way in, and
//! the same again on the way out; that was most of the gateway's CPU under load. A segment
//! holds up to [`MAX_POINTS`] points as one blob, so a commit writes a few rows and a
//! delivered batch deletes a few.
//!
//! Each point keeps its own id (ids never repeat, see `points`), so the sink can still name
//! single points: to dead-letter them, or to delete a range that ends inside a segment. Those
//! rewrite the segment without the points; the ids of the others do not change.
//!
//! Blob layout, one record per point, every integer an unsigned LEB128 varint:
//! `id - previous id` (the first record: `id - first_id`), `stream_key`,
//! zigzag(`ts_ns - previous ts_ns`) (the first: from 0),
//! zigzag(`enqueued_ns - segment enqueued_ns`), line length, line bytes (UTF-8).

/// Most points in one segment. Smaller than the default delivery batch (5,000 lines), so a
/// batch takes whole segments and deletes them without rewriting.
pub const MAX_POINTS: usize = 512;
/// Most line bytes in one segment (a single longer line still gets a segment of its own).
pub const MAX_BYTES: usize = 256 * 1024;

/// Whether a segment of `points` points and `bytes` line bytes (newlines included) takes a
/// line of `line_len` more: at most `max_points` points and `MAX_BYTES`, and an empty segment
/// takes any line.
pub fn takes(points: usize, bytes: usize, line_len: usize, max_points: usize) -> bool {
    points == 0 || (points < max_points && bytes + line_len < MAX_BYTES)
}

/// One point as stored in a segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: i64,
    pub stream_key: i64,
    pub ts_ns: i64,
    pub enqueued_ns: i64,
    pub line: String,
}

/// A segment's blob could not be read back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("damaged queue segment: {0}")]
pub struct Damaged(&'static str);

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// Appends records to a blob. Ids must rise; `first_id` and `enqueued_ns` are the segment's.
pub struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    prev_id: i64,
    prev_ts: i64,
    enqueued_ns: i64,
}

impl<'a> Encoder<'a> {
    pub fn new(out: &'a mut Vec<u8>, first_id: i64, enqueued_ns: i64) -> Self {
        out.clear();
        Self { out, prev_id: first_id, prev_ts: 0, enqueued_ns }
    }

    pub fn push(&mut self, id: i64, stream_key: i64, ts_ns: i64, enqueued_ns: i64, line: &str) {
        debug_assert!(id >= self.prev_id, "segment ids must rise");
        put_varint(self.out, id.wrapping_sub(self.prev_id) as u64);
        put_varint(self.out, stream_key as u64);
        put_varint(self.out, zigzag(ts_ns.wrapping_sub(self.prev_ts)));
        put_varint(self.out, zigzag(enqueued_ns.wrapping_sub(self.enqueued_ns)));
        put_varint(self.out, line.len() as u64);
        self.out.extend_from_slice(line.as_bytes());
        self.prev_id = id;
        self.prev_ts = ts_ns;
    }
}

/// Reads a blob back, record by record. Never panics: a damaged blob yields an error.
pub struct Decoder<'a> {
    rest: &'a [u8],
    prev_id: i64,
    prev_ts: i64,
    enqueued_ns: i64,
}

impl<'a> Decoder<'a> {
    pub fn new(blob: &'a [u8], first_id: i64, enqueued_ns: i64) -> Self {
        Self { rest: blob, prev_id: first_id, prev_ts: 0, enqueued_ns }
    }

    fn varint(&mut self) -> Result<u64, Damaged> {
        let mut v = 0u64;
        for (i, b) in self.rest.iter().enumerate().take(10) {
            let bits = u64::from(b & 0x7f);
            if i == 9 && bits > 1 {
                return Err(Damaged("integer too long"));
            }
            v |= bits << (7 * i);
            if b & 0x80 == 0 {
                self.rest = &self.rest[i + 1..];
                return Ok(v);
            }
        }
        Err(Damaged("record cut short"))
    }

    /// The next record's id, stream, time and enqueue time, and its line as bytes.
    fn next_raw(&mut self) -> Result<(i64, i64, i64, i64, &'a [u8]), Damaged> {
        let step = self.varint()?;
        let id =
            i64::try_from(step).ok().and_then(|s| self.prev_id.checked_add(s)).ok_or(Damaged("id out of range"))?;
        let stream_key = i64::try_from(self.varint()?).map_err(|_| Damaged("stream out of range"))?;
        let ts_ns = self.prev_ts.wrapping_add(unzigzag(self.varint()?));
        let enqueued_ns = self.enqueued_ns.wrapping_add(unzigzag(self.varint()?));
        let len = usize::try_from(self.varint()?).map_err(|_| Damaged("line length out of range"))?;
        if len > self.rest.len() {
            return Err(Damaged("line cut short"));
        }
        let (line, rest) = self.rest.split_at(len);
        self.rest = rest;
        self.prev_id = id;
        self.prev_ts = ts_ns;
        Ok((id, stream_key, ts_ns, enqueued_ns, line))
    }

    /// The next record with an id above `after`, `None` at the end; records up to it are
    /// skipped without copying their lines (a lease that starts inside a segment).
    pub fn next_after(&mut self, after: i64) -> Result<Option<Record>, Damaged> {
        while !self.rest.is_empty() {
            let (id, stream_key, ts_ns, enqueued_ns, line) = self.next_raw()?;
            let line = std::str::from_utf8(line).map_err(|_| Damaged("line is not UTF-8"))?;
            if id > after {
                return Ok(Some(Record { id, stream_key, ts_ns, enqueued_ns, line: line.to_owned() }));
            }
        }
        Ok(None)
    }

    /// The next record, `None` at the end.
    pub fn next_record(&mut self) -> Result<Option<Record>, Damaged> {
        if self.rest.is_empty() {
            return Ok(None);
        }
        let (id, stream_key, ts_ns, enqueued_ns, line) = self.next_raw()?;
        let line = std::str::from_utf8(line).map_err(|_| Damaged("line is not UTF-8"))?.to_owned();
        Ok(Some(Record { id, stream_key, ts_ns, enqueued_ns, line }))
    }
}

/// Every record of a blob.
pub fn decode(blob: &[u8], first_id: i64, enqueued_ns: i64) -> Result<Vec<Record>, Damaged> {
    let mut d = Decoder::new(blob, first_id, enqueued_ns);
    let mut out = Vec::new();
    while let Some(r) = d.next_record()? {
        out.push(r);
    }
    Ok(out)
}

/// The enqueue times of a blob's first and last records (`None`: no record), read without
/// copying any line: drop_oldest needs them for its log when it drops whole segments.
pub fn enqueue_span(blob: &[u8], first_id: i64, enqueued_ns: i64) -> Result<Option<(i64, i64)>, Damaged> {
    let mut d = Decoder::new(blob, first_id, enqueued_ns);
    let mut span = None;
    while !d.rest.is_empty() {
        let (_, _, _, at, _) = d.next_raw()?;
        span = Some(span.map_or((at, at), |(first, _)| (first, at)));
    }
    Ok(span)
}

/// Encodes `records` (ids rising) as a segment starting at `first_id`; the segment's enqueue
/// time is the earliest of theirs.
pub fn encode(records: &[Record], first_id: i64, out: &mut Vec<u8>) -> i64 {
    let enqueued_ns = records.iter().map(|r| r.enqueued_ns).min().unwrap_or(0);
    let mut e = Encoder::new(out, first_id, enqueued_ns);
    for r in records {
        e.push(r.id, r.stream_key, r.ts_ns, r.enqueued_ns, &r.line);
    }
    enqueued_ns
}

/// Fuzzing entry point: decoding arbitrary bytes returns, and what decodes encodes back to
/// the same records.
#[doc(hidden)]
pub fn fuzz(data: &[u8]) {
    if let Ok(records) = decode(data, 1, 0) {
        let mut blob = Vec::new();
        let enq = encode(&records, 1, &mut blob);
        assert_eq!(decode(&blob, 1, enq).ok(), Some(records));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn record() -> impl Strategy<Value = (u8, i64, i64, i64, String)> {
        (any::<u8>(), 0..i64::MAX, any::<i64>(), any::<i64>(), "\\PC{0,40}")
    }

    proptest! {
        #[test]
        fn records_read_back_as_written(first in 0..i64::MAX / 2, recs in proptest::collection::vec(record(), 0..40)) {
            let mut id = first;
            let records: Vec<Record> = recs
                .into_iter()
                .map(|(step, stream_key, ts_ns, enqueued_ns, line)| {
                    id += i64::from(step);
                    Record { id, stream_key, ts_ns, enqueued_ns, line }
                })
                .collect();
            let mut blob = Vec::new();
            let enq = encode(&records, first, &mut blob);
            prop_assert_eq!(decode(&blob, first, enq).expect("decodes"), records);
        }

        #[test]
        fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            fuzz(&data);
        }

        #[test]
        fn every_cut_of_a_blob_is_an_error_or_a_prefix(n in 1usize..20, cut in any::<prop::sample::Index>()) {
            let records: Vec<Record> = (0..n as i64)
                .map(|i| Record { id: 10 + i, stream_key: i, ts_ns: 1_700_000_000_000_000_000 + i, enqueued_ns: 5, line: format!("m v={i}i") })
                .collect();
            let mut blob = Vec::new();
            let enq = encode(&records, 10, &mut blob);
            let cut = cut.index(blob.len());
            if let Ok(got) = decode(&blob[..cut], 10, enq) {
                prop_assert_eq!(&records[..got.len()], &got[..]);
            }
        }
    }

    #[test]
    fn next_after_skips_to_the_first_later_id() {
        let records: Vec<Record> = [3i64, 5, 9]
            .iter()
            .map(|&id| Record { id, stream_key: 1, ts_ns: id * 10, enqueued_ns: 7, line: format!("m v={id}i") })
            .collect();
        let mut blob = Vec::new();
        let enq = encode(&records, 3, &mut blob);
        let mut d = Decoder::new(&blob, 3, enq);
        assert_eq!(d.next_after(4).expect("ok"), Some(records[1].clone()));
        assert_eq!(d.next_after(4).expect("ok"), Some(records[2].clone()));
        assert_eq!(d.next_after(4).expect("ok"), None);
        assert_eq!(Decoder::new(&blob, 3, enq).next_after(9).expect("ok"), None);
    }

    #[test]
    fn the_enqueue_span_is_that_of_the_first_and_last_records() {
        let records: Vec<Record> = [(3i64, 40i64), (4, 10), (9, 30)]
            .iter()
            .map(|&(id, enqueued_ns)| Record { id, stream_key: 1, ts_ns: 1, enqueued_ns, line: "m v=1i".into() })
            .collect();
        let mut blob = Vec::new();
        let enq = encode(&records, 3, &mut blob);
        assert_eq!(enqueue_span(&blob, 3, enq), Ok(Some((40, 30))));
        assert_eq!(enqueue_span(&[], 3, enq), Ok(None));
        assert_eq!(enqueue_span(&blob[..blob.len() - 1], 3, enq), Err(Damaged("line cut short")));
    }

    #[test]
    fn damage_is_reported_not_panicked() {
        assert_eq!(decode(&[0x80], 1, 0), Err(Damaged("record cut short")));
        assert_eq!(decode(&[0, 0, 0, 0, 5, b'a'], 1, 0), Err(Damaged("line cut short")));
        assert_eq!(decode(&[0, 0, 0, 0, 1, 0xff], 1, 0), Err(Damaged("line is not UTF-8")));
        assert_eq!(decode(&[0xff; 11], 1, 0), Err(Damaged("integer too long")));
        assert_eq!(
            decode(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01], i64::MAX, 0).map(|_| ()),
            Err(Damaged("id out of range"))
        );
    }
}
