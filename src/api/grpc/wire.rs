//! A protobuf wire-format scanner that reads a message's fields without allocating, so that a request can be
//! checked (how many windows, inputs, outputs...) before prost turns each two-byte empty element into a heap
//! object: decoding alone would otherwise cost 20-150 times the request's size.

use crate::error::ServeError;

/// Why bytes are not valid protobuf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

impl From<Malformed> for ServeError {
    fn from(m: Malformed) -> Self {
        ServeError::Malformed(m.0.to_owned())
    }
}

/// A field's value, as the wire carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Value<'a> {
    Varint(u64),
    Fixed64,
    /// Length-delimited: bytes, a string, a message or a packed repeated field.
    Len(&'a [u8]),
    Fixed32,
    /// A (deprecated) group, skipped whole.
    Group,
}

/// Deepest nesting of groups skipped, as prost's recursion limit.
const MAX_DEPTH: usize = 100;

/// The fields of one message, in wire order: `(number, value)`; a malformed field ends the iteration.
pub(crate) struct Fields<'a> {
    buf: &'a [u8],
    failed: bool,
}

impl<'a> Fields<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf, failed: false }
    }

    fn varint(&mut self) -> Result<u64, Malformed> {
        let mut value = 0u64;
        for i in 0..10 {
            let (&b, rest) = self
                .buf
                .split_first()
                .ok_or(Malformed("a varint runs past the end of the message"))?;
            self.buf = rest;
            value |= u64::from(b & 0x7f) << (7 * i);
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(Malformed("a varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Malformed> {
        if n > self.buf.len() {
            return Err(Malformed("a field runs past the end of the message"));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn tag(&mut self) -> Result<(u32, u8), Malformed> {
        let tag = self.varint()?;
        let number =
            u32::try_from(tag >> 3).map_err(|_| Malformed("a field number out of range"))?;
        if number == 0 || number >= 1 << 29 {
            return Err(Malformed("a field number out of range"));
        }
        Ok((number, (tag & 7) as u8))
    }

    /// The value of a field of `wire` type, or the group it starts skipped.
    fn value(&mut self, number: u32, wire: u8, depth: usize) -> Result<Value<'a>, Malformed> {
        Ok(match wire {
            0 => Value::Varint(self.varint()?),
            1 => {
                self.take(8)?;
                Value::Fixed64
            }
            2 => {
                let len = usize::try_from(self.varint()?)
                    .map_err(|_| Malformed("a length out of range"))?;
                Value::Len(self.take(len)?)
            }
            3 => {
                if depth >= MAX_DEPTH {
                    return Err(Malformed("groups nested too deep"));
                }
                loop {
                    let (n, w) = self.tag()?;
                    if w == 4 {
                        if n != number {
                            return Err(Malformed("a group ends with the wrong field number"));
                        }
                        break Value::Group;
                    }
                    self.value(n, w, depth + 1)?;
                }
            }
            5 => {
                self.take(4)?;
                Value::Fixed32
            }
            4 => return Err(Malformed("a group end without its start")),
            _ => return Err(Malformed("an invalid wire type")),
        })
    }
}

impl<'a> Iterator for Fields<'a> {
    type Item = Result<(u32, Value<'a>), Malformed>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.buf.is_empty() {
            return None;
        }
        let field = self
            .tag()
            .and_then(|(number, wire)| Ok((number, self.value(number, wire, 0)?)));
        self.failed = field.is_err();
        Some(field)
    }
}

/// How many elements a repeated scalar field's occurrence holds: a packed run of varints, or one element.
pub(crate) fn varints(value: Value<'_>) -> usize {
    match value {
        Value::Len(bytes) => bytes.iter().filter(|b| **b < 0x80).count(),
        _ => 1,
    }
}

/// How many times field `number` occurs in `buf` (every occurrence of a repeated field is one element).
pub(crate) fn count(buf: &[u8], number: u32) -> Result<usize, Malformed> {
    let mut n = 0;
    for field in Fields::new(buf) {
        if field?.0 == number {
            n += 1;
        }
    }
    Ok(n)
}

/// drsn.v1 `DiagnoseRequest`: at most `max_windows` windows, counted before any is decoded.
pub(crate) fn check_diagnose(buf: &[u8], max_windows: usize) -> Result<(), ServeError> {
    let got = count(buf, 1)?;
    if got > max_windows {
        return Err(ServeError::TooManyWindows {
            got,
            max: max_windows,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::grpc::proto;
    use prost::Message;

    #[test]
    fn fields_of_a_real_message_and_a_group() {
        let request = proto::DiagnoseRequest {
            windows: vec![proto::Window::default(); 3],
            detail: 2,
            ..Default::default()
        };
        let buf = request.encode_to_vec();
        assert_eq!(count(&buf, 1), Ok(3));
        assert_eq!(count(&buf, 2), Ok(1));
        // An unknown group (field 9: start, a varint inside, end) is skipped as prost skips it.
        let mut with_group = buf.clone();
        with_group.extend_from_slice(&[(9 << 3) | 3, 8, 1, (9 << 3) | 4]);
        assert_eq!(count(&with_group, 1), Ok(3));
        assert!(proto::DiagnoseRequest::decode(with_group.as_slice()).is_ok());
    }

    #[test]
    fn malformed_bytes_are_named_not_panicked_on() {
        for bad in [
            &[0x0a, 0x05, 0x00][..], // a length past the end
            &[
                0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
            ][..],
            &[0x00][..],               // field number 0
            &[0x0e][..],               // wire type 6
            &[(9 << 3) | 3, 8, 1][..], // a group never ended
            &[(9 << 3) | 4][..],       // an end without a start
        ] {
            assert!(count(bad, 1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn too_many_windows_are_refused_before_decoding() {
        let buf = [0x0au8, 0x00].repeat(1000);
        assert!(matches!(
            check_diagnose(&buf, 256),
            Err(ServeError::TooManyWindows {
                got: 1000,
                max: 256
            })
        ));
        assert!(check_diagnose(&buf, 1000).is_ok());
        assert_eq!(varints(Value::Len(&[0x01, 0x80, 0x01, 0x05])), 3);
    }
}
