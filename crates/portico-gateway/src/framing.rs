//! The framing of HTTP/1.1 requests as they arrive, followed on the client's byte stream so that
//! a head with both `Content-Length` and `Transfer-Encoding` is answered 400 instead of being
//! framed one way and answered (hyper drops the `Content-Length` and serves the call, closing
//! the connection after it: safe, but the sender is never told its request is ambiguous).
//!
//! [`Framed`] wraps an accepted connection. It reads each request head line by line and, when
//! the second of the two headers arrives, renames it in place to a marker of the same length
//! ([`CL_MARK`] or [`TE_MARK`]) before hyper parses it; the gateway's screen refuses a request
//! carrying a marker with 400 and `Connection: close`. To find the next head on a keep-alive
//! connection it skips each body as hyper frames it (`Content-Length` bytes, or chunks up to the
//! last chunk and its trailers). Anything it does not follow — an upgrade, `CONNECT`, HTTP/2's
//! preface, a line hyper would refuse anyway — ends the tracking for that connection: the bytes
//! then pass untouched and hyper's own handling (safe, as above) applies. It never buffers more
//! than the start of one header line (a name is at most 17 bytes to tell apart).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What a `Content-Length` that follows a `Transfer-Encoding` becomes (as long as the name).
pub(crate) const CL_MARK: &str = "x-portico-smug";
/// What a `Transfer-Encoding` that follows a `Content-Length` becomes (as long as the name).
pub(crate) const TE_MARK: &str = "x-portico-smuggle";

const CL: &[u8] = b"content-length";
const TE: &[u8] = b"transfer-encoding";
const UPGRADE: &[u8] = b"upgrade";
/// The longest name told apart; a longer one is none of them.
const NAME_MAX: usize = TE.len();
/// How much of a request line tells `CONNECT ` and HTTP/2's `PRI * HTTP/2.0` apart.
const METHOD_MAX: usize = 8;
const HOLD_MAX: usize = NAME_MAX + 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// At the start of a head's line; `first` until the request line has been seen.
    LineStart {
        first: bool,
    },
    /// The start of a request line, from `start` in the bytes being scanned.
    Method {
        start: usize,
    },
    /// The rest of a line that needs nothing more.
    SkipLine,
    /// A header name, from `start` in the bytes being scanned.
    Name {
        start: usize,
    },
    /// A `Content-Length` value, read as digits.
    Length {
        value: Option<u64>,
    },
    Body {
        left: u64,
    },
    // The chunked states are hyper's own (`proto/h1/decode.rs`), byte for byte: where hyper
    // refuses a byte, following stops (hyper then ends the connection itself).
    ChunkSize {
        size: u64,
        digits: bool,
    },
    /// Spaces after the size: no more digits.
    ChunkLws {
        size: u64,
    },
    /// A chunk extension, up to the CR.
    ChunkExt {
        size: u64,
    },
    /// The LF after the size line's CR.
    ChunkSizeLf {
        size: u64,
    },
    ChunkData {
        left: u64,
    },
    /// The CR, then the LF, after a chunk's data.
    ChunkDataCr,
    ChunkDataLf,
    /// After the last chunk's size line: the CR of the empty line, or a trailer line.
    EndCr,
    /// A trailer line, up to its CR; then its LF.
    Trailer,
    TrailerLf,
    /// The LF of the empty line that ends the body.
    EndLf,
    /// Not followed any more: the bytes pass untouched.
    Off,
}

/// What the current head has said so far.
#[derive(Debug, Default, Clone, Copy)]
struct Head {
    length: Option<u64>,
    saw_length: bool,
    chunked: bool,
    upgrade: bool,
    marked: bool,
}

/// A byte stream whose HTTP/1.1 request framing is followed (see the module's documentation).
#[derive(Debug)]
pub struct Framed<S> {
    inner: S,
    state: State,
    head: Head,
    /// The start of a line that ended a read, given to hyper with the next one.
    held: [u8; HOLD_MAX],
    held_len: usize,
}

impl<S> Framed<S> {
    pub fn new(inner: S) -> Self {
        Framed {
            inner,
            state: State::LineStart { first: true },
            head: Head::default(),
            held: [0; HOLD_MAX],
            held_len: 0,
        }
    }

    /// Follows `bytes` (renaming in place what must be); returns how many of them may be handed
    /// on now. The rest, the start of a line not yet told apart, is to be held for the next read.
    fn scan(&mut self, bytes: &mut [u8]) -> usize {
        let mut i = 0;
        while i < bytes.len() {
            let b = bytes[i];
            self.state = match self.state {
                State::Off => return bytes.len(),
                State::LineStart { first } => match b {
                    // Empty lines before a request line are skipped (RFC 9112 §2.2).
                    b'\r' | b'\n' if first => State::LineStart { first },
                    b'\r' => State::LineStart { first },
                    b'\n' => self.head_end(),
                    _ if first => State::Method { start: i },
                    _ => State::Name { start: i },
                },
                State::Method { start } => {
                    let token = &bytes[start..=i];
                    if token.len() == METHOD_MAX || b == b' ' || b == b'\n' {
                        if token.starts_with(b"PRI ") {
                            // HTTP/2 with prior knowledge (or by ALPN): not HTTP/1.1 framing.
                            State::Off
                        } else {
                            self.head.upgrade |= token == b"CONNECT ";
                            if b == b'\n' { State::Off } else { State::SkipLine }
                        }
                    } else {
                        State::Method { start }
                    }
                }
                State::SkipLine => {
                    // Most of a head is values that need nothing: skipped to the line's end at once.
                    match memchr::memchr(b'\n', &bytes[i..]) {
                        Some(at) => {
                            i += at + 1;
                            self.state = State::LineStart { first: false };
                        }
                        None => i = bytes.len(),
                    }
                    continue;
                }
                State::Name { start } => match b {
                    b':' => self.header(&mut bytes[start..i]),
                    // A name without a colon: hyper refuses the head.
                    b'\n' => State::Off,
                    _ if i - start >= NAME_MAX => State::SkipLine,
                    _ => State::Name { start },
                },
                State::Length { value } => match b {
                    b' ' | b'\t' | b'\r' => State::Length { value },
                    b'0'..=b'9' => {
                        match value.unwrap_or(0).checked_mul(10).and_then(|v| v.checked_add(u64::from(b - b'0'))) {
                            Some(v) => State::Length { value: Some(v) },
                            None => State::Off,
                        }
                    }
                    b'\n' => match value {
                        Some(v) if self.head.length.is_none_or(|l| l == v) => {
                            self.head.length = Some(v);
                            State::LineStart { first: false }
                        }
                        // Empty or two different values: hyper refuses the head.
                        _ => State::Off,
                    },
                    _ => State::Off,
                },
                State::Body { left } => {
                    let take = left.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.state =
                        if take == left { State::LineStart { first: true } } else { State::Body { left: left - take } };
                    continue;
                }
                State::ChunkSize { size, digits } => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        let digit = (b as char).to_digit(16).unwrap_or(0);
                        match size.checked_mul(16).and_then(|s| s.checked_add(u64::from(digit))) {
                            Some(size) => State::ChunkSize { size, digits: true },
                            None => State::Off,
                        }
                    }
                    b' ' | b'\t' if digits => State::ChunkLws { size },
                    b';' if digits => State::ChunkExt { size },
                    b'\r' if digits => State::ChunkSizeLf { size },
                    _ => State::Off,
                },
                State::ChunkLws { size } => match b {
                    b' ' | b'\t' => State::ChunkLws { size },
                    b';' => State::ChunkExt { size },
                    b'\r' => State::ChunkSizeLf { size },
                    _ => State::Off,
                },
                State::ChunkExt { size } => match b {
                    b'\r' => State::ChunkSizeLf { size },
                    b'\n' => State::Off,
                    _ => State::ChunkExt { size },
                },
                State::ChunkSizeLf { size } => match b {
                    b'\n' if size == 0 => State::EndCr,
                    b'\n' => State::ChunkData { left: size },
                    _ => State::Off,
                },
                State::ChunkData { left } => {
                    let take = left.min((bytes.len() - i) as u64);
                    i += take as usize;
                    self.state = if take == left { State::ChunkDataCr } else { State::ChunkData { left: left - take } };
                    continue;
                }
                State::ChunkDataCr => {
                    if b == b'\r' {
                        State::ChunkDataLf
                    } else {
                        State::Off
                    }
                }
                State::ChunkDataLf => {
                    if b == b'\n' {
                        State::ChunkSize { size: 0, digits: false }
                    } else {
                        State::Off
                    }
                }
                State::EndCr => {
                    if b == b'\r' {
                        State::EndLf
                    } else {
                        State::Trailer
                    }
                }
                State::Trailer => {
                    if b == b'\r' {
                        State::TrailerLf
                    } else {
                        State::Trailer
                    }
                }
                State::TrailerLf => {
                    if b == b'\n' {
                        State::EndCr
                    } else {
                        State::Off
                    }
                }
                State::EndLf => {
                    if b == b'\n' {
                        State::LineStart { first: true }
                    } else {
                        State::Off
                    }
                }
            };
            i += 1;
        }
        match self.state {
            // A line's start that cannot be told apart yet: held, and read again from its start.
            State::Method { start } => {
                self.state = State::LineStart { first: true };
                start
            }
            State::Name { start } => {
                self.state = State::LineStart { first: false };
                start
            }
            _ => bytes.len(),
        }
    }

    /// A header's name, just ended by its colon.
    fn header(&mut self, name: &mut [u8]) -> State {
        if name.eq_ignore_ascii_case(CL) {
            if self.head.chunked || self.head.marked {
                name.copy_from_slice(CL_MARK.as_bytes());
                self.head.marked = true;
                return State::SkipLine;
            }
            self.head.saw_length = true;
            return State::Length { value: None };
        }
        if name.eq_ignore_ascii_case(TE) {
            if self.head.saw_length || self.head.marked {
                name.copy_from_slice(TE_MARK.as_bytes());
                self.head.marked = true;
            } else {
                // hyper frames by chunks when the last coding is `chunked` and refuses the head
                // otherwise.
                self.head.chunked = true;
            }
            return State::SkipLine;
        }
        if name.eq_ignore_ascii_case(UPGRADE) {
            self.head.upgrade = true;
        }
        State::SkipLine
    }

    /// The empty line after a head: what follows is its body, then the next head.
    fn head_end(&mut self) -> State {
        let head = std::mem::take(&mut self.head);
        if head.marked || head.upgrade {
            // A marked head is answered with `Connection: close`; an upgrade's bytes are not HTTP.
            State::Off
        } else if head.chunked {
            State::ChunkSize { size: 0, digits: false }
        } else {
            match head.length {
                Some(left) if left > 0 => State::Body { left },
                _ => State::LineStart { first: true },
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Framed<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.state == State::Off && this.held_len == 0 {
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            if buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            let before = buf.filled().len();
            let held = this.held_len;
            if held >= buf.remaining() {
                // No room to put the held bytes back and read on (hyper's buffer has kilobytes):
                // hand on what fits and stop following.
                let n = buf.remaining();
                buf.put_slice(&this.held[..n]);
                this.held.copy_within(n..held, 0);
                this.held_len -= n;
                this.state = State::Off;
                return Poll::Ready(Ok(()));
            }
            buf.put_slice(&this.held[..held]);
            match Pin::new(&mut this.inner).poll_read(cx, buf) {
                Poll::Ready(Ok(())) => {}
                other => {
                    // Nothing handed on: the held bytes stay held.
                    buf.set_filled(before);
                    return other;
                }
            }
            this.held_len = 0;
            if buf.filled().len() == before + held {
                // The end of the stream: whatever was held goes on as it is.
                this.state = State::Off;
                return Poll::Ready(Ok(()));
            }
            let keep = this.scan(&mut buf.filled_mut()[before..]);
            let read = buf.filled().len() - before;
            if keep < read {
                let rest = read - keep;
                if rest <= HOLD_MAX {
                    this.held[..rest].copy_from_slice(&buf.filled()[before + keep..]);
                    this.held_len = rest;
                    buf.set_filled(before + keep);
                } else {
                    // Not a line's start after all (cannot happen): hand it on and stop following.
                    this.state = State::Off;
                }
            }
            if this.held_len == 0 || keep > 0 {
                return Poll::Ready(Ok(()));
            }
            // All of it held: read on, so as not to hand hyper an empty read (its end of stream).
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Framed<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::AsyncReadExt;

    /// What hyper would be handed, when the stream arrives in pieces cut at `cuts`.
    fn through(input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut pieces = Vec::new();
        let mut at = 0;
        for &c in cuts {
            let c = c.min(input.len());
            if c > at {
                pieces.push(input[at..c].to_vec());
                at = c;
            }
        }
        pieces.push(input[at..].to_vec());
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let mut mock = tokio_test_stream(pieces);
            let mut framed = Framed::new(&mut mock);
            let mut out = Vec::new();
            framed.read_to_end(&mut out).await.unwrap();
            out
        })
    }

    /// A reader that yields each piece as one read.
    fn tokio_test_stream(pieces: Vec<Vec<u8>>) -> Pieces {
        Pieces { pieces: pieces.into_iter().rev().collect() }
    }

    struct Pieces {
        pieces: Vec<Vec<u8>>,
    }

    impl AsyncRead for Pieces {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            if let Some(mut p) = self.pieces.pop() {
                let n = p.len().min(buf.remaining());
                buf.put_slice(&p[..n]);
                if n < p.len() {
                    self.pieces.push(p.split_off(n));
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    const FOLLOWED: &[u8] = b"\r\nPOST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 19\r\n\r\ncontent-length: 1\r\n\
GET /b HTTP/1.1\r\nhost: x\r\n\r\n\
POST /c HTTP/1.1\r\nhost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-Trailer: content-length: 3\r\n\r\n\
POST /d HTTP/1.1\r\nhost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    fn marked(out: &[u8]) -> Vec<&str> {
        let text = std::str::from_utf8(out).unwrap();
        text.split("\r\n").filter(|l| l.starts_with("x-portico-smug")).collect()
    }

    #[test]
    fn the_second_of_the_two_framing_headers_is_marked_after_bodies_of_both_kinds() {
        let out = through(FOLLOWED, &[]);
        // Only the last request's Transfer-Encoding, not the look-alikes inside bodies and trailers.
        assert_eq!(marked(&out), ["x-portico-smuggle: chunked"]);
        assert_eq!(out.len(), FOLLOWED.len());
        let te_first =
            b"POST /d HTTP/1.1\r\ntransfer-encoding: chunked\r\ncontent-length: 5\r\ncontent-length: 6\r\n\r\n";
        assert_eq!(marked(&through(te_first, &[])), ["x-portico-smug: 5", "x-portico-smug: 6"]);
    }

    #[test]
    fn what_it_cannot_follow_passes_untouched() {
        for input in [
            &b"GET /ws HTTP/1.1\r\nupgrade: websocket\r\n\r\nPOST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"CONNECT x:443 HTTP/1.1\r\n\r\nPOST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n",
        ] {
            assert_eq!(through(input, &[]), input, "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn where_hyper_refuses_the_chunked_framing_following_stops() {
        // hyper ends the connection at each of these bytes; the ambiguous head after them is
        // never parsed, and the tracker does not guess at it either.
        let after = "POST /x HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        for body in [
            "5\nhello\r\n0\r\n\r\n",     // a bare LF after the size
            "5;a\nhello\r\n0\r\n\r\n",   // a bare LF in an extension
            "5 5\r\nhello\r\n0\r\n\r\n", // a digit after the size's spaces
            "5\r\nhello\n0\r\n\r\n",     // a bare LF after the data
            "0\r\nx: y\r\r\n\r\n",       // a trailer line's CR not followed by LF
        ] {
            let input = format!("POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n{body}{after}");
            assert_eq!(marked(&through(input.as_bytes(), &[])), Vec::<&str>::new(), "{body:?}");
        }
        // Where hyper reads on, so does the tracker: spaces before an extension, trailers.
        for body in ["5 \t;a=b\r\nhello\r\n0\r\n\r\n", "0\r\nx: y\r\nz: content-length: 1\r\n\r\n"] {
            let input = format!("POST /a HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n{body}{after}");
            assert_eq!(marked(&through(input.as_bytes(), &[])), ["x-portico-smuggle: chunked"], "{body:?}");
        }
    }

    /// One request of a generated pipeline: a `Content-Length` body, or chunks (with or without
    /// extensions) and trailers. Bodies and trailers are full of look-alike header lines.
    #[derive(Debug, Clone)]
    enum Piece {
        Length(Vec<u8>),
        Chunked { chunks: Vec<(Vec<u8>, bool)>, trailers: Vec<String> },
    }

    fn piece() -> impl Strategy<Value = Piece> {
        let bytes =
            proptest::collection::vec(prop_oneof![any::<u8>(), Just(b'\r'), Just(b'\n'), Just(b':')].boxed(), 0..40);
        let lookalike = prop_oneof![
            Just("content-length: 5".to_owned()),
            Just("transfer-encoding: chunked".to_owned()),
            "[a-z]{1,8}: [ -~]{0,10}",
        ];
        prop_oneof![
            bytes.clone().prop_map(Piece::Length),
            (
                proptest::collection::vec(
                    (bytes.prop_filter("a chunk has data", |b| !b.is_empty()), any::<bool>()),
                    0..4
                ),
                proptest::collection::vec(lookalike, 0..3),
            )
                .prop_map(|(chunks, trailers)| Piece::Chunked { chunks, trailers }),
        ]
    }

    fn wire(pieces: &[Piece]) -> Vec<u8> {
        let mut out = Vec::new();
        for (i, p) in pieces.iter().enumerate() {
            match p {
                Piece::Length(body) => {
                    out.extend_from_slice(
                        format!("POST /{i} HTTP/1.1\r\nhost: x\r\ncontent-length: {}\r\n\r\n", body.len()).as_bytes(),
                    );
                    out.extend_from_slice(body);
                }
                Piece::Chunked { chunks, trailers } => {
                    out.extend_from_slice(
                        format!("POST /{i} HTTP/1.1\r\nhost: x\r\ntransfer-encoding: chunked\r\n\r\n").as_bytes(),
                    );
                    for (data, ext) in chunks {
                        let ext = if *ext { " ;a=\"b\"" } else { "" };
                        out.extend_from_slice(format!("{:x}{ext}\r\n", data.len()).as_bytes());
                        out.extend_from_slice(data);
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"0\r\n");
                    for t in trailers {
                        out.extend_from_slice(format!("{t}\r\n").as_bytes());
                    }
                    out.extend_from_slice(b"\r\n");
                }
            }
        }
        let last = pieces.len();
        out.extend_from_slice(
            format!(
                "POST /{last} HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
            )
            .as_bytes(),
        );
        out
    }

    /// What real hyper makes of `input` read through [`Framed`]: each request's path and whether
    /// it carried a marker.
    fn hyper_sees(input: Vec<u8>, cuts: Vec<usize>) -> Vec<(String, bool)> {
        use http_body_util::BodyExt;
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let mut pieces = Vec::new();
            let mut at = 0;
            for c in cuts {
                let c = c.min(input.len());
                if c > at {
                    pieces.push(input[at..c].to_vec());
                    at = c;
                }
            }
            pieces.push(input[at..].to_vec());
            let io = hyper_util::rt::TokioIo::new(Framed::new(Duplexed { read: tokio_test_stream(pieces) }));
            let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
            let record = seen.clone();
            let service = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let record = record.clone();
                async move {
                    let marked = req.headers().contains_key(CL_MARK) || req.headers().contains_key(TE_MARK);
                    let path = req.uri().path().to_owned();
                    let _ = req.into_body().collect().await;
                    record.lock().unwrap().push((path, marked));
                    Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Empty::<bytes::Bytes>::new()))
                }
            });
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
            seen.lock().unwrap().clone()
        })
    }

    /// [`Pieces`] as a connection: reads the pieces, swallows what is written.
    struct Duplexed {
        read: Pieces,
    }

    impl AsyncRead for Duplexed {
        fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            Pin::new(&mut self.read).poll_read(cx, buf)
        }
    }

    impl AsyncWrite for Duplexed {
        fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
            Poll::Ready(Ok(buf.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Against real hyper: however a pipeline of well-framed requests is cut into reads, hyper
        /// reads every request, and only the ambiguous last one carries a marker.
        #[test]
        fn hyper_and_the_tracker_agree_on_where_each_request_starts(
            pieces in proptest::collection::vec(piece(), 0..5),
            mut cuts in proptest::collection::vec(0..2000usize, 0..12),
        ) {
            cuts.sort_unstable();
            let seen = hyper_sees(wire(&pieces), cuts);
            let want: Vec<(String, bool)> = (0..=pieces.len()).map(|i| (format!("/{i}"), i == pieces.len())).collect();
            prop_assert_eq!(seen, want);
        }
    }

    proptest! {
        /// However the stream is cut into reads, hyper is handed the same bytes.
        #[test]
        fn cuts_do_not_change_what_is_handed_on(mut cuts in proptest::collection::vec(0..FOLLOWED.len(), 0..40)) {
            cuts.sort_unstable();
            prop_assert_eq!(through(FOLLOWED, &cuts), through(FOLLOWED, &[]));
        }

        /// Whatever arrives, every byte is handed on once and in order, renamed or not.
        #[test]
        fn no_byte_is_lost_or_added(input in proptest::collection::vec(any::<u8>(), 0..600), mut cuts in proptest::collection::vec(0..600usize, 0..20)) {
            cuts.sort_unstable();
            let out = through(&input, &cuts);
            prop_assert_eq!(out.len(), input.len());
        }
    }
}
