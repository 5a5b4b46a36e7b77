//! PostgreSQL's binary `COPY` format, for the types the trend tables use: a header, one tuple per
//! row (a field count, then each field as a length and its bytes in network order, or -1 for
//! NULL) and a trailer. See "Binary Format" under `COPY` in the PostgreSQL manual.
//!
//! Binary rather than text: the server reads a `timestamptz` or a `bigint` as 8 bytes instead of
//! parsing its text, and nothing needs escaping.

/// Milliseconds from the Unix epoch to PostgreSQL's (2000-01-01T00:00:00Z).
const PG_EPOCH_MS: i64 = 946_684_800_000;

/// One binary `COPY ... FROM STDIN (FORMAT binary)` payload, built row by row.
#[derive(Debug)]
pub struct BinaryCopy {
    buf: Vec<u8>,
    fields: i16,
}

impl BinaryCopy {
    /// A payload whose rows have `fields` columns each.
    pub fn new(fields: usize) -> Self {
        let mut buf = Vec::with_capacity(16 * 1024);
        buf.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
        buf.extend_from_slice(&0i32.to_be_bytes()); // flags: no OIDs
        buf.extend_from_slice(&0i32.to_be_bytes()); // no header extension
        Self {
            buf,
            fields: i16::try_from(fields).expect("a handful of columns"),
        }
    }

    /// Starts a row; its `fields` values follow, in the statement's column order.
    pub fn row(&mut self) {
        self.buf.extend_from_slice(&self.fields.to_be_bytes());
    }

    fn field(&mut self, bytes: &[u8]) {
        let len = i32::try_from(bytes.len()).expect("a field under 2 GiB");
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(bytes);
    }

    /// A `text` value.
    pub fn text(&mut self, s: &str) {
        self.field(s.as_bytes());
    }

    /// A `bigint` value.
    pub fn int8(&mut self, v: i64) {
        self.field(&v.to_be_bytes());
    }

    /// A `timestamptz` value from epoch milliseconds.
    pub fn timestamptz_ms(&mut self, ms: i64) {
        self.timestamptz_us(ms * 1000);
    }

    /// A `timestamptz` value from epoch microseconds (microseconds since 2000-01-01 on the wire).
    pub fn timestamptz_us(&mut self, us: i64) {
        self.int8(us - PG_EPOCH_MS * 1000);
    }

    /// A `jsonb` value from its JSON text, or NULL.
    pub fn jsonb(&mut self, json: Option<&str>) {
        match json {
            None => self.buf.extend_from_slice(&(-1i32).to_be_bytes()),
            Some(s) => {
                let len = i32::try_from(s.len() + 1).expect("a field under 2 GiB");
                self.buf.extend_from_slice(&len.to_be_bytes());
                self.buf.push(1); // jsonb's binary format version
                self.buf.extend_from_slice(s.as_bytes());
            }
        }
    }

    /// Bytes held.
    pub fn len(&self) -> usize {
        self.buf.len()
    }

    /// Whether nothing is held (after [`BinaryCopy::take`]).
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    /// The bytes so far, to send as one chunk; the rows that follow continue the payload.
    pub fn take(&mut self) -> Vec<u8> {
        let capacity = self.buf.capacity();
        std::mem::replace(&mut self.buf, Vec::with_capacity(capacity))
    }

    /// The payload, with its trailer.
    pub fn finish(mut self) -> Vec<u8> {
        self.buf.extend_from_slice(&(-1i16).to_be_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_row_is_laid_out_as_the_manual_says() {
        let mut c = BinaryCopy::new(4);
        c.row();
        c.text("ab");
        c.int8(-2);
        c.timestamptz_ms(PG_EPOCH_MS + 1);
        c.jsonb(None);
        let b = c.finish();
        let mut want = b"PGCOPY\n\xff\r\n\0".to_vec();
        want.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0, 4]);
        want.extend_from_slice(&[0, 0, 0, 2, b'a', b'b']);
        want.extend_from_slice(&[0, 0, 0, 8, 255, 255, 255, 255, 255, 255, 255, 254]);
        want.extend_from_slice(&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0x03, 0xe8]);
        want.extend_from_slice(&[255, 255, 255, 255]);
        want.extend_from_slice(&[255, 255]);
        assert_eq!(b, want);
    }

    #[test]
    fn chunks_taken_on_the_way_add_up_to_the_whole_payload() {
        let rows = |c: &mut BinaryCopy, taken: &mut Vec<u8>, every: usize| {
            for i in 0..10 {
                c.row();
                c.int8(i);
                c.text("x");
                if every > 0 && (i as usize).is_multiple_of(every) {
                    taken.extend(c.take());
                    assert!(c.is_empty());
                }
            }
        };
        let (mut whole, mut chunked) = (BinaryCopy::new(2), BinaryCopy::new(2));
        let (mut a, mut b) = (vec![], vec![]);
        rows(&mut whole, &mut a, 0);
        rows(&mut chunked, &mut b, 3);
        a.extend(whole.finish());
        b.extend(chunked.finish());
        assert_eq!(a, b);
        assert_eq!(a.len(), 19 + 10 * (2 + 12 + 5) + 2);
    }

    #[test]
    fn jsonb_carries_its_version_byte() {
        let mut c = BinaryCopy::new(1);
        c.row();
        c.jsonb(Some("{}"));
        let b = c.finish();
        assert_eq!(&b[21..b.len() - 2], &[0, 0, 0, 3, 1, b'{', b'}']);
    }
}
