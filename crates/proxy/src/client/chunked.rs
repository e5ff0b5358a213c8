//! HTTP/1.1 chunked transfer coding, decoded as bytes arrive: a chunk's size
//! line, its data or its closing CRLF may be split across reads at any byte.

use std::ops::Range;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Chunked {
    Size {
        value: u64,
        digits: u8,
    },
    /// A chunk extension (`;name=value`), which carries nothing for a relay.
    Extension {
        value: u64,
    },
    SizeLf {
        value: u64,
    },
    Data(u64),
    DataCr,
    DataLf,
    /// After the last chunk: trailer fields, skipped, until an empty line.
    Trailer {
        line_start: bool,
    },
    FinalLf,
    Done,
}

impl Chunked {
    pub(crate) fn new() -> Self {
        Chunked::Size {
            value: 0,
            digits: 0,
        }
    }

    /// Decodes the start of `input`, one chunk's data at most, so that chunks
    /// the backend sent apart (one event each) stay apart even when they arrive
    /// together: where in `input` that data lies (a slice for the caller to take
    /// without copying), and how much of `input` was used. The framing after a
    /// chunk is read with it, so the last chunk ends the body in the same call.
    pub(crate) fn decode(&mut self, input: &[u8]) -> Result<(Range<usize>, usize), String> {
        let mut data = 0..0;
        let mut at = 0;
        while at < input.len() {
            if *self == Chunked::Done {
                break;
            }
            if let Chunked::Data(left) = *self {
                if !data.is_empty() {
                    break;
                }
                let take = left.min((input.len() - at) as u64) as usize;
                data = at..at + take;
                at += take;
                *self = match left - take as u64 {
                    0 => Chunked::DataCr,
                    n => Chunked::Data(n),
                };
                continue;
            }
            self.step(input[at])?;
            at += 1;
        }
        Ok((data, at))
    }

    fn step(&mut self, b: u8) -> Result<(), String> {
        *self = match (*self, b) {
            (Chunked::Size { value, digits }, _) if b.is_ascii_hexdigit() => {
                if digits >= 15 {
                    return Err("chunk size too large".into());
                }
                let d = (b as char).to_digit(16).unwrap_or_default() as u64;
                Chunked::Size {
                    value: value * 16 + d,
                    digits: digits + 1,
                }
            }
            (Chunked::Size { digits: 0, .. }, _) => {
                return Err(format!("expected a chunk size, found byte {b:#04x}"))
            }
            (Chunked::Size { value, .. }, b';' | b' ' | b'\t') => Chunked::Extension { value },
            (Chunked::Size { value, .. } | Chunked::Extension { value }, b'\r') => {
                Chunked::SizeLf { value }
            }
            (Chunked::Size { value, .. } | Chunked::Extension { value }, b'\n')
            | (Chunked::SizeLf { value }, b'\n') => Self::after_size(value),
            (Chunked::Size { .. }, _) => return Err(format!("bad byte {b:#04x} in a chunk size")),
            (Chunked::Extension { .. }, _) => *self,
            (Chunked::DataCr, b'\r') => Chunked::DataLf,
            (Chunked::DataCr | Chunked::DataLf, b'\n') => Self::new(),
            (Chunked::Trailer { line_start: true }, b'\r') => Chunked::FinalLf,
            (Chunked::Trailer { line_start: true }, b'\n') | (Chunked::FinalLf, b'\n') => {
                Chunked::Done
            }
            (Chunked::Trailer { .. }, b'\n') => Chunked::Trailer { line_start: true },
            (Chunked::Trailer { .. }, _) => Chunked::Trailer { line_start: false },
            (state, _) => return Err(format!("bad byte {b:#04x} in chunked body ({state:?})")),
        };
        Ok(())
    }

    fn after_size(value: u64) -> Chunked {
        match value {
            0 => Chunked::Trailer { line_start: true },
            n => Chunked::Data(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Decodes `parts` as reads would bring them: the data, the state, and how
    /// many bytes were used.
    fn decode_all(parts: &[&[u8]]) -> Result<(Vec<u8>, Chunked, usize), String> {
        let mut c = Chunked::new();
        let mut all = Vec::new();
        let mut used = 0;
        for p in parts {
            let mut at = 0;
            loop {
                let (data, used) = c.decode(&p[at..])?;
                all.extend_from_slice(&p[at..][data]);
                at += used;
                if at == p.len() || c == Chunked::Done {
                    break;
                }
            }
            used += at;
            if c == Chunked::Done {
                break;
            }
        }
        Ok((all, c, used))
    }

    #[test]
    fn chunks_that_arrive_together_come_out_apart() {
        let mut c = Chunked::new();
        let wire = b"2\r\nab\r\n3\r\ncde\r\n0\r\n\r\n";
        let mut pieces = Vec::new();
        let mut at = 0;
        while c != Chunked::Done {
            let (data, used) = c.decode(&wire[at..]).unwrap();
            pieces.push(wire[at..][data].to_vec());
            at += used;
        }
        assert_eq!(
            pieces,
            [b"ab".to_vec(), b"cde".to_vec()],
            "the last one ends the body"
        );
        assert_eq!(at, wire.len());
    }

    #[test]
    fn chunks_extensions_and_trailers() {
        let body = b"5;name=x\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\nNEXT";
        let (out, state, used) = decode_all(&[body]).unwrap();
        assert_eq!(out, b"hello world");
        assert_eq!(state, Chunked::Done);
        assert_eq!(&body[used..], b"NEXT", "stops where the body ends");
    }

    #[test]
    fn bare_newlines_are_tolerated() {
        let (out, state, _) = decode_all(&[b"3\nabc\n0\n\n"]).unwrap();
        assert_eq!((out.as_slice(), state), (&b"abc"[..], Chunked::Done));
    }

    #[test]
    fn broken_framing_is_an_error() {
        assert!(decode_all(&[b"zz\r\n"]).is_err());
        assert!(decode_all(&[b"3\r\nabcX"]).is_err());
        assert!(decode_all(&[b"ffffffffffffffffff\r\n"]).is_err());
    }

    fn encode(chunks: &[Vec<u8>]) -> Vec<u8> {
        let mut v = Vec::new();
        for c in chunks.iter().filter(|c| !c.is_empty()) {
            v.extend_from_slice(format!("{:X}\r\n", c.len()).as_bytes());
            v.extend_from_slice(c);
            v.extend_from_slice(b"\r\n");
        }
        v.extend_from_slice(b"0\r\n\r\n");
        v
    }

    proptest! {
        #[test]
        fn any_split_decodes_the_same(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let wire = encode(&chunks);
            let mut at: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
            at.sort_unstable();
            let mut parts = Vec::new();
            let mut from = 0;
            for c in at {
                parts.push(&wire[from..c]);
                from = c;
            }
            parts.push(&wire[from..]);
            let (out, state, used) = decode_all(&parts).unwrap();
            prop_assert_eq!(out, chunks.concat());
            prop_assert_eq!(state, Chunked::Done);
            prop_assert_eq!(used, wire.len());
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut c = Chunked::new();
            if let Ok((data, used)) = c.decode(&bytes) {
                prop_assert!(data.end <= used && used <= bytes.len());
            }
        }
    }
}
