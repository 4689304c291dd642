//! Incremental scanner for chunked bodies (RFC 9112 §7.1) forwarded as-is.
//!
//! simian never re-encodes a chunked body: it only needs to know where the
//! body ends and which bytes are chunk data, so that data can be spliced
//! from socket to socket while the framing (size lines, CRLFs, trailers) is
//! read into a buffer, checked here and written on unchanged.
//!
//! Usage: call [`ChunkedScanner::step`] with the unforwarded bytes at hand.
//! - `NeedMore`: read more framing bytes into the buffer.
//! - `Framing(n)`: the first `n` bytes are valid framing, forward them.
//! - `Data(n)`: `n` bytes of chunk data come next; forward up to `n` of them
//!   from the buffer or splice them from the socket, then report the count
//!   with [`ChunkedScanner::data_consumed`].
//! - `Done(n)`: the first `n` bytes end the body; what follows is the next
//!   message.
//!
//! The scanner keeps its own state between calls, so framing may arrive one
//! byte at a time.

/// Longest chunk-size line (size and extensions), CRLF excluded.
pub const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section, final CRLF included.
pub const MAX_TRAILERS: usize = 64 * 1024;
/// splice(2) and file offsets are signed 64-bit; a larger size can only be
/// an attack or garbage.
const MAX_CHUNK_SIZE: u64 = i64::MAX as u64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkStep {
    NeedMore,
    Framing(usize),
    Data(u64),
    Done(usize),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("bad chunked body: {0}")]
pub struct ChunkError(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Chunk size digits.
    Size,
    /// Whitespace after the size: only `;` may follow (BWS of chunk-ext).
    SizeWs,
    /// Chunk extensions, up to CR.
    Ext,
    /// CR of the size line seen.
    SizeLf,
    Data,
    /// After the data, CRLF is mandatory.
    DataCr,
    DataLf,
    /// Start of a trailer line or of the final empty line.
    TrailerStart,
    TrailerName,
    TrailerValue,
    TrailerLf,
    /// CR of the final empty line seen.
    EndLf,
    Done,
}

#[derive(Debug, Clone)]
pub struct ChunkedScanner {
    state: State,
    size: u64,
    digits: bool,
    line_len: usize,
    trailer_len: usize,
    remaining: u64,
}

impl Default for ChunkedScanner {
    fn default() -> Self {
        Self::new()
    }
}

impl ChunkedScanner {
    pub fn new() -> Self {
        ChunkedScanner {
            state: State::Size,
            size: 0,
            digits: false,
            line_len: 0,
            trailer_len: 0,
            remaining: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Chunk data bytes still expected in the current chunk (0 when the
    /// scanner is on framing).
    pub fn data_remaining(&self) -> u64 {
        if self.state == State::Data {
            self.remaining
        } else {
            0
        }
    }

    /// Reports `n` chunk data bytes forwarded after a `Data` step. More than
    /// announced is a caller bug; it is clamped rather than trusted.
    pub fn data_consumed(&mut self, n: u64) {
        debug_assert!(self.state == State::Data && n <= self.remaining);
        if self.state == State::Data {
            self.remaining = self.remaining.saturating_sub(n);
            if self.remaining == 0 {
                self.state = State::DataCr;
            }
        }
    }

    pub fn step(&mut self, buf: &[u8]) -> Result<ChunkStep, ChunkError> {
        match self.state {
            State::Data => return Ok(ChunkStep::Data(self.remaining)),
            State::Done => return Ok(ChunkStep::Done(0)),
            _ => {}
        }
        for (i, &b) in buf.iter().enumerate() {
            self.byte(b)?;
            match self.state {
                State::Data => return Ok(ChunkStep::Framing(i + 1)),
                State::Done => return Ok(ChunkStep::Done(i + 1)),
                _ => {}
            }
        }
        Ok(if buf.is_empty() {
            ChunkStep::NeedMore
        } else {
            ChunkStep::Framing(buf.len())
        })
    }

    fn byte(&mut self, b: u8) -> Result<(), ChunkError> {
        use State::*;
        if matches!(self.state, Size | SizeWs | Ext) && b != b'\r' {
            self.line_len += 1;
            if self.line_len > MAX_CHUNK_LINE {
                return Err(ChunkError("chunk size line too long"));
            }
        }
        if matches!(
            self.state,
            TrailerStart | TrailerName | TrailerValue | TrailerLf | EndLf
        ) {
            self.trailer_len += 1;
            if self.trailer_len > MAX_TRAILERS {
                return Err(ChunkError("trailer section too large"));
            }
        }
        self.state = match (self.state, b) {
            (Size, _) if b.is_ascii_hexdigit() => {
                // to_digit cannot fail on a hex digit; 0 keeps this panic-free.
                let d = u64::from(char::from(b).to_digit(16).unwrap_or(0));
                self.size = self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(d))
                    .filter(|&s| s <= MAX_CHUNK_SIZE)
                    .ok_or(ChunkError("chunk size too large"))?;
                self.digits = true;
                Size
            }
            (Size, _) if !self.digits => return Err(ChunkError("invalid chunk size")),
            (Size, b';') | (SizeWs, b';') => Ext,
            (Size, b' ' | b'\t') | (SizeWs, b' ' | b'\t') => SizeWs,
            (Size | Ext, b'\r') => SizeLf,
            (Size | SizeWs | Ext, b'\n') => return Err(ChunkError("bare LF in chunk size line")),
            (Size | SizeWs, _) => return Err(ChunkError("invalid chunk size")),
            (Ext, _) if b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80 => Ext,
            (Ext, _) => return Err(ChunkError("control character in chunk extension")),
            (SizeLf, b'\n') => {
                let size = std::mem::take(&mut self.size);
                self.digits = false;
                self.line_len = 0;
                if size == 0 {
                    TrailerStart
                } else {
                    self.remaining = size;
                    Data
                }
            }
            (SizeLf, _) => return Err(ChunkError("bare CR in chunk size line")),
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Size,
            (DataCr | DataLf, _) => return Err(ChunkError("missing CRLF after chunk data")),
            (TrailerStart, b'\r') => EndLf,
            (TrailerStart, b' ' | b'\t') => return Err(ChunkError("obs-fold in trailer")),
            (TrailerStart | TrailerName, _) if super::fields::is_tchar(b) => TrailerName,
            (TrailerName, b':') => TrailerValue,
            (TrailerStart | TrailerName, _) => {
                return Err(ChunkError("invalid trailer field name"))
            }
            (TrailerValue, b'\r') => TrailerLf,
            (TrailerValue, _) if super::fields::is_field_vchar(b) => TrailerValue,
            (TrailerValue, _) => return Err(ChunkError("control character or bare LF in trailer")),
            (TrailerLf, b'\n') => TrailerStart,
            (TrailerLf, _) => return Err(ChunkError("bare CR in trailer")),
            (EndLf, b'\n') => Done,
            (EndLf, _) => return Err(ChunkError("bare CR after trailers")),
            (Data | Done, _) => return Err(ChunkError("internal: framing byte in data state")),
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests;
